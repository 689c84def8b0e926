#!/usr/bin/env bash
# The facts behind deploy/swarm/kelp-keydb.sh (docs/notes.md, "A KeyDB 6.3.4 master
# restarted after a crash"): three keydb-server multi-master peers on loopback, peer
# 2 fills hash `dir` with 300 fields, master 1 adds fields and INCRs `counter` as
# fast as it can and is killed with SIGKILL mid-stream, then started again:
#   tests/keydb/crash-merge.sh own      # from its own files, as KeyDB does
#   tests/keydb/crash-merge.sh rejoin   # through deploy/swarm/kelp-keydb.sh
# Prints, per master, how many of peer 2's fields survived (300 is right).
set -euo pipefail
mode=${1:?own or rejoin}
here=$(cd "$(dirname "$0")/../.." && pwd)
source "$here/scripts/env.sh"
base=$(mktemp -d)
pids=()
cleanup() { # the servers (children of the scripts in rejoin mode) first, then the scripts
  for p in "${pids[@]}"; do pkill -9 -P "$p" keydb-server 2>/dev/null || true; kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$base"
}
trap cleanup EXIT
cli() { local i=$1; shift; keydb-cli -p "1720$i" "$@"; }
start() { # i: master i, through the script or plainly
  local i=$1 peers=() args=(--bind 127.0.0.1 --appendonly yes --appendfsync always --databases 16 --save ""
    --repl-diskless-sync-delay 0 --logfile "$base/log$i")
  for j in 1 2 3; do [[ $j == "$i" ]] || peers+=("127.0.0.1:1720$j"); done
  if [[ $mode == rejoin ]]; then
    KEYDB_DIR=$base/d$i KEYDB_PORT=1720$i KEYDB_PEERS="${peers[*]}" sh "$here/deploy/swarm/kelp-keydb.sh" "${args[@]}" &
  else
    mkdir -p "$base/d$i"
    local r=(); for p in "${peers[@]}"; do r+=(--replicaof "${p%:*}" "${p#*:}"); done
    keydb-server "${args[@]}" --port "1720$i" --dir "$base/d$i" --active-replica yes --multi-master yes "${r[@]}" &
  fi
  pids[i]=$!
}
server_pid() { [[ $mode == rejoin ]] && pgrep -P "${pids[1]}" keydb-server || echo "${pids[1]}"; }
for i in 1 2 3; do start "$i"; done
linked() { for i in 1 2 3; do cli "$i" info replication 2>/dev/null | grep -q 'master_global_link_status:up' || return 1; done; }
until linked; do sleep 0.2; done
for n in $(seq 300); do echo "hset dir b$n $n"; done | cli 2 >/dev/null
sleep 0.5
(for n in $(seq 3000); do echo "hset dir a$n $n"; echo "incr counter"; done | cli 1 >/dev/null 2>&1 || true) &
sleep 0.5
kill -9 "$(server_pid)"
wait "${pids[1]}" 2>/dev/null || true
start 1
until cli 1 ping >/dev/null 2>&1; do sleep 0.1; done
sleep 3
echo "refusals in master 1's log: $(grep -c 'must be sent from a master' "$base/log1" || true)"
for i in 1 2 3; do
  echo "master $i: $(cli "$i" hkeys dir | grep -c '^b' || true) of peer 2's 300 fields, counter $(cli "$i" get counter)"
done
