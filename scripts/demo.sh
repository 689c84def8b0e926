#!/usr/bin/env bash
# The main job: kelp on a real Docker Swarm, on this machine. Starts a private Docker
# engine (its own containerd, dockerd, roots and socket under .kelp-demo/; vfs storage,
# no iptables rules) as a one-node Swarm, a local registry (Debian's docker-registry),
# deploys KeyDB and SeaweedFS with `docker stack deploy` of deploy/swarm/keydb.yml and
# seaweedfs.yml, builds the plugin, pushes it to that registry and installs it from
# there with `docker plugin install`, then runs the user steps of docs/swarm.md: a
# volume, a service that writes and one that reads, `kelp admin volumes`, a snapshot
# and a restore, `df` in a task, and a real Prometheus scraping the plugin. Then it
# stops and removes everything it started.
#
#   scripts/demo.sh           the Swarm demo, cleaned up at the end
#   scripts/demo.sh --keep    leave it running (prints how to use and stop it)
#   scripts/demo.sh --stop    stop what a --keep run left running
#   scripts/demo.sh --csi     the CSI-level demo without Docker (scripts/demo-csi.sh)
set -uo pipefail
cd "$(dirname "$0")/.."
[[ ${1:-} == --csi ]] && { shift; exec scripts/demo-csi.sh "$@"; }
mode=run
case ${1:-} in
--keep) mode=keep ;;
--stop) mode=stop ;;
"") ;;
*)
  echo "usage: scripts/demo.sh [--keep | --stop | --csi [--keep]]" >&2
  exit 2
  ;;
esac

source scripts/env.sh
source tests/lib.sh
source tests/swarm/engine.sh
source tests/swarm/prometheus.sh

work="$(pwd)/.kelp-demo"
state="$work/demo.env" # the pids a --keep run leaves, for --stop and the next run
node=kelp-demo         # the Swarm node's host name (dockerd gets a UTS namespace)
# The stacks use the host network and fixed ports, as on a real node.
ports=(6379 9333 19333 8080 18080 8888 18888 8333)
t_all=$(date +%s%N)
step_name=
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
secs() { awk -v ms="$1" 'BEGIN {printf "%.1f s", ms / 1000}'; }
end_step() {
  [[ -n $step_name ]] && printf '    \033[2m(%s: %s)\033[0m\n' "$step_name" "$(secs "$(ms_since "$t_step")")"
  step_name=
}
step() {
  end_step
  step_name=$*
  t_step=$(date +%s%N)
  printf '\n\033[1m==> %s\033[0m\n' "$*"
}
die() {
  end_step
  echo "demo: $*" >&2
  exit 1
}
need() { # description, command...: a step that must work
  check "$@" || die "$1 failed (logs: $work/*.log)"
}

alive() { [[ -r /proc/$1/stat && $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]; }
stop_pid() { # pid: TERM, up to 20 s, then KILL
  kill "$1" 2>/dev/null || return 0
  local i
  for ((i = 0; i < 200; i++)); do alive "$1" || break; sleep 0.1; done
  kill -9 "$1" 2>/dev/null
  wait "$1" 2>/dev/null
}

# stop_all: stops everything a run started, found from its state file (pids only),
# and removes its directory.
stop_all() {
  [[ -f $state ]] || return 0
  local DOCKERD= CONTAINERD= REGISTRY= PROM= BRIDGES= br
  source "$state"
  if [[ -n $PROM ]]; then kill "$PROM" 2>/dev/null; fi
  if [[ -S $work/run/docker.sock ]]; then
    export DOCKER_HOST="unix://$work/run/docker.sock"
    docker service rm $(docker service ls -q 2>/dev/null) >/dev/null 2>&1
    sleep 3
    docker plugin disable -f kelp:latest >/dev/null 2>&1
    docker swarm leave -f >/dev/null 2>&1
  fi
  # A --keep run's processes are not this shell's children: wait for them by pid.
  local p
  for p in $DOCKERD $CONTAINERD; do stop_pid "$p"; done
  stop_engine "$work" "$DOCKERD" "$CONTAINERD"
  for p in $REGISTRY $PROM; do stop_pid "$p"; done
  for br in docker0 docker_gwbridge; do
    grep -qx "$br" <<<"$BRIDGES" || ip link delete "$br" 2>/dev/null
  done
  grep " $work" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  rm -rf "$work"
}
save_state() {
  mkdir -p "$work"
  cat >"$state" <<ENV
DOCKERD=${ENGINE_DOCKERD:-}
CONTAINERD=${ENGINE_CONTAINERD:-}
REGISTRY=${KELP_PIDS[*]:-}
PROM=${PROM_PID:-}
BRIDGES="$bridges_before"
ENV
}

if [[ $mode == stop ]]; then
  export PATH="/opt/kelp-docker/usr/bin:/opt/kelp-docker/usr/sbin:${KELP_DOCKER_ROOT:+$KELP_DOCKER_ROOT/usr/bin:}$PATH"
  [[ -f $state ]] || { echo "nothing to stop ($state is absent)"; exit 0; }
  stop_all
  echo "stopped; $work removed"
  exit 0
fi

step "Installing what is missing (scripts/deps.sh, scripts/install-docker.sh)"
KELP_NEED_PROMETHEUS=1 KELP_NEED_KEYDB=1 scripts/deps.sh || die "scripts/deps.sh failed"
source scripts/env.sh # on a fresh machine deps.sh has just built KeyDB: put it on PATH
command -v keydb-server >/dev/null || die "no keydb-server after scripts/deps.sh (third_party/keydb/build.sh builds it)"
dockerpath=$(scripts/install-docker.sh) || die "this machine cannot run a Docker engine; try scripts/demo.sh --csi"
export PATH="$dockerpath:$PATH"
command -v docker-registry >/dev/null || die "no docker-registry (scripts/install-docker.sh unpacks it)"

if [[ -f $state ]]; then
  step "Stopping the demo an earlier --keep run left running"
  stop_all
fi
grep -q " $work" /proc/self/mountinfo && die "something is still mounted under $work; unmount it first"
for p in "${ports[@]}"; do
  ss -Hltn "sport = :$p" | grep -q . && die "port $p is in use here; the stacks need ${ports[*]}"
done
rm -rf "$work"
mkdir -p "$work/state"

step "Building kelp (release) and the plugin's rootfs"
cargo build --release --locked --quiet -p kelp || die "cargo build failed"
kelp="$(realpath "${CARGO_TARGET_DIR:-target}")/release/kelp"

export DOCKER_HOST="unix://$work/run/docker.sock"
ENGINE_DOCKERD= ENGINE_CONTAINERD= PROM_PID=
bridges_before=$(ip -o link show | awk -F': ' '{print $2}')
cleanup() {
  local rc=$?
  end_step
  save_state
  if [[ $mode == keep && $rc == 0 ]]; then return; fi
  printf '\n\033[1m==> Cleaning up\033[0m\n'
  local t=$(date +%s%N)
  stop_all
  echo "stopped the engine, its plugin and tasks, the registry and Prometheus; removed $work ($(secs "$(ms_since "$t")"))"
  echo "left behind: mounts under $work: $(grep -c " $work" /proc/self/mountinfo)," \
    "processes rooted there: $(engine_processes "$work" | wc -l)," \
    "docker bridges: $(ip -o link show | awk -F': ' '{print $2}' | grep -cxE 'docker0|docker_gwbridge|veth.*')"
  echo "total: $(secs "$(ms_since "$t_all")")"
}
trap cleanup EXIT

step "Starting a private Docker engine and a one-node Swarm"
need "containerd and dockerd started (roots in $work)" start_engine "$work" "" "$node"
save_state
echo "engine $(docker version --format '{{.Server.Version}}'): data root $work/data/docker, socket $work/run/docker.sock"
need "docker swarm init" sh -c "docker swarm init --advertise-addr 127.0.0.1 >/dev/null"
echo "node: $(docker node ls --format '{{.Hostname}} {{.Status}} {{.ManagerStatus}}')"

step "Starting a local registry (Debian's docker-registry)"
need "registry started" start_registry "$work/registry" 127.0.0.1
save_state
registry="127.0.0.1:$REGISTRY_PORT"
echo "registry: $registry, its data in $work/registry/data"

step "KeyDB and SeaweedFS: images pushed to the registry, docker stack deploy"
weed_image="$registry/kelp-demo-seaweedfs:1"
keydb_image="$registry/kelp-demo-keydb:1"
import_server_image "$work/img-weed" "$weed_image" '["/usr/bin/weed", "-logtostderr=true"]' \
  "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/weed"
import_server_image "$work/img-keydb" "$keydb_image" "" "$(command -v keydb-server)" "$(command -v keydb-cli)"
need "images pushed" sh -c "docker push -q $weed_image >/dev/null && docker push -q $keydb_image >/dev/null"
# The node's host name resolves nowhere else: the tasks are told it (a second
# compose file per stack, as an operator without DNS for it would).
hosts_file() {
  echo 'version: "3.10"'
  echo 'services:'
  local s
  for s in "$@"; do printf '  %s:\n    extra_hosts: ["%s:127.0.0.1"]\n' "$s" "$node"; done
}
hosts_file keydb >"$work/keydb-hosts.yml"
hosts_file master volume filer >"$work/seaweedfs-hosts.yml"
meta_pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
need "the metadata password is a Swarm secret" sh -c "printf %s '$meta_pw' | docker secret create keydb_password - >/dev/null"
stack_deploy() {
  docker stack deploy --detach=true --resolve-image never -c "deploy/swarm/$1.yml" -c "$work/$1-hosts.yml" "$1" >/dev/null
}
deploy_keydb() { KEYDB_IMAGE=$keydb_image KEYDB_PEERS=$node KEYDB_RELEASE_WAIT=5 stack_deploy keydb; }
need "docker stack deploy keydb (deploy/swarm/keydb.yml)" deploy_keydb
sed "s/CHANGE-ME-ACCESS-KEY/$KELP_S3_ACCESS_KEY/; s/CHANGE-ME-SECRET-KEY/$KELP_S3_SECRET_KEY/" \
  deploy/swarm/s3.json.example >"$work/s3.json"
docker node update --label-add seaweedfs.filer=true "$node" >/dev/null
deploy_seaweedfs() {
  SEAWEEDFS_IMAGE=$weed_image SEAWEEDFS_MASTER=$node SEAWEEDFS_REPLICATION=000 SEAWEEDFS_S3_CONFIG="$work/s3.json" stack_deploy seaweedfs
}
need "docker stack deploy seaweedfs (deploy/swarm/seaweedfs.yml)" deploy_seaweedfs
rcli() { REDISCLI_AUTH=$meta_pw timeout 10 redis-cli -h 127.0.0.1 -p 6379 "$@"; }
pong() { rcli ping | grep -q PONG; }
need "KeyDB answers on 127.0.0.1:6379" retry 120 pong
WEED_IP=127.0.0.1 FILER_PORT=8888 FILER_GRPC=18888 S3_PORT=8333 # for kelp_buckets (tests/lib.sh)
writable() { [[ $(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9333/dir/assign) == 200 ]]; }
need "SeaweedFS takes writes (replication 000: one node)" retry 120 writable
need "the filer's S3 gateway listens" retry 120 curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/"
docker stack services --format '  {{.Name}}  {{.Mode}}  {{.Replicas}}' keydb
docker stack services --format '  {{.Name}}  {{.Mode}}  {{.Replicas}}' seaweedfs

step "The plugin: built, pushed to the registry, installed from it (docker plugin install)"
plugin_ref="$registry/kelp:demo"
metrics_port=$(free_port)
need "plugin built and pushed" sh -c "deploy/swarm/build-plugin.sh --push $plugin_ref >$work/build-plugin.log 2>&1"
need "docker plugin install $plugin_ref --alias kelp:latest" sh -c "docker plugin install --grant-all-permissions \
  --alias kelp:latest $plugin_ref KELP_META_URL=redis://127.0.0.1:6379 KELP_META_PASSWORD='$meta_pw' \
  KELP_META_ADVERTISE=redis://127.0.0.1:6379 KELP_NODE_ID=$node KELP_FILER=127.0.0.1:$FILER_GRPC \
  KELP_S3_ENDPOINT=http://127.0.0.1:$S3_PORT KELP_S3_ACCESS_KEY=$KELP_S3_ACCESS_KEY \
  KELP_S3_SECRET_KEY=$KELP_S3_SECRET_KEY KELP_IDLE_RELEASE=5 KELP_METRICS_ADDR=127.0.0.1:$metrics_port \
  state.source=$work/state >/dev/null"
plugin_id=$(docker plugin inspect -f '{{.ID}}' kelp:latest)
echo "plugin kelp:latest ($plugin_ref), enabled: $(docker plugin inspect -f '{{.Enabled}}' kelp:latest)"

# Tasks name their image by its ID: the Swarm agent then never tries a registry.
app_image=$(import_app_image "$work")
vol_created() { [[ $(docker volume ls --cluster | awk -v n="$1" '$1 == n {print $NF}') == created ]]; }
task() { docker ps -q -f "label=com.docker.swarm.service.name=$1" | head -1; }
running() { [[ $(docker service ps "$1" --filter desired-state=running --format '{{.CurrentState}}' | grep -c '^Running') -ge 1 ]]; }
show() { printf '\033[36m$ %s\033[0m\n' "$*"; }

step "docker volume create -d kelp:latest --type mount ... media"
show docker volume create -d kelp:latest --type mount --scope multi --sharing all --required-bytes 1G media
docker volume create -d kelp:latest --type mount --scope multi --sharing all --required-bytes 1G media >/dev/null
need "volume media created (not pending)" retry 60 vol_created media
docker volume ls --cluster

step "A service writes to the volume"
show docker service create --name writer --mount type=cluster,src=media,dst=/data IMAGE sh -c '...'
docker service create -d -q --no-resolve-image --name writer --mount type=cluster,src=media,dst=/data \
  "$app_image" sh -c 'echo "hello from task $(hostname), $(date -u)" > /data/hello.txt; sync; sleep 3600' >/dev/null
need "writer task running" retry 120 running writer
need "writer wrote /data/hello.txt" retry 30 sh -c "docker exec $(task writer) cat /data/hello.txt"

step "Another service reads what it wrote"
show docker service create --name reader --mount type=cluster,src=media,dst=/data IMAGE sh -c 'cat /data/hello.txt; ...'
docker service create -d -q --no-resolve-image --name reader --mount type=cluster,src=media,dst=/data \
  "$app_image" sh -c 'cat /data/hello.txt; sleep 3600' >/dev/null
need "reader task running" retry 120 running reader
need "reader read the writer's file" retry 30 sh -c "docker exec $(task reader) cat /data/hello.txt | grep -q 'hello from task'"
echo "reader sees: $(docker exec "$(task reader)" cat /data/hello.txt)"

step "df inside the task"
show docker exec WRITER-TASK df -h /data
docker exec "$(task writer)" df -h /data

step "kelp admin volumes"
admin() { KELP_META_PASSWORD=$meta_pw "$kelp" admin --meta-url redis://127.0.0.1:6379 "$@"; }
show kelp admin volumes
admin volumes

step "A snapshot, then a restore into a new volume"
show kelp snapshot create nightly media
snap=$("$kelp" snapshot create nightly media) || die "kelp snapshot create failed"
echo "$snap"
docker exec "$(task writer)" sh -c 'echo "written after the snapshot" > /data/hello.txt; sync'
show kelp snapshot list --volume media
"$kelp" snapshot list --volume media
show kelp restore "$snap" media-restored
"$kelp" restore "$snap" media-restored || die "kelp restore failed"
need "volume media-restored created (not pending)" retry 60 vol_created media-restored
docker service create -d -q --no-resolve-image --name restored --mount type=cluster,src=media-restored,dst=/data \
  "$app_image" sh -c 'sleep 3600' >/dev/null
need "a task on media-restored running" retry 120 running restored
echo "media now holds:          $(docker exec "$(task writer)" cat /data/hello.txt)"
echo "media-restored holds:     $(docker exec "$(task restored)" cat /data/hello.txt)"
need "the restored volume has the snapshot's state" \
  sh -c "docker exec $(task restored) cat /data/hello.txt | grep -q 'hello from task'"

step "Where everything lives"
pdir="$work/data/docker/plugins/$plugin_id"
echo "engine:    data root $work/data/docker, exec root $work/exec, containerd $work/data/containerd"
echo "           socket $work/run/docker.sock, logs $work/dockerd.log and $work/containerd.log"
echo "plugin:    kelp:latest, id ${plugin_id:0:12}, rootfs $pdir/rootfs"
echo "           its state (kelp's node state) $work/state; its CSI socket /run/docker/plugins/$plugin_id/kelp.sock"
echo "volumes on this host (juicefs FUSE mounts under the plugin's propagated mount):"
grep -F "plugins/$plugin_id/propagated-mount/" /proc/self/mountinfo | awk '$9 ~ /fuse/ {print "  " $5 "  " $9 "  " $10}' | sort -u
echo "metadata:  KeyDB (stack keydb) on 127.0.0.1:6379, its files in the engine's local volume keydb_data:"
echo "           $(docker volume inspect -f '{{.Mountpoint}}' keydb_data 2>/dev/null)"
echo "           one database per volume: $(rcli smembers kelp:dbs 2>/dev/null | tr '\n' ' ')"
echo "data:      SeaweedFS (stack seaweedfs), filer 127.0.0.1:8888, S3 http://127.0.0.1:8333; buckets: $(kelp_buckets | tr '\n' ' ')"
echo "           its files in the engine's local volumes seaweedfs_master, seaweedfs_volume, seaweedfs_filer"

step "A real Prometheus scrapes the plugin (deploy/grafana/prometheus.yml)"
need "prometheus started" prom_start "$work/prometheus" "$work/run/docker.sock" "$metrics_port"
save_state
need "the plugin's target is up" retry 60 tests/swarm/prometheus.py targets "$PROM_URL" kelp
series() { # PromQL: each series and its value, one line each
  curl -fsS "$PROM_URL/api/v1/query" --data-urlencode "query=$1" | python3 -c '
import json, sys
for r in json.load(sys.stdin)["data"]["result"]:
    m = r["metric"]
    name = m.pop("__name__", "")
    keep = {k: v for k, v in m.items() if k not in ("instance", "job")}
    print("  %s%s = %s" % (name, json.dumps(keep, sort_keys=True), r["value"][1]))'
}
has_series() { [[ -n $(series "$1") ]]; }
need "kelp_volume_mount_healthy scraped" retry 60 has_series kelp_volume_mount_healthy
echo "Prometheus at $PROM_URL:"
series kelp_volume_mount_healthy
series 'up{job="kelp"}'
series '{__name__=~"kelp_volume_.*bytes.*"}' | head -6

if [[ $mode == keep ]]; then
  end_step
  save_state
  echo
  echo "Left running (--keep). To use it:"
  echo "  export PATH=$dockerpath:\$PATH DOCKER_HOST=$DOCKER_HOST"
  echo "  docker service ls; docker volume ls --cluster; $kelp snapshot list"
  echo "  Prometheus: $PROM_URL"
  echo "To stop it and remove $work: scripts/demo.sh --stop (a new scripts/demo.sh run does it first)"
  echo "total: $(secs "$(ms_since "$t_all")")"
  exit 0
fi

step "docker service rm, docker volume rm (bucket and metadata go with the volume)"
docker service rm writer reader restored >/dev/null
need "volume rm media-restored" retry 120 docker volume rm media-restored
need "kelp snapshot delete" "$kelp" snapshot delete "$snap"
need "volume rm media" retry 120 docker volume rm media
no_buckets() { [[ -z $(kelp_buckets) ]]; }
need "no bucket left" retry 30 no_buckets
echo "demo: $passed steps passed"
