#!/usr/bin/env bash
# Diagnostic, not a test or benchmark: private memory of a juicefs mount before and
# after one 512 MiB stream (dd with fsync, drop_caches, read back), for four ways of
# running it, all without kelp: `juicefs mount -d` (supervisor and worker), one
# foreground process as kelp runs it (JFS_SUPERVISOR set), the same with kelp's
# --io-retries, and with kelp's --io-retries, --max-fuse-io=1M and --metrics.
# Starts its own redis-server and SeaweedFS on free loopback ports; leaves nothing.
# Usage: scripts/juicefs-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
source tests/lib.sh
work="$(pwd)/.kelp-test/juicefs-memory"
rm -rf "$work"
mkdir -p "$work"/m{1,2,3,4}
cleanup() {
  for m in "$work"/m*; do umount -l "$m" 2>/dev/null || true; done
  kelp_stop_all
}
trap cleanup EXIT
start_redis "$work/redis"
start_weed "$work/weed"
meta="redis://127.0.0.1:$REDIS_PORT/1"
juicefs format --storage s3 --bucket "http://127.0.0.1:$S3_PORT/memexp" --trash-days 0 \
  --access-key "$KELP_S3_ACCESS_KEY" --secret-key "$KELP_S3_SECRET_KEY" "$meta" memexp >/dev/null 2>&1
common=(--no-usage-report --backup-meta=0 --cache-size=1024)
juicefs mount -d "${common[@]}" --cache-dir="$work/c1" --log="$work/l1" "$meta" "$work/m1" 2>/dev/null
foreground() { # N, extra options...
  local n=$1
  shift
  JFS_SUPERVISOR=diagnostic juicefs mount "${common[@]}" "$@" --cache-dir="$work/c$n" --log="$work/l$n" \
    "$meta" "$work/m$n" 2>"$work/e$n" &
  KELP_PIDS+=($!)
}
foreground 2
foreground 3 --io-retries=300
foreground 4 --io-retries=300 --max-fuse-io=1M --metrics=127.0.0.1:0
for i in 1 2 3 4; do
  for _ in $(seq 100); do mountpoint -q "$work/m$i" && break; sleep 0.1; done
  mountpoint -q "$work/m$i" || { echo "mount $i did not come up: see $work/e$i, $work/l$i" >&2; exit 1; }
done
mem() { # private MiB of the juicefs processes of mount N (named by their --log)
  local total=0 kb p
  for p in $(pgrep -f -- "--log=$work/l$1 "); do
    kb=$(awk '/^Private_(Clean|Dirty)/{s+=$2} END{print s+0}' "/proc/$p/smaps_rollup")
    total=$((total + kb))
  done
  echo $((total / 1024))
}
all() { echo "m1 (-d)=$(mem 1) m2 (foreground)=$(mem 2) m3 (+io-retries)=$(mem 3) m4 (+1M, metrics)=$(mem 4) MiB"; }
echo "idle: $(all)"
for i in 1 2 3 4; do
  dd if=/dev/zero of="$work/m$i/big" bs=1M count=512 conv=fsync status=none
  sync
  echo 3 >/proc/sys/vm/drop_caches
  dd if="$work/m$i/big" of=/dev/null bs=1M status=none
  echo "m$i after its stream: $(mem "$i") MiB"
done
slept=0
for s in 30 60 120; do
  sleep $((s - slept))
  slept=$s
  echo "$s s after the last stream: $(all)"
done
