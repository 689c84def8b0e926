#!/usr/bin/env bash
# Benchmarks (not tests): starts redis-server, SeaweedFS and a release `kelp serve` on
# free loopback ports and runs `kelp-bench provision` and `kelp-bench node` (the
# benchmark binary, built from bench/; the driver does not ship it), each of
# which runs its by-hand juicefs baseline in the same process and prints ratios.
# `kelp-bench durability` (not part of `all`: it changes the server's appendfsync while
# it runs) prices appendfsync always against everysec.
# `kelp-bench datapath` (not part of `all` either) sets kelp beside a raw juicefs mount,
# a `weed mount` and local disk, workload by workload.
# `kelp-bench snapshot` (not part of `all`) times the tree copy under snapshots and
# clones against `juicefs sync` of the volume into a new one.
# Usage: scripts/bench.sh [COUNT] [provision|node|durability|datapath|snapshot|all] [ARGS...]
#   COUNT: volumes for provision (default 200); ARGS go to `kelp-bench datapath`
#   (e.g. --rounds=1 --seq-mib=128 for a quick look).
# KELP_BENCH_SCRAPE_EVERY=1 prices the metrics endpoint scraped every second (default 15).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
count=${1:-200}
what=${2:-all}
scripts/deps.sh
source scripts/env.sh # what deps.sh has just installed
cargo build --release --locked --quiet -p kelp -p kelp-bench
kelp="$(realpath "${CARGO_TARGET_DIR:-target}")/release/kelp"
bench="$(realpath "${CARGO_TARGET_DIR:-target}")/release/kelp-bench"
source tests/lib.sh
work="$(pwd)/.kelp-test/bench"
rm -rf "$work"
mkdir -p "$work"
trap kelp_stop_all EXIT
start_redis "$work/redis"
start_weed "$work/weed"
export KELP_ENDPOINT="unix://$work/kelp.sock" KELP_META_URL="redis://127.0.0.1:$REDIS_PORT"
export KELP_S3_ENDPOINT="http://127.0.0.1:$S3_PORT" KELP_S3_ACCESS_KEY KELP_S3_SECRET_KEY
metrics_addr="127.0.0.1:$(free_port)"
"$kelp" serve --services=both --allowed-roots="$work" --filer="127.0.0.1:$FILER_GRPC" --state-dir="$work/kelp" \
  --cache-dir="$work/kelp/cache" --metrics-addr="$metrics_addr" --log-level=warn >"$work/kelp.log" 2>&1 &
kelp_pid=$!
KELP_PIDS+=("$kelp_pid")
for _ in $(seq 100); do [[ -S "$work/kelp.sock" ]] && break; sleep 0.1; done
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(juicefs version); weed $(weed version | awk '{print $3}')"
if [[ $what == durability ]]; then "$bench" --dir="$work/run" durability; exit; fi
if [[ $what == snapshot ]]; then "$bench" --dir="$work/run" snapshot "${@:3}"; exit; fi
if [[ $what == datapath ]]; then
  "$bench" --dir="$work/run" datapath --weed-filer="127.0.0.1:$FILER_PORT.$FILER_GRPC" \
    --metrics-addr="$metrics_addr" "${@:3}"
  exit
fi
if [[ $what != node ]]; then "$bench" --dir="$work/run" provision --count="$count"; fi
if [[ $what != provision ]]; then "$bench" --dir="$work/run" node --kelp-pid="$kelp_pid" --metrics-addr="$metrics_addr" \
  --scrape-every="${KELP_BENCH_SCRAPE_EVERY:-15}"; fi
