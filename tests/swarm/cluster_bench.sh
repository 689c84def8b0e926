# Sourced by tests/swarm/cluster.sh when KELP_CLUSTER_BENCH=ROUNDS: small-file
# metadata work in a task on node 2, once on a volume pinned to node 2's own master
# and once on a volume whose metadata goes to node 1's master through the 10 ms
# (one-way) delay proxy, in alternating order; prints medians and their ratio. A
# benchmark, not a test: nothing here passes or fails on speed.

files=${KELP_CLUSTER_BENCH_FILES:-100}
echo "== benchmark: $files creates with data, $files empty creates, then $files stats, in a task on node 2, $bench rounds"
create_volume b-local --scope single --sharing none
create_volume b-remote --scope multi --sharing all
for v in local remote; do
  dk 1 service create -d -q --no-resolve-image --name "b-$v" --constraint node.hostname==kelp-n2 \
    --mount "type=cluster,src=b-$v,dst=/data" "$app" sh -c 'sleep 3600' >/dev/null
  check_running "b-$v" 1 "the task on b-$v runs on node 2"
done
check "b-local mounts against node 2's own master" retry 20 mounted_with 2 b-local local
check "b-remote mounts through node 1's master, 10 ms away" retry 20 mounted_with 2 b-remote home

# Seconds of busybox time's "real" lines: "real<TAB>0m 1.23s".
real_seconds() { awk '$1 == "real" {sub("m", "", $2); sub("s", "", $3); print $2 * 60 + $3}'; }
# One round on one volume: prints "CREATE_SECONDS STAT_SECONDS". The stats wait
# 2 s, past juicefs's 1 s attribute and entry caches, so each file is looked up.
round() { # volume round
  dk 2 exec "$(task_container 2 "b-$1")" sh -c "mkdir /data/r$2 && cd /data/r$2 &&
    time sh -c 'i=0; while [ \$i -lt $files ]; do echo x > f\$i; i=\$((i+1)); done' &&
    time sh -c 'i=0; while [ \$i -lt $files ]; do touch e\$i; i=\$((i+1)); done' && sleep 2 &&
    time sh -c 'i=0; while [ \$i -lt $files ]; do ls -l f\$i >/dev/null; i=\$((i+1)); done'" 2>&1 |
    real_seconds | tr '\n' ' '
}
declare -A create empty ls_l
for ((r = 1; r <= bench; r++)); do
  order=(local remote)
  ((r % 2 == 0)) && order=(remote local)
  for v in "${order[@]}"; do
    read -r c e l < <(round "$v" "$r")
    create[$v]+="$c "
    empty[$v]+="$e "
    ls_l[$v]+="$l "
    echo "round $r, $v master: $files creates ${c} s, $files empty creates ${e} s, $files stats ${l} s"
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
row() { # workload, local seconds list, remote seconds list
  local lo re
  lo=$(median <<<"$2")
  re=$(median <<<"$3")
  awk -v w="$1" -v n="$files" -v lo="$lo" -v re="$re" \
    'BEGIN {if (lo < 0.01) lo = 0.01; printf "| %s | %.0f | %.1f | %.1fx |\n", w, n / lo, n / re, re / lo}'
}
echo
echo "| workload (task on node 2, $files files, median of $bench) | local master ops/s | remote master (10 ms one way) ops/s | local / remote |"
echo "|---|---:|---:|---:|"
row "create with data (echo x > f)" "${create[local]}" "${create[remote]}"
row "create, empty (touch e)" "${empty[local]}" "${empty[remote]}"
row "stat, one file at a time (ls -l f; caches expired)" "${ls_l[local]}" "${ls_l[remote]}"
dk 1 service rm b-local b-remote >/dev/null
for v in b-local b-remote; do
  check "volume rm $v" retry 120 dk 1 volume rm "$v"
done
echo "cluster bench: $passed passed, $failed failed"
