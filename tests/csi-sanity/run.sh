#!/usr/bin/env bash
# Runs the unmodified csi-sanity v5.5.0 suite against `kelp serve` (controller and
# node services) on real redis-server and SeaweedFS: twice over a unix socket on the
# same servers, once over TCP; then checks that no bucket, database or mount is left.
# After every run no FUSE holder may be left: each ends with its volume's unstage.
# KELP_SANITY_RUNS=N runs the suite N times over the unix socket instead (then once
# over TCP) and counts the holders left over all of them.
# Prints each run's summary; exits non-zero if any spec fails or anything leaks.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh
source tests/lib.sh
trap kelp_stop_all EXIT

csi_sanity="$(go env GOPATH)/bin/csi-sanity"
[[ -x "$csi_sanity" ]] || { echo "csi-sanity missing: KELP_NEED_CSI_SANITY=1 scripts/deps.sh" >&2; exit 1; }
cargo build --locked --quiet -p kelp
kelp="${CARGO_TARGET_DIR:-target}/debug/kelp"

work="$(pwd)/.kelp-test/csi-sanity"
rm -rf "$work"
mkdir -p "$work"
start_redis "$work/redis"
start_weed "$work/weed"

KELP_PID=
start_kelp() { # endpoint
  "$kelp" serve --endpoint="$1" --services=both --node-id=sanity-node --allowed-roots="$work" \
    --meta-url="redis://127.0.0.1:$REDIS_PORT" --filer="127.0.0.1:$FILER_GRPC" \
    --s3-endpoint="http://127.0.0.1:$S3_PORT" --s3-access-key="$KELP_S3_ACCESS_KEY" \
    --state-dir="$work/kelp" --cache-dir="$work/kelp/cache" >>"$work/kelp.log" 2>&1 &
  KELP_PID=$!
  KELP_PIDS+=("$KELP_PID")
}
export KELP_S3_SECRET_KEY

failed=0
# Every spec of what kelp advertises, snapshots and clones included: a capability
# dropped by mistake shows up as specs skipped instead of failed.
min_passed=${KELP_SANITY_MIN_PASSED:-79}
run_suite() { # name endpoint-for-csi-sanity
  local name=$1 ep=$2
  echo "== csi-sanity $name ($ep)"
  set +e
  "$csi_sanity" --csi.endpoint="$ep" \
    --csi.mountdir="$work/$name-target" --csi.stagingdir="$work/$name-staging" \
    --csi.testvolumesize=1073741824 --csi.testvolumeexpandsize=2147483648 \
    --ginkgo.junit-report="$work/$name.junit.xml" --ginkgo.no-color --ginkgo.timeout=30m \
    >"$work/$name.log" 2>&1
  local rc=$?
  set -e
  grep -E "^(Ran [0-9]+ of [0-9]+ Specs|(SUCCESS|FAIL)! -- )" "$work/$name.log" || true
  local ran
  ran=$(sed -nE 's/^(SUCCESS|FAIL)! -- ([0-9]+) Passed.*/\2/p' "$work/$name.log" | tail -1)
  if ((${ran:-0} < min_passed)); then
    failed=1
    echo "csi-sanity $name: ${ran:-0} specs passed, fewer than the $min_passed kelp's capabilities must run" >&2
  fi
  if ((rc != 0)); then
    failed=1
    echo "csi-sanity $name failed (exit $rc); failures:" >&2
    grep -E "^\s*\[FAIL\]" "$work/$name.log" | sort -u | head -40 >&2 || true
  fi
}

# The FUSE holders (`kelp hold-fuse --socket <state>/fuse/...`) still running.
holder_pids() {
  local p
  for p in /proc/[0-9]*; do
    if [[ $(tr '\0' ' ' 2>/dev/null <"$p/cmdline") == *"hold-fuse --socket $work/"* ]]; then
      echo "${p#/proc/}"
    fi
  done
}

# Every volume a run staged is unstaged by its end, and unstage waits for the
# volume's holder to exit: any holder left is a leak. It is reported with its log,
# counted, and ended, so the next run starts clean.
leaked_holders=0
check_holders() { # name
  local held p cmd sock key
  mapfile -t held < <(holder_pids)
  ((${#held[@]})) || return 0
  leaked_holders=$((leaked_holders + ${#held[@]}))
  echo "FAIL: csi-sanity $1: FUSE holders outlived their volumes: ${held[*]}" >&2
  for p in "${held[@]}"; do
    cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) || continue
    echo "$cmd" >&2
    # The socket is <db>-<tag>[-<member>].sock; the log <mount name>.holder.log.
    sock=$(basename "${cmd##*--socket }" | tr -d ' ')
    key=${sock%.sock}
    tail -n 5 "$work"/kelp/logs/*".${key##*-}.holder.log" >&2 2>/dev/null || true
  done
  kill "${held[@]}" 2>/dev/null || true
}

runs=${KELP_SANITY_RUNS:-2}
sock="$work/kelp.sock"
start_kelp "unix://$sock"
for _ in $(seq 100); do [[ -S "$sock" ]] && break; sleep 0.1; done
for i in $(seq "$runs"); do
  run_suite "unix-$i" "unix://$sock"
  check_holders "unix-$i"
done
kill "$KELP_PID"; wait "$KELP_PID" || true

port=$(free_port)
start_kelp "tcp://127.0.0.1:$port"
wait_port "$port" 10
run_suite tcp "127.0.0.1:$port"
check_holders tcp
kill "$KELP_PID"; wait "$KELP_PID" || true

# Nothing may outlive the runs.
leaks=0
buckets=$(kelp_buckets | wc -l)
volumes=$(redis-cli -p "$REDIS_PORT" zcard kelp:volumes)
dbs=$(redis-cli -p "$REDIS_PORT" scard kelp:dbs)
mounts=$(grep -c " $work" /proc/self/mountinfo || true)
# kelp's node reaps what no staged volume owns; in these runs nothing should need it.
reaped=$(grep -c "reaped" "$work/kelp.log" || true)
echo "after $((runs + 1)) runs: buckets=$buckets registered-volumes=$volumes databases-in-use=$dbs mounts=$mounts leaked-holders=$leaked_holders reaped=$reaped"
if [[ "$buckets$volumes$dbs$mounts$leaked_holders$reaped" != 000000 ]]; then
  echo "FAIL: csi-sanity runs left state behind" >&2
  leaks=1
fi
if ((failed || leaks)); then
  echo "csi-sanity: 0 passed, 1 failed"
  exit 1
fi
echo "csi-sanity: $((runs + 1)) passed, 0 failed"
