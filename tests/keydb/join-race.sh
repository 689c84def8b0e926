#!/usr/bin/env bash
# The facts behind the join in deploy/swarm/kelp-keydb.sh (docs/notes.md, "A KeyDB
# 6.3.4 master restarted after a crash"): three keydb-server multi-master peers on
# loopback; clients write to every master without pause (INCR, HSET, and each key
# of a series set twice, "old" then "new", and never again); master 1
# is killed with SIGKILL and comes back empty while masters 2 and 3 go on, then the
# writers stop and the masters are compared.
#   tests/keydb/join-race.sh plain   # empty, replicaof both peers, port open at once
#   tests/keydb/join-race.sh join    # through deploy/swarm/kelp-keydb.sh (quiesce)
# Each replication link goes through tests/swarm/delay_proxy.py (DELAY_MS each way,
# default 10, as in the multi-node bed): the race needs replication lag. Prints each
# master's digest and values; equal digests and every writer's last acknowledged INCR
# present on every master are right.
set -uo pipefail
mode=${1:?plain or join}
here=$(cd "$(dirname "$0")/../.." && pwd)
source "$here/scripts/env.sh"
base=$(mktemp -d)
pids=() writers=() proxies=()
cleanup() { # writers, then the servers (children of the scripts in join mode), then the scripts
  for p in "${writers[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do pkill -9 -P "$p" keydb-server 2>/dev/null || true; kill -9 "$p" 2>/dev/null || true; done
  for p in "${proxies[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$base"
}
trap cleanup EXIT
cli() { local i=$1; shift; keydb-cli -p "1740$i" "$@"; }
start() { # i
  local i=$1 peers=() args=(--bind 127.0.0.1 --appendonly yes --appendfsync always --databases 16 --save ""
    --repl-diskless-sync-delay 0 --logfile "$base/log$i")
  for j in 1 2 3; do [[ $j == "$i" ]] || peers+=("127.0.0.1:175$i$j"); done
  if [[ $mode == join ]]; then
    KEYDB_DIR=$base/d$i KEYDB_PORT=1740$i KEYDB_PEERS="${peers[*]}" NODE=127.0.0.1:1740$i \
      sh "$here/deploy/swarm/kelp-keydb.sh" "${args[@]}" >"$base/script$i" 2>&1 &
  else
    mkdir -p "$base/d$i"
    local r=()
    for p in "${peers[@]}"; do r+=(--replicaof "${p%:*}" "${p#*:}"); done
    keydb-server "${args[@]}" --port "1740$i" --dir "$base/d$i" --active-replica yes --multi-master yes "${r[@]}" &
  fi
  pids[i]=$!
}
server_pid() { [[ $mode == join ]] && pgrep -P "${pids[1]}" keydb-server || echo "${pids[1]}"; }
write() { # master, key suffix: INCR, HSET and SET as fast as one connection goes
  keydb-cli -p "1740$1" <"$base/cmd$2" >"$base/out$2" 2>&1 &
  writers+=($!)
}
for w in 1 2 3; do
  for n in $(seq 100000); do echo "incr c$w"; echo "hset h$w f$n $n"; echo "set k$w:$n old"; echo "set k$w:$n new"; done >"$base/cmd$w"
done
sed 's/c1$/c1b/; s/ h1 / h1b /; s/ k1:/ k1b:/' "$base/cmd1" >"$base/cmd1b"
for i in 1 2 3; do # master i reaches master j at 175ij
  for j in 1 2 3; do
    [[ $i == "$j" ]] && continue
    python3 "$here/tests/swarm/delay_proxy.py" 127.0.0.1 "175$i$j" 127.0.0.1 "1740$j" "${DELAY_MS:-10}" &
    proxies+=($!)
  done
done
sleep 0.5
for i in 1 2 3; do start "$i"; done
linked() { for i in 1 2 3; do cli "$i" info replication 2>/dev/null | grep -q 'master_global_link_status:up' || return 1; done; }
until linked; do sleep 0.2; done
for w in 1 2 3; do write "$w" "$w"; done
sleep 2
kill -9 "$(server_pid)"
wait "${pids[1]}" 2>/dev/null
killed_at=$(date +%s.%N)
[[ $mode == join ]] || rm -rf "$base/d1" # plain: back empty, as the join is
start 1
until cli 1 ping >/dev/null 2>&1; do sleep 0.05; done
echo "master 1 serves again $(echo "$(date +%s.%N) - $killed_at" | bc) s after the kill"
write 1 1b
sleep 2
for p in "${writers[@]}"; do kill "$p" 2>/dev/null; done
writers=()
sleep 3
[[ $mode == join ]] && grep kelp-keydb "$base/script1"
for w in 2 3; do
  echo "writer on master $w: last acknowledged INCR $(grep -E '^[0-9]+$' "$base/out$w" | sort -n | tail -1)," \
    "$(grep -c READONLY "$base/out$w") writes refused (READONLY)"
done
olds="local n=0 for _,k in ipairs(redis.call('keys','k*')) do if redis.call('get',k)=='old' then n=n+1 end end return n"
for i in 1 2 3; do
  echo "master $i: digest $(cli "$i" debug digest); c2 $(cli "$i" get c2), c3 $(cli "$i" get c3)," \
    "hlen h2 $(cli "$i" hlen h2), h3 $(cli "$i" hlen h3); keys holding \"old\" (overwritten by \"new\" before the kill or after): $(cli "$i" eval "$olds" 0)"
done
