# Sourced by kelp's scripts: puts the places pip and go install programs on PATH, so a
# tool installed a moment ago by scripts/deps.sh is found in the same shell.
pyscripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
gobin=$(go env GOPATH 2>/dev/null || true)
# KeyDB, where third_party/keydb/build.sh installs it (scripts/deps.sh runs it).
keydb=/var/cache/keydb-6.3.4/bin
[[ -x $keydb/keydb-server ]] || keydb=
export PATH="${pyscripts:+$pyscripts:}${gobin:+$gobin/bin:}${keydb:+$keydb:}$PATH"
unset pyscripts gobin keydb
