#!/usr/bin/env bash
# End-to-end test in a real Docker Swarm on this machine: starts its own containerd
# and dockerd (vfs storage, private data/exec roots and socket), a one-node swarm,
# redis-server and SeaweedFS on loopback, builds the kelp managed plugin once, pushes
# it to a registry on loopback (Debian's docker-registry) and installs it from there,
# then drives volumes and services through the docker CLI only, watched by a real
# Prometheus with deploy/grafana's configuration, alert rules and dashboard. Stops
# everything it started by pid. Skips the engine's part (exit 0 when the promtool
# checks pass) only when this machine cannot run an engine.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh
source tests/lib.sh
source tests/swarm/engine.sh
source tests/swarm/prometheus.sh

work="$(pwd)/.kelp-test/swarm"

{ command -v prometheus && command -v promtool; } >/dev/null || KELP_NEED_PROMETHEUS=1 scripts/deps.sh
echo "== the shipped Prometheus configuration and alert rules, by promtool"
prom_file_checks

if ! dockerpath=$(scripts/install-docker.sh); then
  echo "SKIP: this machine cannot run a Docker engine (scripts/install-docker.sh failed)"
  echo "swarm: $passed passed, $failed failed"
  exit $((failed > 0))
fi
export PATH="$dockerpath:$PATH"

rm -rf "$work"
mkdir -p "$work/state"
export DOCKER_HOST="unix://$work/run/docker.sock"
ENGINE_DOCKERD= ENGINE_CONTAINERD=

# dockerd makes these bridges and leaves them behind; remove only ones this run made.
bridges_before=$(ip -o link show | awk -F': ' '{print $2}')

cleanup() {
  prom_stop
  docker service rm $(docker service ls -q) >/dev/null 2>&1
  sleep 3
  docker plugin disable -f kelp:latest >/dev/null 2>&1
  docker swarm leave -f >/dev/null 2>&1
  stop_engine "$work" "$ENGINE_DOCKERD" "$ENGINE_CONTAINERD"
  kelp_stop_all
  local br
  for br in docker0 docker_gwbridge; do
    grep -qx "$br" <<<"$bridges_before" || ip link delete "$br" 2>/dev/null
  done
}
trap cleanup EXIT

if ! start_engine "$work" "" ""; then
  echo "SKIP: dockerd did not start here; see $work/dockerd.log"
  echo "swarm: $passed passed, $failed failed"
  exit $((failed > 0))
fi
echo "engine: $(docker version --format '{{.Server.Version}}')"
check "swarm init" sh -c "docker swarm init --advertise-addr 127.0.0.1 >/dev/null"

start_redis "$work/redis"
start_weed "$work/weed"
echo "== building the plugin once, pushing it to a registry, installing it from there"
start_registry "$work/registry" 127.0.0.1
plugin_ref="127.0.0.1:$REGISTRY_PORT/kelp:test"
check "plugin built and pushed to the registry" deploy/swarm/build-plugin.sh --push "$plugin_ref"
check "nothing installed by the build" sh -c "! docker plugin inspect $plugin_ref >/dev/null 2>&1"
export METRICS_PORT=$(free_port) # read by scrape() in the sh -c of its checks
check "plugin installed from the registry" sh -c "docker plugin install --grant-all-permissions --alias kelp:latest \
  $plugin_ref KELP_META_URL=redis://127.0.0.1:$REDIS_PORT KELP_FILER=127.0.0.1:$FILER_GRPC \
  KELP_S3_ENDPOINT=http://127.0.0.1:$S3_PORT KELP_S3_ACCESS_KEY=$KELP_S3_ACCESS_KEY \
  KELP_S3_SECRET_KEY=$KELP_S3_SECRET_KEY KELP_IDLE_RELEASE=5 KELP_METRICS_ADDR=127.0.0.1:$METRICS_PORT \
  state.source=$work/state >/dev/null"
check "plugin enabled" test "$(docker plugin inspect -f '{{.Enabled}}' kelp:latest)" = true
check "plugin came from the registry" test "$(docker plugin inspect -f '{{.PluginReference}}' kelp:latest)" = "$plugin_ref"

# Services name the image by its ID: the swarm agent then never tries a registry.
app_image=$(import_app_image "$work")

vol_created() { [[ $(docker volume ls --cluster | awk -v n="$1" '$1 == n {print $NF}') == created ]]; }
task_container() { docker ps -q -f "label=com.docker.swarm.service.name=$1" | head -1; }
running() { [[ $(docker service ps "$1" --filter desired-state=running --format '{{.CurrentState}}' | grep -c '^Running') -ge ${2:-1} ]]; }

echo "== volumes for each sharing mode"
for mode in "single none" "single onewriter" "multi onewriter" "multi all" "multi readonly"; do
  set -- $mode
  name="v-$1-$2"
  docker volume create -d kelp:latest --type mount --scope "$1" --sharing "$2" --required-bytes 1G "$name" >/dev/null
  check "volume $name created (not pending)" retry 30 vol_created "$name"
done

echo "== a service writes; a forced update starts a new task that still sees it"
docker service create -d -q --no-resolve-image --name writer --mount type=cluster,src=v-multi-all,dst=/data \
  "$app_image" sh -c 'hostname >> /data/tasks; sleep 3600' >/dev/null
check "task running with the volume" retry 90 running writer
c=$(task_container writer)
check "df in the task shows the requested 1 GiB" sh -c "docker exec $c df -h /data | grep -q ' 1.0G '"
# The plugin uses the host network: its /metrics is scraped from the host, as Prometheus would.
scrape() { python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$METRICS_PORT/metrics', timeout=30).read().decode())"; }
check "the node's /metrics, scraped from the host, shows the volume mounted and healthy" \
  sh -c "$(declare -f scrape); scrape | grep -E '^kelp_volume_mount_healthy\{[^}]*volume=\"v-multi-all\"[^}]*\} 1(\.0)?$' >/dev/null"
check "and its juicefs daemon's metrics under the volume's name" \
  sh -c "$(declare -f scrape); scrape | grep -q '^juicefs_.*kelp_volume=\"v-multi-all\"'"
docker exec "$c" sh -c 'echo kept > /data/kept.txt'
docker service update -q --no-resolve-image --force writer >/dev/null
check "new task after update --force" retry 90 sh -c "[ \"\$(docker ps -q -f label=com.docker.swarm.service.name=writer | head -1)\" != $c ] && docker ps -q -f label=com.docker.swarm.service.name=writer | grep -q ."
c2=$(task_container writer)
check "file written by the old task is there" sh -c "docker exec $c2 cat /data/kept.txt | grep -q kept"

echo "== two replicas on sharing all see each other's writes"
docker service scale -d writer=2 >/dev/null
check "two tasks running" retry 90 running writer 2
ids=($(docker ps -q -f label=com.docker.swarm.service.name=writer))
docker exec "${ids[0]}" sh -c 'echo one > /data/from-one'
docker exec "${ids[1]}" sh -c 'echo two > /data/from-two'
check "replica 2 reads replica 1's file" sh -c "docker exec ${ids[1]} cat /data/from-one | grep -q one"
check "replica 1 reads replica 2's file" sh -c "docker exec ${ids[0]} cat /data/from-two | grep -q two"

echo "== a snapshot of the service's volume, restored into a new volume the service moves to"
kelp="${CARGO_TARGET_DIR:-target}/release/kelp"
docker exec "${ids[0]}" sh -c 'echo before-snapshot > /data/snap.txt && sync'
check "kelp snapshot create prints the snapshot id" sh -c "$kelp snapshot create nightly v-multi-all > $work/snap-id"
snap=$(cat "$work/snap-id")
docker exec "${ids[0]}" sh -c 'echo after-snapshot > /data/snap.txt && sync'
check "kelp snapshot list shows it with its source" sh -c "$kelp snapshot list --volume v-multi-all | grep -q '^$snap'"
check "kelp restore runs docker volume create" sh -c "$kelp restore $snap v-restored > $work/restore.out"
check "with the source volume's access mode" grep -q -- '--scope multi --sharing all' "$work/restore.out"
check "restored volume created (not pending)" retry 30 vol_created v-restored
# A --mount-add at the same target replaces the mount (adding --mount-rm /data as
# well would drop both: the CLI removes after it adds).
docker service update -d -q --no-resolve-image --mount-add type=cluster,src=v-restored,dst=/data writer >/dev/null
check "the service's spec mounts the restored volume" test \
  "$(docker service inspect -f '{{range .Spec.TaskTemplate.ContainerSpec.Mounts}}{{.Source}} {{end}}' writer)" = "v-restored "
restored_read() {
  local c n=0
  for c in $(docker ps -q -f label=com.docker.swarm.service.name=writer); do
    [[ $(docker exec "$c" cat /data/snap.txt 2>/dev/null) == before-snapshot ]] || return 1
    n=$((n + 1))
  done
  ((n == 2))
}
check "the service's tasks run on the restored volume and read the snapshot's state" retry 120 restored_read
check "the source volume still has the later write" test "$(redis-cli -p "$REDIS_PORT" exists kelp:vol:v-multi-all)" = 1

echo "== S3 credentials as swarm secrets"
ak=$(printf '%s' "$KELP_S3_ACCESS_KEY" | docker secret create kelp-ak -)
sk=$(printf '%s' "$KELP_S3_SECRET_KEY" | docker secret create kelp-sk -)
docker volume create -d kelp:latest --type mount --scope single --sharing none --required-bytes 1G \
  --secret "access-key=$ak" --secret "secret-key=$sk" v-secret >/dev/null
check "volume with secrets created" retry 30 vol_created v-secret
check "secret value absent from docker volume inspect" sh -c "! docker volume inspect v-secret | grep -q -- '$KELP_S3_SECRET_KEY'"
check "secret value absent from the plugin's log" sh -c "! grep -q -- '$KELP_S3_SECRET_KEY' $work/dockerd.log"

echo "== a stack whose cluster volume kelp stack creates from x-cluster-spec"
cat >"$work/stack.yml" <<YML
version: "3.10"
services:
  app:
    image: $app_image
    command: ["sh", "-c", "echo from-stack > /data/stack.txt; sleep 3600"]
    volumes:
      - type: cluster
        source: v-stack
        target: /data
volumes:
  v-stack:
    external: true
    x-cluster-spec:
      access_mode: {scope: single, sharing: none}
      capacity_range: {required_bytes: "536870912"}
YML
check "kelp stack creates the missing volume" sh -c "${CARGO_TARGET_DIR:-target}/release/kelp stack -c $work/stack.yml | grep -q 'v-stack: created'"
check "kelp stack leaves an existing volume alone" sh -c "${CARGO_TARGET_DIR:-target}/release/kelp stack -c $work/stack.yml | grep -q 'v-stack: exists'"
check "stack volume created (not pending)" retry 30 vol_created v-stack
docker stack deploy --resolve-image never -c "$work/stack.yml" kelpstack >/dev/null 2>&1
check "stack task running on its cluster volume" retry 90 running kelpstack_app
c=$(task_container kelpstack_app)
check "stack task wrote through kelp" retry 20 sh -c "docker exec $c cat /data/stack.txt | grep -q from-stack"
check "the volume has the size x-cluster-spec asked for" sh -c "docker exec $c df -k /data | grep -q ' 524288 '"
docker stack rm kelpstack >/dev/null

echo "== a real Prometheus scrapes the node: discovery, alert rules, every dashboard expression"
# Its Swarm discovery asks this engine for the nodes, as on a manager with the Docker
# socket mounted; the derived configuration only points it at this engine's socket
# and the plugin's metrics port.
if prom_start "$work/prometheus" "$work/run/docker.sock" "$METRICS_PORT"; then
  prom_checks kelp
fi
prom_stop

echo "== crashes inside the plugin: the task sees at most a stall"
docker volume create -d kelp:latest --type mount --scope single --sharing none --required-bytes 1G v-crash >/dev/null
check "volume v-crash created" retry 30 vol_created v-crash
# Each record is appended and fsync'd on one descriptor (dd conv=fsync, which also
# checks close) before it is journalled in the container's own /tmp, outside the
# volume. A plain `echo >>` would not do: sh ignores close(), and a write buffered
# in a juicefs daemon that is killed before the close commits it is gone (the close
# fails, unseen).
docker service create -d -q --no-resolve-image --name crashy --mount type=cluster,src=v-crash,dst=/data \
  "$app_image" sh -c 'i=0; while :; do if printf "record %d\n" $i | dd of=/data/log.txt oflag=append conv=notrunc,fsync 2>/dev/null; then echo "ack $i" >> /tmp/journal; i=$((i+1)); else echo "error $i" >> /tmp/journal; fi; sleep 0.1; done' >/dev/null
check "crash-test task running" retry 90 running crashy
cc=$(task_container crashy)
acks() { docker exec "$cc" grep -c '^ack' /tmp/journal 2>/dev/null || echo 0; }
grew() { (( $(acks) > $1 + 10 )); }
plugin_id=$(docker plugin inspect -f '{{.ID}}' kelp:latest)
# The plugin's PID 1 (kelp init) from containerd, and its children by pid: never by name.
plugin_init=$(ctr --address "$work/run/containerd.sock" -n plugins.moby task ls 2>/dev/null | awk -v id="$plugin_id" '$1 == id {print $2}')
descendants() { # pid: every process below it
  local c
  for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do echo "$c"; descendants "$c"; done
}
children_with() { # pattern: processes below kelp init whose command line matches
  local p
  for p in $(descendants "$plugin_init"); do
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q -- "$1" && echo "$p"
  done
}
check "kelp init is the plugin's PID 1" sh -c "tr '\0' ' ' </proc/$plugin_init/cmdline | grep -q '/kelp init'"
serve_pid=$(children_with ' serve ')
n=$(acks)
kill -9 $serve_pid
check "I/O goes on while kelp serve is killed" retry 30 grew "$n"
check "kelp init restarted kelp serve" retry 30 sh -c "p=\$(cat /proc/$plugin_init/task/*/children); for c in \$p; do tr '\0' ' ' </proc/\$c/cmdline | grep -q ' serve ' && [ \$c != $serve_pid ] && exit 0; done; exit 1"
jfs_pids=$(children_with 'juicefs')
n=$(acks)
t0=$SECONDS
kill -9 $jfs_pids
check "I/O resumes after every juicefs of the node was killed" retry 90 grew "$n"
echo "juicefs killed: I/O back within $((SECONDS - t0)) s"
docker exec "$cc" sh -c 'cat /tmp/journal' >"$work/crash-journal"
docker exec "$cc" sh -c 'cat /data/log.txt' >"$work/crash-log"
# As outside Docker (tests/node.rs): a request in flight when juicefs is killed may
# fail once (EINTR); the writer retries it. Never more than a couple.
errors=$(grep -c '^error' "$work/crash-journal" || true)
check "the task saw at most two failed writes, each retried ($errors)" test "$errors" -le 2
lost=0
while read -r _ n; do grep -qx "record $n" "$work/crash-log" || lost=$((lost + 1)); done < <(grep '^ack' "$work/crash-journal")
check "every acknowledged record is on the volume ($(grep -c '^ack' "$work/crash-journal") acknowledged, $lost lost)" test "$lost" = 0
docker service rm crashy >/dev/null
check "volume rm v-crash once the task is gone" retry 120 docker volume rm v-crash

echo "== plugin disabled and re-enabled while a service holds a volume"
c=$(task_container writer)
docker plugin disable -f kelp:latest >/dev/null 2>&1
sleep 3
during=$(docker exec "$c" sh -c 'cat /data/kept.txt 2>&1' | head -1)
docker plugin enable kelp:latest >/dev/null 2>&1
sleep 10
after_old=$(docker exec "$c" sh -c 'cat /data/kept.txt 2>&1' | head -1)
docker service update -q --no-resolve-image --force writer >/dev/null 2>&1
retry 90 running writer 2
c3=$(task_container writer)
after_new=$(docker exec "$c3" sh -c 'cat /data/kept.txt 2>&1' | head -1)
{
  echo "while disabled, the running task read: ${during:-<nothing>}"
  echo "after re-enable, the same task read: ${after_old:-<nothing>}"
  echo "a new task (update --force) read: ${after_new:-<nothing>}"
} | tee "$work/disable-enable.txt"
check "plugin re-enabled" test "$(docker plugin inspect -f '{{.Enabled}}' kelp:latest)" = true
check "a new task works after re-enable" test "$after_new" = kept

echo "== service rm and volume rm remove bucket and metadata"
docker service rm writer >/dev/null
# The restored volume and the snapshot share the source's file system: the source's
# bucket and database go with the last of the three.
check "volume rm v-restored once no task uses it" retry 120 docker volume rm v-restored
check "kelp snapshot delete" "$kelp" snapshot delete "$snap"
check "volume registered before rm" test "$(redis-cli -p "$REDIS_PORT" exists kelp:vol:v-multi-all)" = 1
check "volume rm succeeds once no task uses it" retry 120 docker volume rm v-multi-all
registered() { [[ $(redis-cli -p "$REDIS_PORT" exists "kelp:vol:$1") == 1 ]]; }
unregistered() { ! registered "$1"; }
registry_empty() { [[ $(redis-cli -p "$REDIS_PORT" zcard kelp:volumes) == 0 ]]; }
check "metadata gone" retry 30 unregistered v-multi-all
no_bucket() { ! kelp_buckets | grep -qx "$1"; }
check "bucket gone" no_bucket kelp-v-multi-all
for v in v-single-none v-single-onewriter v-multi-onewriter v-multi-readonly v-secret v-stack; do
  retry 120 docker volume rm "$v" || bad "volume rm $v"
done
check "no kelp volume left in the registry" retry 30 registry_empty
check "no bucket left" test "$(kelp_buckets | wc -l)" = 0
pm=$(docker plugin inspect -f '{{.ID}}' kelp:latest)
check "no volume mount left under the plugin's propagated mount" \
  sh -c "! grep -q 'plugins/$pm/propagated-mount/' /proc/self/mountinfo"

echo "swarm: $passed passed, $failed failed"
((failed == 0))
