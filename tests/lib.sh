# Shared shell helpers for kelp's scripts: free ports, starting redis-server and
# SeaweedFS on them, waiting, and stopping everything this shell started by pid.
# Source it; call `kelp_stop_all` (or let the EXIT trap do it).

KELP_PIDS=()
KELP_S3_ACCESS_KEY=${KELP_S3_ACCESS_KEY:-kelpdemoaccess}
KELP_S3_SECRET_KEY=${KELP_S3_SECRET_KEY:-kelp-demo-secret-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')}

# A free loopback port below the kernel's ephemeral range: a port from bind(0) may be
# taken by any outgoing connection before the server binds it (tests/common/servers.rs
# says more). Ports handed out by this shell are remembered, so two calls made before
# either server binds never return the same one.
KELP_PORTS_FILE=${KELP_PORTS_FILE:-${TMPDIR:-/tmp}/kelp-ports.$$}
free_port() {
  python3 - "$KELP_PORTS_FILE" <<'PY'
import random, socket, sys
issued = set()
try:
    issued = {int(p) for p in open(sys.argv[1]).read().split()}
except FileNotFoundError:
    pass
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for port in random.sample(range(10000, max(low, 11000)), 500):
    if port in issued:
        continue
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    with open(sys.argv[1], "a") as f:
        f.write(f"{port}\n")
    print(port)
    break
else:
    raise SystemExit("no free loopback port below the ephemeral range")
PY
}
wait_port() { # port seconds
  wait_addr 127.0.0.1 "$1" "$2"
}

wait_addr() { # host port seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1:$2 after $3 s" >&2
  return 1
}

# The metadata server's program, chosen by KELP_META_SERVER: redis (default),
# valkey or keydb. They take the same arguments for everything kelp sets.
meta_server_bin() {
  case ${KELP_META_SERVER:-redis} in
    redis) echo redis-server ;;
    valkey) echo valkey-server ;;
    keydb) echo keydb-server ;;
    *) echo "KELP_META_SERVER=$KELP_META_SERVER: expected redis, valkey or keydb" >&2; return 1 ;;
  esac
}

# start_redis DIR -> sets REDIS_PORT. Durable as kelp expects of a master: every
# commit is fsync'd before it is acknowledged.
start_redis() {
  REDIS_PORT=$(free_port)
  mkdir -p "$1"
  local bin
  bin=$(meta_server_bin)
  echo "metadata server: $("$bin" --version | cut -d' ' -f1-3)" >&2
  "$bin" --bind 127.0.0.1 --port "$REDIS_PORT" --databases 1024 --save '' \
    --appendonly yes --appendfsync always --dir "$1" >"$1/redis.log" 2>&1 &
  KELP_PIDS+=($!)
  wait_port "$REDIS_PORT" 10
}

# start_weed DIR [IP] -> sets WEED_IP (default 127.0.0.1), FILER_GRPC, S3_PORT,
# FILER_PORT, MASTER_PORT
start_weed() {
  local dir=$1
  WEED_IP=${2:-127.0.0.1}
  MASTER_PORT=$(free_port) FILER_PORT=$(free_port) FILER_GRPC=$(free_port) S3_PORT=$(free_port)
  mkdir -p "$dir/data"
  cat >"$dir/s3.json" <<JSON
{"identities":[{"name":"kelp","credentials":[{"accessKey":"$KELP_S3_ACCESS_KEY","secretKey":"$KELP_S3_SECRET_KEY"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
  weed server -dir="$dir/data" -ip="$WEED_IP" -ip.bind="$WEED_IP" \
    -master.port="$MASTER_PORT" -master.port.grpc="$(free_port)" \
    -volume.port="$(free_port)" -volume.port.grpc="$(free_port)" -volume.max=0 -master.volumeSizeLimitMB=32 \
    -filer -filer.port="$FILER_PORT" -filer.port.grpc="$FILER_GRPC" \
    -s3 -s3.port="$S3_PORT" -s3.port.grpc="$(free_port)" -s3.port.iceberg=0 -s3.port.lance=0 \
    -s3.config="$dir/s3.json" >"$dir/weed.log" 2>&1 &
  KELP_PIDS+=($!)
  wait_addr "$WEED_IP" "$FILER_GRPC" 60
  wait_addr "$WEED_IP" "$S3_PORT" 60
  local i
  for ((i = 0; i < 300; i++)); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$WEED_IP:$MASTER_PORT/dir/assign")" == 200 ]] && return 0
    sleep 0.2
  done
  echo "SeaweedFS never became writable; see $dir/weed.log" >&2
  return 1
}

# Buckets kelp made (filer listing).
kelp_buckets() {
  curl -s -H 'Accept: application/json' "http://$WEED_IP:$FILER_PORT/buckets/?limit=10000" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); [print(e["FullPath"].rsplit("/",1)[1]) for e in (d.get("Entries") or []) if "/kelp-" in e["FullPath"]]'
}

kelp_any_running() {
  local pid
  for pid in "${KELP_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null && return 0
  done
  return 1
}

# Ends every server this shell started: SIGTERM, then SIGKILL for any still running
# after 10 s (weed 4.48 can hang in its shutdown, retrying a filer it already closed).
kelp_stop_all() {
  local pid i
  for pid in "${KELP_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for ((i = 0; i < 100; i++)); do
    kelp_any_running || break
    sleep 0.1
  done
  for pid in "${KELP_PIDS[@]}"; do
    kill -9 "$pid" 2>/dev/null || true
  done
  for pid in "${KELP_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  KELP_PIDS=()
  rm -f "$KELP_PORTS_FILE"
}
