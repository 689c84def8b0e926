# Shared by kelp's Swarm tests (run.sh: one node; cluster.sh: three): the check
# counters, and Docker engines with private roots started and stopped by pid.
# Source it after tests/lib.sh.

source deploy/swarm/rootfs.sh

passed=0
failed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }
check() { # description, command... (returns the command's success)
  local what=$1
  shift
  if "$@"; then ok "$what"; else
    bad "$what"
    return 1
  fi
}
retry() { # seconds, command... (until it succeeds)
  local until=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < until)) || return 1
    sleep 1
  done
}

# start_engine DIR NETNS HOSTNAME [dockerd args...]: a containerd and a dockerd whose
# roots, sockets and logs all lie in DIR (socket: DIR/run/docker.sock), with vfs
# storage and no iptables rules: Docker's (FORWARD policy DROP) would outlive it and
# cut the other tests' namespaces off each other. With NETNS they run in that network
# namespace (and keep the mount namespace, so the test sees their FUSE and bind
# mounts); with HOSTNAME dockerd gets a UTS namespace of its own with that name,
# which Swarm reports as the node's name. Sets ENGINE_DOCKERD, ENGINE_CONTAINERD.
start_engine() {
  local dir=$1 ns=$2 host=$3
  shift 3
  local in=() uts=()
  [[ -n $ns ]] && in=(nsenter "--net=/run/netns/$ns" --)
  [[ -n $host ]] && uts=(unshare --uts -- sh -c "hostname $host && exec \"\$0\" \"\$@\"")
  mkdir -p "$dir"/{run,data,exec}
  "${in[@]}" containerd --address "$dir/run/containerd.sock" --root "$dir/data/containerd" \
    --state "$dir/run/containerd-state" >"$dir/containerd.log" 2>&1 &
  ENGINE_CONTAINERD=$!
  local i
  for ((i = 0; i < 100; i++)); do [[ -S $dir/run/containerd.sock ]] && break; sleep 0.1; done
  "${in[@]}" "${uts[@]}" dockerd --host "unix://$dir/run/docker.sock" --data-root "$dir/data/docker" \
    --exec-root "$dir/exec" --pidfile "$dir/run/docker.pid" --containerd "$dir/run/containerd.sock" \
    --storage-driver vfs --iptables=false --ip6tables=false "$@" >"$dir/dockerd.log" 2>&1 &
  ENGINE_DOCKERD=$!
  DOCKER_HOST="unix://$dir/run/docker.sock" retry 60 docker version
}

# engine_processes DIR: pids of the containerd shims of the engine in DIR and of every
# process whose root directory lies under DIR (its plugins and tasks), found through
# /proc, never by a pattern handed to pkill.
engine_processes() {
  local dir=$1 p
  for p in /proc/[0-9]*; do
    if [[ $(tr '\0' ' ' 2>/dev/null <"$p/cmdline") == *containerd-shim-runc-v2*"-address $dir/run/containerd.sock"* ]] ||
      [[ $(readlink "$p/root" 2>/dev/null) == "$dir"/* ]]; then
      echo "${p#/proc/}"
    fi
  done
}

# stop_engine DIR DOCKERD_PID CONTAINERD_PID: ends the engine and everything it ran.
stop_engine() {
  local dir=$1 dockerd=$2 containerd=$3 p
  [[ -n $dockerd ]] && kill "$dockerd" 2>/dev/null && wait "$dockerd" 2>/dev/null
  [[ -n $containerd ]] && kill "$containerd" 2>/dev/null && wait "$containerd" 2>/dev/null
  # Shims of this containerd outlive it, and so can the plugin's and the tasks'
  # processes.
  engine_processes "$dir" | xargs -r kill 2>/dev/null
  # The engine's own mounts (netns files, plugin rootfs), deepest first.
  grep " $dir" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  # A killed dockerd leaves its plugins' socket directories in /run/docker/plugins
  # (outside its roots); remove those of this engine's plugins only.
  for p in "$dir"/data/docker/plugins/*; do
    [[ $(basename "$p") =~ ^[0-9a-f]{64}$ ]] && rm -rf "/run/docker/plugins/$(basename "$p")"
  done
}

# start_registry DIR IP -> sets REGISTRY_PORT: Debian's distribution registry, as an
# operator's own.
start_registry() {
  REGISTRY_PORT=$(free_port)
  mkdir -p "$1"
  cat >"$1/registry.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $1/data
http:
  addr: $2:$REGISTRY_PORT
YML
  docker-registry serve "$1/registry.yml" >"$1/registry.log" 2>&1 &
  KELP_PIDS+=($!)
  wait_addr "$2" "$REGISTRY_PORT" 10
}

# busybox_rootfs DIR APPLET...: DIR holds busybox-static as /bin/busybox and each
# APPLET as a link to it (no base image from outside).
busybox_rootfs() {
  local dir=$1 c
  shift
  mkdir -p "$dir/bin" "$dir/tmp"
  cp "$(command -v busybox)" "$dir/bin/busybox"
  for c in "$@"; do ln -sf busybox "$dir/bin/$c"; done
}

# An image for test tasks from busybox-static, imported into the engine at
# DOCKER_HOST; prints its ID.
import_app_image() {
  local img=$1/img
  busybox_rootfs "$img" sh cat ls df echo sleep mkdir touch hostname grep wc printf dd head md5sum rm time
  tar -C "$img" -c . | docker import - "${2:-kelp-test-app:latest}"
}

# import_server_image DIR REF ENTRYPOINT PROGRAM...: an image holding each PROGRAM in
# /usr/bin with the libraries ldd lists for it, and busybox's sh, cat, sleep, grep, sed and tr for
# the stack files' scripts; ENTRYPOINT is a JSON array or "" (none). Imported into the
# engine at DOCKER_HOST as REF.
import_server_image() {
  local dir=$1 ref=$2 entry=$3 p
  shift 3
  rm -rf "$dir"
  busybox_rootfs "$dir" sh cat sleep grep sed tr seq date timeout # what deploy/swarm/kelp-keydb.sh runs
  mkdir -p "$dir/etc"
  echo "root:x:0:0:root:/:/bin/sh" >"$dir/etc/passwd"
  for p in "$@"; do copy_with_libs "$dir" "$p" "/usr/bin/$(basename "$p")"; done
  local change=(--change 'ENV PATH=/usr/bin:/bin')
  [[ -n $entry ]] && change+=(--change "ENTRYPOINT $entry")
  tar -C "$dir" -c . | docker import "${change[@]}" - "$ref" >/dev/null
}
