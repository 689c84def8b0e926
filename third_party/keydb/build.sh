#!/usr/bin/env bash
# Builds keydb-server and keydb-cli 6.3.4 from keydb-6.3.4.tar.xz beside this script,
# once per machine, and prints the directory that holds them. Idempotent: a second
# call prints the directory at once. About 6 minutes on 2 cores. Needs root for apt.
#
# No package registry ships KeyDB, so this tarball is how a test gets the real server.
# It is `git archive v6.3.4` of the KeyDB repository (commit 7e7e5e57d25f, BSD-3,
# see COPYING inside). Built without TLS, systemd or the start-up "message of the day"
# fetch. Usage:  PATH="$(third_party/keydb/build.sh):$PATH"
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prefix=${KEYDB_PREFIX:-/var/cache/keydb-6.3.4}
bin=$prefix/bin
log() { printf '[keydb] %s\n' "$*" >&2; }

if [[ -x $bin/keydb-server ]] && "$bin/keydb-server" --version | grep -q 'v=6\.3\.4'; then
  echo "$bin"; exit 0
fi
missing=()
for p in build-essential uuid-dev libssl-dev zlib1g-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "00e0260685c5a70275c93320d8c6084cf80aed7506d415040cb610a11917f02e  $here/keydb-6.3.4.tar.xz" | sha256sum -c --quiet - >&2 || { log "tarball checksum mismatch"; exit 1; }
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
tar -C "$src" -xJf "$here/keydb-6.3.4.tar.xz"
log "building KeyDB 6.3.4 in $src (log: $prefix/build.log)"
mkdir -p "$bin"
if ! make -C "$src" -j"$(nproc)" BUILD_TLS=no NO_MOTD=yes USE_SYSTEMD=no >"$prefix/build.log" 2>&1; then
  tail -40 "$prefix/build.log" >&2; exit 1
fi
install -m 0755 "$src/src/keydb-server" "$src/src/keydb-cli" "$bin/"
"$bin/keydb-server" --version >&2
echo "$bin"
