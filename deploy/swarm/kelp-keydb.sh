#!/bin/sh
# Runs one KeyDB multi-master peer for kelp: the one place that decides how a master
# starts and stops, used by deploy/swarm/keydb.yml and by the multi-node test bed.
#
#   kelp-keydb.sh [CONFIG-FILE] [keydb-server options...]
#
# Environment: KEYDB_DIR (data directory), KEYDB_PORT (default 6379), KEYDB_PEERS
# (every master, "host" or "host:port" each, space-separated; the one named NODE is
# this one and skipped), NODE (this node's host name and kelp node id), KEYDB_RELEASE_WAIT (seconds, default 90),
# REDISCLI_AUTH (the password, if any; also in CONFIG-FILE as requirepass/masterauth).
#
# The rule (docs/pinning.md, "When a master crashes"): a master serves its own files only if it stopped
# cleanly or no peer is up. Otherwise (a crash, or a clean stop while its peers went
# on) its files are moved aside, never deleted, and it rejoins: it starts empty with
# no TCP port (a private unix socket only), takes a full copy from every peer that
# answers, and opens its real port only when every link to those peers is up and no
# copy is in progress. Why: KeyDB keeps the writes it received from peers in its
# append-only file as RREPLAY commands and refuses every one of them when it reloads
# the file after a crash ("Command must be sent from a master"), so a master
# restarted from its own files holds its snapshot plus its own writes only; the
# peers then merge that key by key, and its stale keys (a directory's entry list,
# the inode counter) overwrite newer ones on every master (docs/notes.md). A master
# that nobody can reach cannot be mounted against or replicate anything stale.
set -u
dir=${KEYDB_DIR:?set KEYDB_DIR}
port=${KEYDB_PORT:-6379}
release_wait=${KEYDB_RELEASE_WAIT:-90}
sock=$dir/kelp-rejoin.sock
cli() { keydb-cli -p "$port" "$@"; }
say() { echo "kelp-keydb: $*"; }

# The previous server may still be stopping (host network: it holds the port).
while cli ping >/dev/null 2>&1; do
  [ -n "${said:-}" ] || say "waiting for the previous KeyDB on this node to stop"
  said=1
  sleep 1
done

# host:port of every peer.
peers=
for p in ${KEYDB_PEERS:-}; do
  [ "$p" != "${NODE:-}" ] || continue
  case $p in *:*) ;; *) p=$p:6379 ;; esac
  peers="$peers $p"
done
peer_cli() {
  p=$1
  shift
  keydb-cli -h "${p%:*}" -p "${p##*:}" "$@"
}
# A peer to copy from: it answers on its port (a rejoining master does not), has
# loaded its data, takes no full copy itself, and holds some data.
whole() {
  info=$(peer_cli "$1" info 2>/dev/null | tr -d '\r')
  echo "$info" | grep -q '^loading:0' && ! echo "$info" | grep -q '^master[_0-9]*_sync_in_progress:1' &&
    echo "$info" | grep -q '^db[0-9]*:keys='
}

mkdir -p "$dir"
clean=
[ -f "$dir/kelp-clean-stop" ] && clean=1
files=$(ls "$dir"/*.aof "$dir"/*.rdb 2>/dev/null)
rejoin=
if [ -n "$files" ]; then
  for p in $peers; do
    if whole "$p"; then rejoin=$p; break; fi
  done
  if [ -n "$rejoin" ]; then
    aside=$dir/previous-$(date -u +%Y%m%dT%H%M%SZ)
    mkdir -p "$aside"
    mv $files "$aside"/
    if [ -n "$clean" ]; then
      say "stopped cleanly but peer $rejoin is up: rejoining empty; the old files are in $aside"
    else
      say "did not stop cleanly: rejoining empty from the peers; this master's files are in $aside"
    fi
  elif [ -z "$clean" ]; then
    say "WARNING: did not stop cleanly and no peer is up: serving this master's own files, which lack the peers' writes since its last rewrite (docs/pinning.md)"
  fi
fi
rm -f "$dir/kelp-clean-stop" "$sock"

set -- "$@" --dir "$dir" --active-replica yes --multi-master yes
for p in $peers; do set -- "$@" --replicaof "${p%:*}" "${p##*:}"; done
if [ -n "$rejoin" ]; then
  keydb-server "$@" --port 0 --unixsocket "$sock" --unixsocketperm 700 &
else
  keydb-server "$@" --port "$port" &
fi
pid=$!
stopping=
trap 'stopping=1' TERM INT

if [ -n "$rejoin" ]; then
  # Every peer that answers must have a link up with its full copy loaded.
  synced() {
    info=$(keydb-cli -s "$sock" info 2>/dev/null | tr -d '\r') || return 1
    echo "$info" | grep -q '^loading:0' || return 1
    echo "$info" | grep -q '^master[_0-9]*_sync_in_progress:1' && return 1
    up=$(echo "$info" | grep -cE '^master(_[0-9]+)?_link_status:up')
    want=0
    for p in $peers; do peer_cli "$p" ping >/dev/null 2>&1 && want=$((want + 1)); done
    [ "$want" -gt 0 ] && [ "$up" -ge "$want" ]
  }
  while ! synced; do
    kill -0 $pid 2>/dev/null || break
    [ -z "$stopping" ] || break
    sleep 0.2
  done
  if [ -z "$stopping" ] && kill -0 $pid 2>/dev/null; then
    keydb-cli -s "$sock" config set port "$port" >/dev/null && say "rejoined: every peer's copy is in; serving on port $port"
  fi
fi

# `wait` returns early when a trapped signal arrives; wait again for the server.
while :; do
  wait $pid
  rc=$?
  [ -z "$stopping" ] || break
  kill -0 $pid 2>/dev/null || exit $rc
done

# Stopping. kelp's volumes on this node still need their master to let go (unmount,
# then leave the fence the next writer waits for): keep the server up until the
# node's kelp reports no volume mounted against it, at most KEYDB_RELEASE_WAIT
# seconds, then until every peer has acknowledged everything it was sent (10 s).
i=0
while [ $i -lt "$release_wait" ] && [ -n "${NODE:-}" ]; do
  n=$(cli get "kelp:node:$NODE:local-mounts" 2>/dev/null)
  [ "${n:-0}" -gt 0 ] 2>/dev/null || break
  [ $i -gt 0 ] || say "stopping: waiting for kelp to release $n volume(s) mounted against this master"
  sleep 1
  i=$((i + 1))
done
done_ok=0
npeers=0
for p in $peers; do npeers=$((npeers + 1)); done
sent=$(cli info replication 2>/dev/null | tr -d '\r' | sed -n 's/^master_repl_offset://p')
if [ $i -lt "$release_wait" ] && [ -n "$sent" ]; then
  for j in 1 2 3 4 5 6 7 8 9 10; do
    acked=0
    for o in $(cli info replication | tr -d '\r' | sed -n 's/^slave[0-9]*:.*offset=\([0-9]*\).*/\1/p'); do
      [ "$o" -lt "$sent" ] || acked=$((acked + 1))
    done
    if [ $acked -ge $npeers ]; then done_ok=1; break; fi
    sleep 1
  done
fi
# The append-only file holds the peers' writes as RREPLAY commands, which KeyDB
# refuses when it reloads the file; a rewrite writes the whole data set as plain
# data, so a master that is the first up after the whole cluster stopped has it all.
if [ $done_ok = 1 ]; then
  done_ok=0
  cli bgrewriteaof >/dev/null 2>&1
  for j in $(seq 1 60); do
    sleep 1
    pers=$(cli info persistence | tr -d '\r')
    echo "$pers" | grep -qE '^aof_rewrite_(in_progress|scheduled):1' && continue
    echo "$pers" | grep -q '^aof_last_bgrewrite_status:ok' && done_ok=1
    break
  done
fi
kill -TERM $pid
wait $pid && [ $done_ok = 1 ] && touch "$dir/kelp-clean-stop" && say "stopped cleanly: every peer has all this master sent"
