#!/usr/bin/env bash
# Repeats a metadata-server outage under the journaling writer on one plain juicefs
# mount (no kelp), to catch the call that never returns (docs/notes.md, "A call in
# flight across a metadata outage"). For each wedge it saves juicefs's goroutines
# (its debug agent) and the kernel stacks of the writer, then ends that juicefs.
# Usage: tests/wedge/repro.sh [cycles] [max outage s] [server binary] [wait s]
# A wedge is an outage after which the writer acknowledged nothing within the wait
# (40 s by default); the script also says when, if ever, that step came.
set -euo pipefail
cycles=${1:-20} maxout=${2:-20} server=${3:-redis-server} wait=${4:-40}
dir=$(mktemp -d "${TMPDIR:-/tmp}/kelp-wedge.XXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mnt=$dir/mnt; mkdir -p "$mnt" "$dir/redis" "$dir/blob"
fixture=$(cd "$(dirname "$0")/.." && pwd)/fixtures/journal_writer.py
pids=()
cleanup() {
  touch "$dir/stop"
  for p in "${pids[@]}" ${jfs:-} ${srv:-}; do kill -9 "$p" 2>/dev/null || true; done
  umount -l "$mnt" 2>/dev/null || true
  echo "results in $dir"
}
trap cleanup EXIT
start_server() {
  $server --bind 127.0.0.1 --port "$port" --appendonly yes --appendfsync always --save "" \
    --dir "$dir/redis" >/dev/null 2>&1 & srv=$!
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
}
mount_jfs() {
  JFS_SUPERVISOR=repro juicefs mount --no-usage-report --no-syslog --backup-meta=0 \
    --io-retries=39 --cache-dir="$dir/cache" "redis://127.0.0.1:$port/1" "$mnt" >>"$dir/juicefs.log" 2>&1 & jfs=$!
  for _ in $(seq 100); do [[ "$(stat -c %i "$mnt" 2>/dev/null)" == 1 ]] && return; sleep 0.1; done
  echo "mount failed"; exit 1
}
acks() { grep -c '^ack' "$dir/journal" 2>/dev/null || echo 0; }
start_server
juicefs format --storage file --bucket "$dir/blob/" "redis://127.0.0.1:$port/1" wedge >/dev/null 2>&1
mount_jfs
python3 "$fixture" "$mnt" "$dir/journal" "$dir/stop" >"$dir/writer.out" & pids+=($!)
wedged=0
for i in $(seq "$cycles"); do
  sleep "0.$((RANDOM % 10))$((RANDOM % 10))"
  out=$(( RANDOM % 10 < 7 ? 5 + RANDOM % 6 : 5 + RANDOM % (maxout - 4) ))
  kill -9 "$srv"; wait "$srv" 2>/dev/null || true
  sleep "$out"
  before=$(acks); start_server; back=$(date +%s.%N)
  t=0
  while [[ $(acks) -le $before && $t -lt $((wait * 10)) ]]; do sleep 0.1; t=$((t+1)); done
  if [[ $(acks) -le $before ]]; then
    wedged=$((wedged+1))
    echo "cycle $i: outage ${out}s: WEDGED (no ack ${wait} s after the server was back)"
    for a in $(ss -ltnpH | grep "pid=$jfs," | awk '{print $4}'); do
      curl -sf -m 5 "http://$a/debug/pprof/goroutine?debug=2" >"$dir/goroutines.$i.txt" && break
    done
    for p in "${pids[@]}"; do cat /proc/$p/stack >"$dir/writer-stack.$i.txt" 2>/dev/null || true; done
    timeout 3 stat "$mnt" >/dev/null 2>&1 && echo "  root answers" || echo "  root does not answer"
    for _ in $(seq 600); do [[ $(acks) -gt $before ]] && break; sleep 1; done
    echo "  next acknowledgement $(python3 -c "import time; print(round(time.time()-$back))") s after the server was back (stopped waiting at 600 s)"
    kill -9 "$jfs"; wait "$jfs" 2>/dev/null || true
    umount -l "$mnt" || true
    mount_jfs
  else
    echo "cycle $i: outage ${out}s: resumed $(python3 -c "import time; print(round(time.time()-$back,2))") s after"
  fi
done
echo "wedged $wedged of $cycles"
