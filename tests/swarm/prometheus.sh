# A real Prometheus for kelp's Swarm tests: Debian's prometheus and promtool with
# deploy/grafana's configuration, alert rules and dashboard. Source it after
# engine.sh (its check counters). Sets PROM_PID, PROM_URL.

PROM_SHIPPED=deploy/grafana

quiet() { # command...: its output only when it fails
  local out
  out=$("$@" 2>&1) || {
    echo "$out"
    return 1
  }
}

# promtool on the shipped files: the configuration, the rules and their unit tests.
prom_file_checks() {
  check "promtool check config $PROM_SHIPPED/prometheus.yml" quiet promtool check config "$PROM_SHIPPED/prometheus.yml"
  check "promtool check rules $PROM_SHIPPED/kelp-alerts.yml" quiet promtool check rules "$PROM_SHIPPED/kelp-alerts.yml"
  check "promtool test rules $PROM_SHIPPED/kelp-alerts.test.yml" quiet sh -c "cd $PROM_SHIPPED && promtool test rules kelp-alerts.test.yml"
}

# prom_config OUT DOCKER_SOCKET METRICS_PORT: the shipped prometheus.yml pointed at
# this test's engine and the plugin's metrics port, scraping every 2 s (rates need
# two samples), with the shipped alert rules. Its Swarm discovery and relabelling are
# the shipped ones, line for line; fails if any substitution found nothing to change.
prom_config() {
  local src=$PROM_SHIPPED/prometheus.yml out=$1
  sed -e "s|unix:///var/run/docker.sock|unix://$2|" \
    -e "s|replacement: \$1:9469$|replacement: \$1:$3|" \
    -e "s|^  scrape_interval: 30s$|  scrape_interval: 2s\n  evaluation_interval: 2s|" "$src" >"$out"
  printf 'rule_files: ["%s"]\n' "$(pwd)/$PROM_SHIPPED/kelp-alerts.yml" >>"$out"
  # Five changed lines, four where the plugin keeps the shipped port.
  [[ $(diff "$src" "$out" | grep -c '^>') == $((${3} == 9469 ? 4 : 5)) ]]
}

# prom_start DIR DOCKER_SOCKET METRICS_PORT: prometheus on a free loopback port, its
# data and log in DIR.
prom_start() {
  local dir=$1 port
  mkdir -p "$dir/data"
  check "prometheus.yml derived for this engine" prom_config "$dir/prometheus.yml" "$2" "$3" || return 1
  check "promtool check config (derived)" quiet promtool check config "$dir/prometheus.yml" || return 1
  port=$(free_port)
  prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$port" >"$dir/prometheus.log" 2>&1 &
  PROM_PID=$!
  PROM_URL="http://127.0.0.1:$port"
  check "prometheus $(prometheus --version 2>&1 | awk 'NR == 1 {print $3}') ready" \
    retry 30 curl -fsS "$PROM_URL/-/ready"
}

prom_stop() {
  [[ -n ${PROM_PID:-} ]] || return 0
  kill "$PROM_PID" 2>/dev/null && wait "$PROM_PID" 2>/dev/null
  PROM_PID=
}

# prom_count COMMAND...: counts each PASS or FAIL line COMMAND prints as a check.
prom_count() {
  local line
  while IFS= read -r line; do
    case $line in
    PASS\ *) ok "${line#PASS }" ;;
    FAIL\ *) bad "${line#FAIL }" ;;
    *) echo "     $line" ;;
    esac
  done < <("$@" 2>&1)
}

# prom_checks JOB: every target of JOB up, the rules loaded, the dashboard's
# expressions answered.
prom_checks() {
  check "every $1 target up (/api/v1/targets)" retry 60 tests/swarm/prometheus.py targets "$PROM_URL" "$1"
  tests/swarm/prometheus.py targets "$PROM_URL" "$1"
  # A rule's health is "unknown" until its first evaluation.
  local n
  n=$(grep -c '^ *- alert:' "$PROM_SHIPPED/kelp-alerts.yml")
  check "all $n rules of kelp-alerts.yml loaded and healthy (/api/v1/rules)" \
    retry 30 tests/swarm/prometheus.py rules "$PROM_URL" "$n"
  prom_count tests/swarm/prometheus.py rules "$PROM_URL" "$n"
  prom_count tests/swarm/prometheus.py dashboard "$PROM_URL" "$PROM_SHIPPED/kelp-dashboard.json" 60
}
