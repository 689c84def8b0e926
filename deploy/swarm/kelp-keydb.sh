#!/bin/sh
# Runs one KeyDB multi-master peer for kelp: the one place that decides how a master
# starts and stops, used by deploy/swarm/keydb.yml and by the multi-node test bed.
#
#   kelp-keydb.sh [CONFIG-FILE] [keydb-server options...]
#
# Environment: KEYDB_DIR (data directory), KEYDB_PORT (default 6379), KEYDB_PEERS
# (every master, "host" or "host:port" each, space-separated; the one named NODE is
# this one and skipped), NODE (this node's host name and kelp node id),
# KEYDB_RELEASE_WAIT (seconds, default 90), KEYDB_JOIN_MAX (seconds a join may keep
# its peers quiesced waiting for their copies, default 60), KEYDB_JOIN_REPL_TIMEOUT
# (the masters' repl-timeout while a join lasts, default 15), REDISCLI_AUTH (the
# password, if any; also in CONFIG-FILE as requirepass/masterauth). Needs sh, grep,
# sed, tr, sleep, seq, date, timeout, keydb-server and keydb-cli.
#
# The rule (docs/pinning.md, "When a master crashes"): a master serves its own files
# only if it stopped cleanly or no peer is up. Otherwise (a crash, a clean stop while
# its peers went on, or a new empty data directory) it joins: its files are moved
# aside, never deleted, and it starts empty with no TCP port (a private unix socket
# only). Why: KeyDB keeps the writes it received from peers in its append-only file
# as RREPLAY commands and refuses every one of them when it reloads the file after a
# crash ("Command must be sent from a master"), so a master restarted from its own
# files holds its snapshot plus its own writes only, and its stale keys (a
# directory's entry list, the inode counter) would overwrite newer ones on every
# master (docs/notes.md).
#
# The join itself must not merge anything either. A KeyDB full sync merges the copy
# key by key, keeping the side with the larger timestamp, and a key's timestamp is
# the time the master holding it applied it, not the time it was written: a copy
# taken from a peer that applied a write a few milliseconds after its writer wrote
# the next one wins over that next one. So while a master joins, every master that
# answers is quiesced: `replica-read-only yes` refuses its clients' writes with
# READONLY, which juicefs and kelp retry with backoff, while replication still
# flows. Once every stream is drained the masters hold the same data; the joiner
# takes its copies, opens its port, its peers take theirs from it (equal data, so
# the merges change nothing), the masters' digests are compared, and the quiesce is
# lifted. A quiesce is held by a named connection to each peer
# (kelp-quiesce-<node>); every master's watchdog lifts one whose holder is gone, so
# a joiner that dies never leaves the cluster read-only. (CLIENT PAUSE WRITE would
# stall writers instead of refusing them, but KeyDB 6.3.4 aborts when a peer's
# replicated write reaches a paused master.)
set -u
dir=${KEYDB_DIR:?set KEYDB_DIR}
port=${KEYDB_PORT:-6379}
release_wait=${KEYDB_RELEASE_WAIT:-90}
sock=$dir/kelp-rejoin.sock
me=${NODE:-$$}
# Every call is bounded: KeyDB 6.3.4 sometimes never serves a new connection
# ("epoll_ctl failed" on its standard error), and a join must never hang while its
# peers refuse writes.
cli() { timeout 10 keydb-cli -p "$port" "$@"; }
scli() { timeout 10 keydb-cli -s "$sock" "$@"; }
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
  timeout 10 keydb-cli -h "${p%:*}" -p "${p##*:}" "$@"
}
# INFO of a peer (or of this server through its socket: "self"), without CRs.
info_of() {
  if [ "$1" = self ]; then scli info 2>/dev/null | tr -d '\r'; else peer_cli "$1" info 2>/dev/null | tr -d '\r'; fi
}
# A peer that serves: it answers on its port (a joining master does not), has
# loaded its data and takes no full copy itself.
serving() {
  info=$(info_of "$1")
  echo "$info" | grep -q '^loading:0' && ! echo "$info" | grep -q '^master[_0-9]*_sync_in_progress:1'
}
# ... and holds some data (a master with files of its own joins only from such a one).
whole() { serving "$1" && echo "$info" | grep -q '^db[0-9]*:keys='; }
# Links of a server (peer or "self") that are up, with no full copy in progress.
links_up() {
  info=$(info_of "$1")
  echo "$info" | grep -q '^loading:0' || { echo 0; return; }
  if echo "$info" | grep -q '^master[_0-9]*_sync_in_progress:1'; then echo 0; return; fi
  echo "$info" | grep -cE '^master(_[0-9]+)?_link_status:up'
}
# Whether everything a peer has sent is acknowledged by each of its replicas.
drained() {
  info=$(info_of "$1")
  sent=$(echo "$info" | sed -n 's/^master_repl_offset://p')
  [ -n "$sent" ] || return 1
  for o in $(echo "$info" | sed -n 's/^slave[0-9]*:.*offset=\([0-9]*\).*/\1/p'); do
    [ "$o" = "$sent" ] || return 1
  done
}
# Waits up to $1 seconds (tenths) for a condition; false if it never held.
within() {
  n=$(($1 * 5))
  shift
  while ! "$@"; do
    n=$((n - 1))
    [ $n -gt 0 ] || return 1
    sleep 0.2
  done
}

# The quiesce. Held by a connection named kelp-quiesce-<node> that lives as long as
# this script; lifted only when no other joiner holds one.
#
# While it lasts, every quiesced master (the joiner too) runs with repl-timeout
# $join_repl_timeout. KeyDB starts one link's handshake at a time and gives up on a
# handshake only after repl-timeout (default 60 s); a handshake a master leaves
# unserved ("epoll_ctl failed", docs/notes.md) therefore held every copy of a join
# past KEYDB_JOIN_MAX. Above the 10 s between a master's pings, so a quiet link is
# not dropped. Each master gets its own value back when the quiesce is lifted.
join_repl_timeout=${KEYDB_JOIN_REPL_TIMEOUT:-15}
quiesced=
holders=
timeouts=
quiesce() { # peer, or "self"
  if [ "$1" = self ]; then c="scli"; h="-s $sock"; else c="peer_cli $1"; h="-h ${1%:*} -p ${1##*:}"; fi
  (echo "client setname kelp-quiesce-$me"; while kill -0 $$ 2>/dev/null && [ ! -f "$dir/kelp-quiesce-done" ]; do sleep 1; echo ping; done) | keydb-cli $h >/dev/null 2>&1 &
  holders="$holders $!"
  if $c config set replica-read-only yes >/dev/null 2>&1; then
    quiesced="$quiesced $1"
  else
    say "WARNING: could not quiesce $1 (CONFIG SET refused?): its clients' writes go on during the join"
  fi
  was=$($c config get repl-timeout 2>/dev/null | tr -d '\r' | sed -n 2p)
  if [ -n "$was" ] && $c config set repl-timeout "$join_repl_timeout" >/dev/null 2>&1; then
    timeouts="$timeouts $1=$was"
  fi
}
# The names of the quiesce holders in a CLIENT LIST on standard input that spoke
# within the last 10 s (a holder pings every second). KeyDB 6.3.4 may stop serving a
# connection and keep it listed after its client is gone: seen in the multi-node
# bed as a peer's holder on descriptor 0, idle for minutes, which kept that master
# quiesced for good (docs/notes.md). Such a holder counts as gone.
live_holders() {
  tr -d '\r' | sed -n 's/.* name=\(kelp-quiesce-[^ ]*\) .* idle=\([0-9]*\) .*/\1 \2/p' | while read -r name idle; do
    [ "$idle" -gt 10 ] || echo "$name"
  done
}
others_hold() { # peer or "self": another joiner's quiesce connection is there
  if [ "$1" = self ]; then c="scli"; else c="peer_cli $1"; fi
  $c client list 2>/dev/null | live_holders | grep -vqx "kelp-quiesce-$me"
}
mine_gone() { # peer or "self": this joiner's quiesce connection is closed
  if [ "$1" = self ]; then c="scli"; else c="peer_cli $1"; fi
  ! $c client list 2>/dev/null | grep -q "name=kelp-quiesce-$me "
}
# Each joiner closes its own hold first and only then looks for others': of two
# joiners lifting at once, the one that looks last sees neither and lifts.
lift() {
  touch "$dir/kelp-quiesce-done"
  for h in $holders; do kill "$h" 2>/dev/null; done
  holders=
  for q in $quiesced; do
    within 5 mine_gone "$q"
    if others_hold "$q"; then continue; fi
    if [ "$q" = self ]; then scli config set replica-read-only no >/dev/null 2>&1; else peer_cli "$q" config set replica-read-only no >/dev/null 2>&1; fi
  done
  for t in $timeouts; do
    if [ "${t%=*}" = self ]; then c="scli"; else c="peer_cli ${t%=*}"; fi
    $c config set repl-timeout "${t##*=}" >/dev/null 2>&1
  done
  quiesced=
  timeouts=
}
# Every master: a quiesce whose holder is gone (its joiner died) is lifted.
watchdog() {
  left=0
  while kill -0 "$1" 2>/dev/null; do
    sleep 2
    ro=$(cli config get replica-read-only 2>/dev/null | sed -n 2p)
    if [ "$ro" = yes ] && ! cli client list 2>/dev/null | live_holders | grep -q .; then
      left=$((left + 1))
      if [ $left -ge 2 ]; then
        cli config set replica-read-only no >/dev/null 2>&1 && say "lifted a quiesce its joiner left behind"
        left=0
      fi
    else
      left=0
    fi
  done
}

mkdir -p "$dir"
clean=
[ -f "$dir/kelp-clean-stop" ] && clean=1
files=$(ls "$dir"/*.aof "$dir"/*.rdb 2>/dev/null)
join=
live=
for p in $peers; do
  if [ -n "$files" ]; then whole "$p" && live="$live $p"; else serving "$p" && live="$live $p"; fi
done
if [ -n "$live" ]; then
  join=1
  if [ -n "$files" ]; then
    aside=$dir/previous-$(date -u +%Y%m%dT%H%M%SZ)
    mkdir -p "$aside"
    mv $files "$aside"/
    if [ -n "$clean" ]; then
      say "stopped cleanly but peers are up: joining empty; the old files are in $aside"
    else
      say "did not stop cleanly: joining empty from the peers; this master's files are in $aside"
    fi
  fi
elif [ -n "$files" ] && [ -z "$clean" ]; then
  say "WARNING: did not stop cleanly and no peer is up: serving this master's own files, which lack the peers' writes since its last rewrite (docs/pinning.md)"
fi
rm -f "$dir/kelp-clean-stop" "$dir/kelp-quiesce-done" "$sock"

set -- "$@" --dir "$dir" --active-replica yes --multi-master yes
# A master that joined and was stopped before it had every copy must not call its
# files clean: they are not whole.
whole_now=
[ -n "$join" ] || whole_now=1
# The server's standard input is /dev/null, never closed: a task's may be closed,
# and a KeyDB that hands descriptor 0 to a client never serves it ("epoll_ctl
# failed", docs/notes.md).
if [ -n "$join" ]; then
  t0=$(date +%s)
  # 1. Quiesce every master that serves, and wait until each has passed on
  #    everything it has: then they all hold the same data.
  live=
  for p in $peers; do serving "$p" && live="$live $p"; done
  for p in $live; do quiesce "$p"; done
  for p in $live; do
    within 10 drained "$p" || say "WARNING: peer $p did not drain within 10 s (a link between peers is down?); joining anyway"
  done
  # 2. Only then start, linked to every peer but reachable by none (a private unix
  #    socket), and take a copy from each (equal copies: the merge changes nothing).
  #    The links are given at start: made at run time (REPLICAOF), a link was twice
  #    left unserved in the multi-node bed ("epoll_ctl failed").
  for p in $peers; do set -- "$@" --replicaof "${p%:*}" "${p##*:}"; done
  keydb-server "$@" --port 0 --unixsocket "$sock" --unixsocketperm 700 </dev/null &
else
  for p in $peers; do set -- "$@" --replicaof "${p%:*}" "${p##*:}"; done
  keydb-server "$@" --port "$port" </dev/null &
fi
pid=$!
stopping=
trap 'stopping=1' TERM INT
alive() { kill -0 $pid 2>/dev/null && [ -z "$stopping" ]; }

if [ -n "$join" ]; then
  sock_up() { scli ping >/dev/null 2>&1; }
  within 30 sock_up
  quiesce self
  nlive=0
  for p in $live; do nlive=$((nlive + 1)); done
  copied() { [ "$(links_up self)" -ge $nlive ]; }
  # The peers refuse writes meanwhile: bounded. A join that cannot finish in time
  # lifts the quiesce and ends, to be started again (Swarm restarts the task).
  deadline=$(($(date +%s) + ${KEYDB_JOIN_MAX:-60}))
  while alive && ! copied; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      say "ERROR: the copies did not arrive within ${KEYDB_JOIN_MAX:-60} s (KEYDB_JOIN_MAX): lifting the quiesce and stopping; the next start joins again"
      lift
      kill -9 $pid
      exit 1
    fi
    sleep 0.2
  done
  # 3. Open the port: each peer takes its copy from this one (equal again).
  if alive; then
    scli config set port "$port" >/dev/null
    linked() {
      for p in $live; do [ "$(links_up "$p")" -ge $nlive ] || return 1; done
    }
    within 30 linked || say "WARNING: not every peer linked back within 30 s; lifting the quiesce anyway"
    # 4. Compare: with every master quiesced and drained, the digests must be equal.
    for p in $live self; do within 10 drained "$p" >/dev/null || true; done
    mine=$(scli debug digest 2>/dev/null)
    for p in $live; do
      theirs=$(peer_cli "$p" debug digest 2>/dev/null)
      if [ "$theirs" != "$mine" ]; then
        say "ERROR: after joining, this master's data differs from peer $p's (digest $mine, theirs $theirs): do not hand volumes over (docs/pinning.md)"
      fi
    done
  fi
  lift
  alive && whole_now=1
  alive && say "joined: copies from$live taken and taken back, digests compared; serving on port $port after $(($(date +%s) - t0)) s of quiesce"
fi
watchdog $pid &

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
[ -n "$whole_now" ] || done_ok=0
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
