#!/usr/bin/env bash
# Makes a Docker Engine >= 28.2 available without upgrading the system: downloads
# Debian unstable's docker.io and containerd packages (their binaries need only
# glibc 2.34) and unpacks them under $KELP_DOCKER_ROOT (default /opt/kelp-docker);
# runc, iptables and busybox-static come from Debian 12. Idempotent. Prints the
# directory to put on PATH. Exit 3: this machine cannot run an engine.
set -euo pipefail
root=${KELP_DOCKER_ROOT:-/opt/kelp-docker}
log() { printf '[docker] %s\n' "$*" >&2; }

[[ $(id -u) == 0 ]] || { log "needs root"; exit 3; }
[[ -d /sys/fs/cgroup ]] || { log "no cgroup file system"; exit 3; }

if [[ ! -x $root/usr/sbin/dockerd ]]; then
  export DEBIAN_FRONTEND=noninteractive
  if [[ ! -f /etc/apt/sources.list.d/kelp-unstable.sources ]]; then
    # Unstable is listed only to download two packages; the pin keeps apt from ever
    # installing or upgrading anything from it.
    cat >/etc/apt/sources.list.d/kelp-unstable.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: unstable
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    cat >/etc/apt/preferences.d/kelp-unstable <<'PIN'
Package: *
Pin: release a=unstable
Pin-Priority: 100
PIN
  fi
  apt-get update -qq
  apt-get install -y -qq -t bookworm runc iptables busybox-static file >/dev/null
  dl=$(mktemp -d)
  pkgs=(docker.io containerd)
  command -v docker >/dev/null || pkgs+=(docker-cli)
  (cd "$dl" && apt-get download -qq -t unstable "${pkgs[@]}" 2>/dev/null)
  mkdir -p "$root"
  for deb in "$dl"/*.deb; do dpkg-deb -x "$deb" "$root"; done
  rm -rf "$dl"
  log "unpacked $(ls "$root"/usr/sbin/dockerd) ($("$root"/usr/sbin/dockerd --version))"
fi
# The distribution registry (Debian's docker-registry), unpacked beside the engine:
# the Swarm test pushes the plugin to it and installs it from there, as operators do.
# Unpacked rather than installed, so no service is started on the machine.
if [[ ! -x $root/usr/bin/docker-registry ]]; then
  dl=$(mktemp -d)
  (cd "$dl" && apt-get download -qq -t bookworm docker-registry 2>/dev/null)
  for deb in "$dl"/*.deb; do dpkg-deb -x "$deb" "$root"; done
  rm -rf "$dl"
  log "unpacked $("$root"/usr/bin/docker-registry --version 2>&1 | head -1)"
fi
echo "$root/usr/bin:$root/usr/sbin"
