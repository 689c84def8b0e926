#!/usr/bin/env bash
# A real three-node Docker Swarm on this machine. Each node is a network namespace
# joined to the others by a bridge (TEST-NET-3, 203.0.113.0/24, which exists only
# here: the namespaces have no default route), with its own containerd and dockerd
# (vfs storage, private roots, no iptables). A registry (Debian's docker-registry)
# runs on the bridge address; everything else is installed the way docs/install.md
# says: images built here (no base image from outside: busybox-static,
# the static weed binary, the KeyDB 6.3.4 that scripts/deps.sh builds) are pushed to
# that registry, and `docker stack deploy` runs deploy/swarm/keydb.yml (a KeyDB master
# on every node, multi-master peers) and deploy/swarm/seaweedfs.yml (master and filer
# on node 1, a volume server on every node). The plugin is built once, pushed, and
# installed on every node with `docker plugin install`; the tasks' image comes from
# the registry too. Then volumes and services are driven through the manager's docker
# CLI only, and a real Prometheus (deploy/grafana) discovers and scrapes the three
# nodes. Everything started here is stopped by pid; the namespaces and the bridge
# are removed. Last line: "cluster: N passed, N failed". Skips (exit 0) only when this
# machine cannot run an engine or has no keydb-server.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh
source tests/lib.sh
source tests/swarm/engine.sh
source tests/swarm/prometheus.sh

work="$(pwd)/.kelp-test/cluster"
net=203.0.113
skip() {
  echo "SKIP: $*"
  echo "cluster: 0 passed, 0 failed"
  exit 0
}
command -v keydb-server >/dev/null || skip "no keydb-server (scripts/deps.sh builds it with KELP_NEED_KEYDB=1)"
{ command -v prometheus && command -v promtool; } >/dev/null || KELP_NEED_PROMETHEUS=1 scripts/deps.sh
dockerpath=$(scripts/install-docker.sh) || skip "this machine cannot run a Docker engine (scripts/install-docker.sh failed)"
export PATH="$dockerpath:$PATH"
! ip -o addr | grep -q " $net\." || {
  echo "FAIL: $net.0/24 is already in use here (another cluster test still up?)"
  exit 1
}

rm -rf "$work"
mkdir -p "$work"
# Interface names: at most 15 bytes, unique to this run.
tag=$(printf %x $$)
bridge="kc$tag"
nodes=(1 2 3)
ns() { echo "kelpc-$tag-$1"; }
node_ip() { echo "$net.1$1"; }
dk() { # node, docker arguments...
  local i=$1
  shift
  DOCKER_HOST="unix://$work/n$i/run/docker.sock" docker "$@"
}
quietly() { "$@" >/dev/null; }
in_node() { # node, command...
  local i=$1
  shift
  nsenter "--net=/run/netns/$(ns "$i")" -- "$@"
}
declare -A DOCKERD CONTAINERD

cleanup() {
  local i
  prom_stop
  dk 1 service rm $(dk 1 service ls -q 2>/dev/null) >/dev/null 2>&1
  sleep 3
  for i in "${nodes[@]}"; do
    dk "$i" plugin disable -f kelp:latest >/dev/null 2>&1
    dk "$i" swarm leave -f >/dev/null 2>&1
  done
  for i in "${nodes[@]}"; do
    stop_engine "$work/n$i" "${DOCKERD[$i]:-}" "${CONTAINERD[$i]:-}"
  done
  kelp_stop_all
  for i in "${nodes[@]}"; do
    ip link del "kc${tag}h$i" 2>/dev/null
    ip netns del "$(ns "$i")" 2>/dev/null
  done
  ip link del "$bridge" 2>/dev/null
  iptables -D FORWARD -i "$bridge" -o "$bridge" -j ACCEPT 2>/dev/null
}
trap cleanup EXIT

echo "== three nodes: namespaces on a bridge, each with containerd and dockerd"
ip link add "$bridge" type bridge
ip addr add "$net.1/24" dev "$bridge"
ip link set "$bridge" up
# A host firewall (Docker's FORWARD policy DROP, applied to bridged traffic by
# br_netfilter) would cut the nodes off each other: let this bridge's traffic through.
iptables -I FORWARD -i "$bridge" -o "$bridge" -j ACCEPT 2>/dev/null
for i in "${nodes[@]}"; do
  ip netns add "$(ns "$i")"
  ip link add "kc${tag}h$i" type veth peer name "kc${tag}p$i"
  ip link set "kc${tag}p$i" netns "$(ns "$i")"
  ip link set "kc${tag}h$i" master "$bridge"
  ip link set "kc${tag}h$i" up
  ip -n "$(ns "$i")" addr add "$(node_ip "$i")/24" dev "kc${tag}p$i"
  ip -n "$(ns "$i")" link set "kc${tag}p$i" up
  ip -n "$(ns "$i")" link set lo up
done

start_registry "$work/registry" "$net.1"
registry="$net.1:$REGISTRY_PORT"
# KELP_CLUSTER_BENCH=ROUNDS: instead of the checks, measure metadata work through
# the node's own master against a master 10 ms away (one way). Node 1 then
# advertises its master through a delay proxy, so shared-writer volumes, which
# mount through that home master, cross the delayed link from every node.
bench=${KELP_CLUSTER_BENCH:-}
if [[ -n $bench ]]; then
  PROXY_PORT=$(free_port)
  python3 tests/swarm/delay_proxy.py "$net.1" "$PROXY_PORT" "$(node_ip 1)" 6379 10 &
  KELP_PIDS+=($!)
  wait_addr "$net.1" "$PROXY_PORT" 10
fi
advertise() { # node: its master as the other nodes reach it
  if [[ -n $bench && $1 == 1 ]]; then echo "redis://$net.1:$PROXY_PORT"; else echo "redis://$(node_ip "$1"):6379"; fi
}

for i in "${nodes[@]}"; do
  mkdir -p "$work/n$i/state"
  if ! start_engine "$work/n$i" "$(ns "$i")" "kelp-n$i" --insecure-registry "$registry"; then
    skip "dockerd did not start in node $i; see $work/n$i/dockerd.log"
  fi
  DOCKERD[$i]=$ENGINE_DOCKERD
  CONTAINERD[$i]=$ENGINE_CONTAINERD
done
echo "engine: $(dk 1 version --format '{{.Server.Version}}'), metadata: $(keydb-server --version | cut -d' ' -f1-3)"

check "swarm init on node 1" quietly dk 1 swarm init \
  --advertise-addr "$(node_ip 1)" --listen-addr "$(node_ip 1):2377"
token=$(dk 1 swarm join-token -q worker)
for i in 2 3; do
  check "node $i joins as a worker" quietly dk "$i" swarm join \
    --token "$token" --advertise-addr "$(node_ip "$i")" "$(node_ip 1):2377"
done
ready() { [[ $(dk 1 node ls --format '{{.Status}}' | grep -c '^Ready$') == 3 ]]; }
check "three nodes ready" retry 60 ready

echo "== the servers: images pushed to the registry, deployed with the stack files"
weed_image="$registry/kelp-test-seaweedfs:1"
keydb_image="$registry/kelp-test-keydb:1"
DOCKER_HOST="unix://$work/n1/run/docker.sock" import_server_image "$work/img-weed" "$weed_image" \
  '["/usr/bin/weed", "-logtostderr=true"]' "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/weed"
DOCKER_HOST="unix://$work/n1/run/docker.sock" import_server_image "$work/img-keydb" "$keydb_image" "" \
  "$(command -v keydb-server)" "$(command -v keydb-cli)"
images_pushed() { dk 1 push -q "$weed_image" >/dev/null && dk 1 push -q "$keydb_image" >/dev/null; }
check "the SeaweedFS and KeyDB images are in the registry" images_pushed
# The nodes' host names resolve nowhere else, so the stacks' tasks are told them,
# as an operator without DNS for them would (a second compose file per stack).
hosts_file() { # stack file's service names...
  echo 'version: "3.10"'
  echo 'services:'
  local s i
  for s in "$@"; do
    echo "  $s:"
    echo "    extra_hosts:"
    for i in "${nodes[@]}"; do echo "      - \"kelp-n$i:$(node_ip "$i")\""; done
  done
}
hosts_file keydb >"$work/keydb-hosts.yml"
hosts_file master volume filer >"$work/seaweedfs-hosts.yml"
meta_pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
password_secret() { printf %s "$meta_pw" | dk 1 secret create keydb_password - >/dev/null; }
check "the metadata password is a Swarm secret" password_secret
stack_deploy() { # name: deploy/swarm/NAME.yml with its hosts file, from node 1
  dk 1 stack deploy --detach=true --resolve-image never -c "deploy/swarm/$1.yml" -c "$work/$1-hosts.yml" "$1" >/dev/null
}
deploy_keydb() {
  KEYDB_IMAGE=$keydb_image KEYDB_PEERS="kelp-n1 kelp-n2 kelp-n3" KEYDB_RELEASE_WAIT=60 stack_deploy keydb
}
check "docker stack deploy keydb (deploy/swarm/keydb.yml)" deploy_keydb
rcli() { # node, redis-cli arguments...: against that node's master
  local i=$1
  shift
  # KeyDB 6.3.4 sometimes never serves a new connection ("epoll_ctl failed: No such
  # file or directory" in its log, its issues #76 and #82): never wait for good.
  REDISCLI_AUTH=$meta_pw timeout 10 redis-cli -h "$(node_ip "$i")" "$@"
}
replicating() { # node: its master has a link up to both peers
  # KeyDB names its links master_link_status, master_1_link_status, ...
  [[ $(rcli "$1" info replication | grep -cE '^master(_[0-9]+)?_link_status:up') == 2 ]]
}
for i in "${nodes[@]}"; do
  check "node $i's KeyDB master replicates from both peers" retry 120 replicating "$i"
done
run_id() { rcli "$1" info server | tr -d '\r' | awk -F: '$1 == "run_id" {print $2}'; }
back_again() { # node, run id before: a new KeyDB runs there, linked to both peers, synced
  local id
  id=$(run_id "$1")
  [[ -n $id && $id != "$2" ]] && replicating "$1" &&
    ! rcli "$1" info replication | grep -qE '^master(_[0-9]+)?_sync_in_progress:1' && writable
}
writable() { # no master is quiesced by a join (deploy/swarm/kelp-keydb.sh)
  local i
  for i in "${nodes[@]}"; do [[ $(rcli "$i" config get replica-read-only | sed -n 2p) == no ]] || return 1; done
}
sed "s/CHANGE-ME-ACCESS-KEY/$KELP_S3_ACCESS_KEY/; s/CHANGE-ME-SECRET-KEY/$KELP_S3_SECRET_KEY/" \
  deploy/swarm/s3.json.example >"$work/s3.json"
quietly dk 1 node update --label-add seaweedfs.filer=true kelp-n1
deploy_seaweedfs() {
  SEAWEEDFS_IMAGE=$weed_image SEAWEEDFS_MASTER=kelp-n1 SEAWEEDFS_S3_CONFIG="$work/s3.json" stack_deploy seaweedfs
}
check "docker stack deploy seaweedfs (deploy/swarm/seaweedfs.yml)" deploy_seaweedfs
# For kelp_buckets (tests/lib.sh): the filer on node 1.
WEED_IP=$(node_ip 1) FILER_PORT=8888 FILER_GRPC=18888 S3_PORT=8333
volume_servers() { [[ $(curl -s "http://$WEED_IP:9333/dir/status" | grep -o '"Url"' | wc -l) -ge 3 ]]; }
check "SeaweedFS has a volume server on each node" retry 180 volume_servers
writable() { [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$WEED_IP:9333/dir/assign?replication=010") == 200 ]]; }
check "SeaweedFS takes writes with a copy on another node" retry 120 writable
check "the filer's S3 gateway listens" retry 120 curl -s -o /dev/null "http://$WEED_IP:$S3_PORT/"

echo "== the plugin: built once, pushed to the registry, installed on every node"
plugin_ref="$registry/kelp:test"
check "plugin built and pushed" env DOCKER_HOST="unix://$work/n1/run/docker.sock" \
  deploy/swarm/build-plugin.sh --push "$plugin_ref"
for i in "${nodes[@]}"; do
  check "node $i installs the plugin from the registry" quietly dk "$i" plugin install \
    --grant-all-permissions --alias kelp:latest "$plugin_ref" \
    KELP_META_URL=redis://127.0.0.1:6379 "KELP_META_PASSWORD=$meta_pw" "KELP_META_ADVERTISE=$(advertise "$i")" \
    "KELP_REGISTRY_URL=redis://$(node_ip 1):6379" "KELP_NODE_ID=kelp-n$i" \
    "KELP_FILER=$WEED_IP:$FILER_GRPC" "KELP_S3_ENDPOINT=http://$WEED_IP:$S3_PORT" \
    "KELP_S3_ACCESS_KEY=$KELP_S3_ACCESS_KEY" "KELP_S3_SECRET_KEY=$KELP_S3_SECRET_KEY" \
    KELP_IDLE_RELEASE=5 KELP_METRICS_ADDR=0.0.0.0:9469 "state.source=$work/n$i/state"
done
app="$registry/kelp-test-app:1"
DOCKER_HOST="unix://$work/n1/run/docker.sock" import_app_image "$work/n1" "$app" >/dev/null
check "the tasks' image is in the registry" quietly dk 1 push -q "$app"

kelp="${CARGO_TARGET_DIR:-target}/release/kelp"
admin() { KELP_META_PASSWORD=$meta_pw "$kelp" admin --meta-url "redis://$(node_ip 1):6379" "$@"; }
vol_created() { [[ $(dk 1 volume ls --cluster | awk -v n="$1" '$1 == n {print $NF}') == created ]]; }
create_volume() { # name, docker volume create options...
  local name=$1
  shift
  dk 1 volume create -d kelp:latest --type mount --required-bytes 1G "$@" "$name" >/dev/null
  check "volume $name created" retry 30 vol_created "$name"
}
# The nodes (by number) running a task of a service, one line each.
task_nodes() {
  dk 1 service ps "$1" --filter desired-state=running --format '{{.Node}} {{.CurrentState}}' |
    awk '$2 == "Running" {sub("kelp-n", "", $1); print $1}'
}
running() { [[ $(task_nodes "$1" | wc -l) -ge ${2:-1} ]]; }
# check_running service count description: and on failure, what Swarm says of each task.
check_running() {
  check "$3" retry 180 running "$1" "$2" && return 0
  dk 1 service ps --no-trunc --format '  {{.Node}}: {{.CurrentState}} {{.Error}}' "$1" | head -12
  return 1
}
task_container() { dk "$1" ps -q -f "label=com.docker.swarm.service.name=$2" | head -1; }
# A node's /metrics, scraped inside its namespace (the plugin uses the host network).
metrics() { in_node "$1" curl -s --max-time 10 http://127.0.0.1:9469/metrics; }
mounted_with() { # node, volume, master (local|home): the node serves the volume so
  metrics "$1" | grep -E '^kelp_volume_mount_healthy\{.*\} 1(\.0)?$' | grep "volume=\"$2\"" | grep -q "master=\"$3\""
}
plugin_log() { grep -aq "$2" "$work/n$1/dockerd.log"; }
sums_match() { # node, container, checksum file: every file has its recorded checksum
  [[ -n $2 ]] || return 1
  local out
  out=$(dk "$1" exec -i "$2" md5sum -c - <"$3" 2>&1) && return 0
  echo "$out" | grep -v ': OK$' | head -5
  dk "$1" exec "$2" ls -la /data | head -40
  return 1
}

if [[ -n $bench ]]; then
  source tests/swarm/cluster_bench.sh
  exit 0
fi

# On the workers: node 1 runs SeaweedFS's master and filer, whose node is never
# drained (deploy/swarm/seaweedfs.yml). Draining a worker also stops its KeyDB
# master and volume server (Swarm stops global tasks too); the master's stop hook
# keeps it up until kelp on that node has let go, or the fence checks below fail.
echo "== a single-writer volume follows its task to another node when the node is drained"
create_volume c-move --scope single --sharing none
dk 1 service create -d -q --no-resolve-image --name mover --constraint node.role==worker \
  --mount type=cluster,src=c-move,dst=/data \
  "$app" sh -c 'sleep 3600' >/dev/null
check_running mover 1 "task running"
from=$(task_nodes mover | head -1)
c=$(task_container "$from" mover)
# Each file is written and fsync'd (dd conv=fsync also checks close) before its
# checksum is recorded outside the volume.
write_files() { # node, container, first, last
  dk "$1" exec "$2" sh -c "i=$3; while [ \$i -le $4 ]; do head -c 200000 /dev/urandom > /tmp/f && \
    dd if=/tmp/f of=/data/f\$i conv=fsync 2>/dev/null && md5sum /data/f\$i || exit 1; i=\$((i+1)); done"
}
write_files "$from" "$c" 1 20 >"$work/sums"
check "20 files written and fsync'd on node $from" test "$(wc -l <"$work/sums")" = 20
check "node $from mounts c-move against its own master" retry 20 mounted_with "$from" c-move local
from_run=$(run_id "$from")
echo "node $from's KeyDB run id before the drain: ${from_run:-none}"
dk 1 node update --availability drain "kelp-n$from" >/dev/null
moved() { local n; n=$(task_nodes mover); [[ -n $n && $n != "$from" ]]; }
t0=$SECONDS
check "drained: the task runs on another node" retry 180 moved
to=$(task_nodes mover | head -1)
echo "moved from node $from to node $to in $((SECONDS - t0)) s"
c=$(task_container "$to" mover)
check "node $to sees every file with its checksum" sums_match "$to" "$c" "$work/sums"
check "node $to mounts c-move against its own master" retry 20 mounted_with "$to" c-move local
check "node $from wrote its fence when it let go" retry 20 plugin_log "$from" "fence written for the next writer"
check "node $to waited for that fence before mounting" plugin_log "$to" "fence replicated; mounting"
# The drain stopped node $from's KeyDB task too; its stop hook held the master up
# until kelp there had let go (deploy/swarm/kelp-keydb.sh).
keydb_said() { # node, text: a KeyDB task there, current or stopped, logged it
  local c
  for c in $(dk "$1" ps -aq -f label=com.docker.swarm.service.name=keydb_keydb); do
    dk "$1" logs "$c" 2>&1 | grep -q "$2" && return 0
  done
  return 1
}
check "node $from's KeyDB master waited for kelp to let go before stopping" keydb_said "$from" "waiting for kelp to release"
check "and stopped once kelp had let go and its peers had all it sent" retry 90 keydb_said "$from" "stopped cleanly"
write_files "$to" "$c" 21 30 >>"$work/sums"
check "10 more files written on node $to" test "$(wc -l <"$work/sums")" = 30
admin volumes | grep -E '^(NAME|c-move)'
dk 1 node update --availability active "kelp-n$from" >/dev/null
check "node $from's KeyDB master is back and replicating" retry 120 back_again "$from" "$from_run"
check "it started empty and took its peers' copy" retry 30 keydb_said "$from" "joining empty"
check "with its peers quiesced, and compared digests" retry 30 keydb_said "$from" "digests compared"
agreed() { ! keydb_said "$1" "data differs"; }
check "no digest differed" agreed "$from"
to_run=$(run_id "$to")
# And away again: drain the node it moved to, so it goes back to the first, whose
# KeyDB master came back with it and caught up before the fence let the mount through.
dk 1 node update --availability drain "kelp-n$to" >/dev/null
moved_again() { local n; n=$(task_nodes mover); [[ -n $n && $n != "$to" ]]; }
check "drained again: the task moves on" retry 180 moved_again
last=$(task_nodes mover | head -1)
c=$(task_container "$last" mover)
check "node $last sees all 30 files with their checksums" sums_match "$last" "$c" "$work/sums"
dk 1 node update --availability active "kelp-n$to" >/dev/null
dk 1 service rm mover >/dev/null
check "node $to's KeyDB master is back and replicating" retry 120 back_again "$to" "$to_run"

echo "== a shared volume: writers on two nodes see each other's writes"
create_volume c-shared --scope multi --sharing all
dk 1 service create -d -q --no-resolve-image --name sharers --replicas 2 --replicas-max-per-node 1 \
  --mount type=cluster,src=c-shared,dst=/data "$app" sh -c 'sleep 3600' >/dev/null
check_running sharers 2 "two tasks running on two nodes"
pair=($(task_nodes sharers))
for i in "${pair[@]}"; do
  dk "$i" exec "$(task_container "$i" sharers)" sh -c "echo from-$i > /data/from-$i"
done
sees() { # node, file, text
  dk "$1" exec "$(task_container "$1" sharers)" cat "/data/$2" 2>/dev/null | grep -qx "$3"
}
check "node ${pair[0]} reads node ${pair[1]}'s file" retry 20 sees "${pair[0]}" "from-${pair[1]}" "from-${pair[1]}"
check "node ${pair[1]} reads node ${pair[0]}'s file" retry 20 sees "${pair[1]}" "from-${pair[0]}" "from-${pair[0]}"
for i in "${pair[@]}"; do
  check "node $i writes c-shared through the volume's one home master" retry 20 mounted_with "$i" c-shared home
done
dk 1 service rm sharers >/dev/null

# Swarm schedules a task on a `--sharing readonly` volume only if its mount says
# `readonly`; without it the task stays Pending ("cannot fulfill requested CSI volume
# mounts"). One reader per node by replicas and --replicas-max-per-node: a
# `--mode global` service on a volume no task has used yet stays Preparing
# (docs/notes.md, "Swarm: global services on a new cluster volume").
echo "== a read-only volume: readers on every node, each against its own master"
create_volume c-read --scope multi --sharing readonly
reads() { [[ -n $2 ]] && dk "$1" exec "$2" ls /data >/dev/null; }         # node, container
refuses_writes() { [[ -n $2 ]] && ! dk "$1" exec "$2" touch /data/x 2>/dev/null; } # node, container
dk 1 service create -d -q --no-resolve-image --name readers --replicas 3 --replicas-max-per-node 1 \
  --mount type=cluster,src=c-read,dst=/data,readonly "$app" sh -c 'sleep 3600' >/dev/null
check_running readers 3 "a reader on each of the three nodes"
for i in "${nodes[@]}"; do
  rc=$(task_container "$i" readers)
  check "node $i reads c-read" reads "$i" "$rc"
  check "node $i may not write c-read" refuses_writes "$i" "$rc"
  check "node $i mounts c-read against its own master" retry 20 mounted_with "$i" c-read local
done
dk 1 service rm readers >/dev/null

echo "== a stack across the nodes: kelp stack, then docker stack deploy of deploy/swarm/app.yml"
# The stack's image serves files from the volume's mount point, as nginx would.
web="$registry/kelp-test-web:1"
tar -C "$work/n1/img" -c . | dk 1 import --change 'CMD ["sleep", "3600"]' - "$web" >/dev/null
dk 1 push -q "$web" >/dev/null
stack_creates() { DOCKER_HOST="unix://$work/n1/run/docker.sock" "$kelp" stack -c deploy/swarm/app.yml | grep -q 'media: created'; }
check "kelp stack creates the stack's cluster volume" stack_creates
check "volume media created" retry 30 vol_created media
WEB_IMAGE=$web dk 1 stack deploy --resolve-image never -c deploy/swarm/app.yml media >/dev/null 2>&1
check_running media_web 2 "both replicas of the stack's web service run"
web_nodes=($(task_nodes media_web))
echo "media_web runs on nodes ${web_nodes[*]}"
w1=$(dk "${web_nodes[0]}" ps -q -f label=com.docker.swarm.service.name=media_web | head -1)
w2=$(dk "${web_nodes[1]}" ps -q -f label=com.docker.swarm.service.name=media_web | tail -1)
dk "${web_nodes[0]}" exec "$w1" sh -c 'echo hello > /usr/share/nginx/html/index.html'
served() { dk "${web_nodes[1]}" exec "$w2" cat /usr/share/nginx/html/index.html 2>/dev/null | grep -qx hello; }
check "a page written by one replica is served by the other" retry 20 served

echo "== a real Prometheus scrapes the three nodes: Swarm discovery, alert rules, every dashboard expression"
# From the host, as on a manager with the Docker socket mounted: it discovers the
# nodes through node 1's engine and scrapes each plugin at its node's address
# (the plugin's default metrics address, 0.0.0.0:9469, on the host network).
if prom_start "$work/prometheus" "$work/n1/run/docker.sock" 9469; then
  prom_checks kelp
fi
prom_stop
dk 1 stack rm media >/dev/null

echo "== service rm and volume rm leave nothing on any node"
for v in c-move c-shared c-read media; do
  check "volume rm $v" retry 120 dk 1 volume rm "$v"
done
registry_empty() { [[ $(rcli 1 zcard kelp:volumes) == 0 ]]; }
registry_dump() { # on failure: what each live node's master still lists
  local i
  for i in "$@"; do echo "  node $i: $(rcli "$i" zrange kelp:volumes 0 -1 withscores | tr '\n' ' ')"; done
}
nothing_left() { # nodes that must have no volume mount
  check "no volume left in the registry" retry 30 registry_empty || registry_dump "$@"
  check "no database left in use" test "$(rcli 1 scard kelp:dbs)" = 0
  check "no bucket left" test "$(kelp_buckets | wc -l)" = 0
  local i
  for i in "$@"; do
    check "no volume mount left on node $i" sh -c "! grep -q '$work/n$i/data/docker/plugins/.*/propagated-mount/' /proc/self/mountinfo"
  done
}
nothing_left "${nodes[@]}"

echo "== node loss: a held volume is taken over after takeover-after, and never without it"
create_volume c-lost --scope single --sharing none --opt takeover-after=10
create_volume c-kept --scope single --sharing none
# Both tasks on worker 2: worker 3 is drained until they run there.
n3_run=$(run_id 3)
dk 1 node update --availability drain kelp-n3 >/dev/null
for v in lost kept; do
  dk 1 service create -d -q --no-resolve-image --name "s-$v" --constraint node.role==worker \
    --mount "type=cluster,src=c-$v,dst=/data" "$app" sh -c 'sleep 3600' >/dev/null
done
check_running s-lost 1 "the task on c-lost runs on node 2"
check_running s-kept 1 "the task on c-kept runs on node 2"
dk 1 node update --availability active kelp-n3 >/dev/null
check "node 3's KeyDB master is back and replicating" retry 120 back_again 3 "$n3_run"
for v in lost kept; do
  write_files 2 "$(task_container 2 "s-$v")" 1 5 >"$work/sums-$v"
  check "5 files written and fsync'd to c-$v on node 2" test "$(wc -l <"$work/sums-$v")" = 5
done
# Node 2 dies: every process of its engine, its plugin, its tasks and its KeyDB
# master ends at once. Its FUSE mounts stay behind, dead, as after a crash.
node_processes() { # node: pids in its network namespace or under its engine
  local netns p
  netns=$(stat -L -c %i "/run/netns/$(ns "$1")")
  for p in /proc/[0-9]*; do
    [[ $(stat -L -c %i "$p/ns/net" 2>/dev/null) == "$netns" ]] && echo "${p#/proc/}"
  done
  engine_processes "$work/n$1"
}
# All are stopped first, then killed, and again until none is left. Killed in one
# pass, in one run something went on renewing the dead node's lease for minutes,
# most likely the plugin restarted by its dockerd while the pass was under way.
kill_node() {
  local round pids
  node_processes "$1" | xargs -r kill -STOP 2>/dev/null
  for round in 1 2 3 4 5 6 7 8 9 10; do
    pids=$(node_processes "$1")
    [[ -z $pids ]] && return 0
    echo "$pids" | xargs -r kill -9 2>/dev/null
    sleep 0.2
  done
  return 1
}
lost_at=$SECONDS
check "node 2 dies: no process of it is left" kill_node 2
# While a node is only Down, Swarm keeps its tasks' volumes on it and schedules
# nothing that needs them (docs/notes.md). The operator declares the node gone,
# at once here, so kelp alone decides when the volume may move.
check "the operator removes node 2 (docker node rm --force)" quietly dk 1 node rm --force kelp-n2
on_node3() { [[ $(task_nodes "$1") == 3 ]]; }
check "Swarm moves the task on c-lost to node 3, and kelp lets it take the volume over" retry 180 on_node3 s-lost ||
  echo "  leases at the registry: $(rcli 1 hgetall kelp:leases | tr '\n' ' ')"
took=$((SECONDS - lost_at))
echo "c-lost: running on node 3 $took s after node 2 died (takeover-after=10)"
# The controller counts the silence from node 2's last lease renewal, which came
# up to a second (one renewal interval) before the death.
check "not before takeover-after: $took s >= 10 s less one renewal interval" test "$took" -ge 9
check "until then the controller refused, naming the holder" plugin_log 1 'c-lost.*which has not released it'
check "node 3 took c-lost over in a new metadata generation" plugin_log 3 "took over: new metadata generation"
c=$(task_container 3 s-lost)
check "node 3 sees every file node 2 acknowledged on c-lost" sums_match "3" "$c" "$work/sums-lost"
no_task() { ! task_nodes "$1" | grep -q .; }
check "c-kept (takeover-after=never) is not taken over" no_task s-kept
check "and the controller says why" plugin_log 1 'c-kept.*takeover-after=never'
dk 1 service ps --no-trunc --format '  s-kept on {{.Node}}: {{.CurrentState}} {{.Error}}' s-kept | head -2
dk 1 service rm s-lost s-kept >/dev/null
# Swarm unpublishes c-lost from node 3 once the task there has ended; dropping the
# volume from Swarm before that would leave it mounted there.
node3=$(dk 1 node inspect -f '{{.ID}}' kelp-n3)
off_node3() { ! dk 1 volume inspect -f '{{json .ClusterVolume.PublishStatus}}' c-lost | grep -q "$node3"; }
check "Swarm unpublishes c-lost from node 3" retry 60 off_node3
# Swarm keeps every volume the removed node had published in "pending-node-unpublish"
# for good, so `docker volume rm` never ends for them (docs/notes.md). The operator
# drops them from Swarm with --force and deletes them with kelp's controller.
sock="/run/docker/plugins/$(dk 1 plugin inspect -f '{{.ID}}' kelp:latest)/kelp.sock"
for v in c-lost c-kept; do
  id=$(admin volumes --json | python3 -c "import json,sys; [print(r['id']) for r in map(json.loads, sys.stdin) if r['name'] == '$v']")
  dk 1 volume rm --force "$v" >/dev/null
  check "kelp deletes $v once node 2's sessions have expired" retry 120 "$kelp" client --endpoint "unix://$sock" delete "$id"
done
# Node 2's dead mounts go with the node; nodes 1 and 3 must have let go of everything.
nothing_left 1 3

echo "== the metadata password stayed secret"
in_no_log() {
  ! grep -aqsF "$meta_pw" "$work"/n*/dockerd.log "$work"/n*/containerd.log "$work"/n*/data/docker/containers/*/*-json.log
}
check "no engine, plugin or task log holds the metadata password" in_no_log
in_no_command_line() {
  local p
  for p in /proc/[0-9]*; do
    grep -aqF "$meta_pw" "$p/cmdline" 2>/dev/null && return 1
  done
  return 0
}
check "no command line on this machine holds it" in_no_command_line

echo "cluster: $passed passed, $failed failed"
((failed == 0))
