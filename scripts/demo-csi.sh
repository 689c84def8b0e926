#!/usr/bin/env bash
# The CSI-level demo (`scripts/demo.sh --csi`), for machines without Docker: starts
# a local Redis-protocol metadata server, SeaweedFS (master, volume, filer, S3) and
# `kelp serve` on free loopback ports, creates a volume through CSI, mounts it (stage
# + publish), writes and reads a file,
# and shows where everything is. Then it unmounts, deletes and stops everything,
# unless --keep is given (then it prints how to stop it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
keep=0
[[ "${1:-}" == "--keep" ]] && keep=1

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Installing what is missing"
scripts/deps.sh
source scripts/env.sh # what deps.sh has just installed
step "Building kelp (release)"
cargo build --release --locked --quiet -p kelp
kelp="$(realpath "${CARGO_TARGET_DIR:-target}")/release/kelp"

source tests/lib.sh
work="$(pwd)/.kelp-demo"
if grep -q " $work" /proc/self/mountinfo; then
  echo "an earlier demo is still mounted under $work; unmount it first" >&2
  exit 1
fi
rm -rf "$work"
mkdir -p "$work"

cleanup() {
  if ((keep)); then return; fi
  kelp_stop_all
}
trap cleanup EXIT

step "Starting redis-server (metadata) and SeaweedFS (data) on free loopback ports"
start_redis "$work/redis"
start_weed "$work/weed"
echo "metadata: redis://127.0.0.1:$REDIS_PORT   filer gRPC: 127.0.0.1:$FILER_GRPC   S3: http://127.0.0.1:$S3_PORT"

step "Starting kelp serve (controller + node)"
export KELP_ENDPOINT="unix://$work/kelp.sock"
KELP_S3_SECRET_KEY="$KELP_S3_SECRET_KEY" "$kelp" serve --services=both --allowed-roots="$work" \
  --meta-url="redis://127.0.0.1:$REDIS_PORT" --filer="127.0.0.1:$FILER_GRPC" \
  --s3-endpoint="http://127.0.0.1:$S3_PORT" --s3-access-key="$KELP_S3_ACCESS_KEY" \
  --state-dir="$work/kelp" --cache-dir="$work/kelp/cache" >"$work/kelp.log" 2>&1 &
KELP_PIDS+=($!)
for _ in $(seq 100); do [[ -S "$work/kelp.sock" ]] && break; sleep 0.1; done

step "CreateVolume demo (1 GiB)"
id=$("$kelp" client create demo --size $((1 << 30)))
echo "volume id: $id"

step "NodeStageVolume + NodePublishVolume at $work/mnt"
"$kelp" client mount "$id" "$work/mnt" --staging "$work/staged/demo"
echo "Hello from a kelp volume, $(date -u +%FT%TZ)" >"$work/mnt/hello.txt"
echo "wrote and read back: $(cat "$work/mnt/hello.txt")"

step "Where it is"
echo "mounts:"
grep -E " $work/(staged|mnt)" /proc/self/mountinfo | awk '{print "  " $5 "  " $9 "  " $10}'
echo "df:"
df -h "$work/mnt" | sed 's/^/  /'
db=$(echo "$id" | cut -d: -f2)
member=$(echo "$id" | cut -d: -f5)
[[ -n $member ]] && echo "layout: the volume is the directory /.kelp/v/$member of its file system (juicefs --subdir)"
echo "metadata: database $db of redis://127.0.0.1:$REDIS_PORT, keys: $(redis-cli -p "$REDIS_PORT" -n "$db" keys '*' | sort | tr '\n' ' ')"
echo "data: SeaweedFS bucket $(kelp_buckets | tr '\n' ' ')(objects under /buckets/kelp-demo/demo/chunks)"
echo "stats (CSI NodeGetVolumeStats):"
"$kelp" client stats "$id" "$work/mnt" | sed 's/^/  /'
echo "kelp log: $work/kelp.log"

if ((keep)); then
  echo
  echo "Left running (--keep). To stop: $kelp client unmount $id $work/mnt --staging $work/staged/demo;"
  echo "  $kelp client delete $id; kill ${KELP_PIDS[*]}"
  exit 0
fi

step "Unmount, delete, stop"
"$kelp" client unmount "$id" "$work/mnt" --staging "$work/staged/demo"
"$kelp" client delete "$id"
echo "buckets left: $(kelp_buckets | wc -l); databases in use: $(redis-cli -p "$REDIS_PORT" scard kelp:dbs)"
