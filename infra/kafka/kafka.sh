#!/usr/bin/env bash
# Starts, stops and reports on a KRaft node run straight from the jars that Maven fetched into
# .cache/kafka/libs: by default the single-node development broker; infra/cluster.sh runs it once per
# node of a three-node cluster (KAFKA_NODE_ID, KAFKA_VOTERS, KAFKA_CLUSTER_ID, KAFKA_REPLICATION).
# Idempotent: `up` on a running broker only says so.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache="${GEODISPATCH_CACHE:-$root/.cache}"
libs="$cache/kafka/libs"
data_dir="${KAFKA_DATA_DIR:-$cache/kafka/run}"
port="${KAFKA_PORT:-9092}"
controller_port="${KAFKA_CONTROLLER_PORT:-9093}"
node_id="${KAFKA_NODE_ID:-1}"
voters="${KAFKA_VOTERS:-1@127.0.0.1:$controller_port}"
replication="${KAFKA_REPLICATION:-1}"
# A write is acknowledged once this many replicas have it: a majority of three, or the one node.
min_isr=$(( replication / 2 + 1 ))
pid_file="$data_dir/kafka.pid"
config="$data_dir/server.properties"

say() { printf 'kafka%s: %s\n' "${KAFKA_NODE_ID:+ $node_id}" "$*"; }

is_running() {
  [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

fetch_jars() {
  if [ -f "$libs/.complete" ]; then return; fi
  say "fetching the broker from Maven Central (once; cached in $libs)"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$libs" -DincludeScope=runtime
  touch "$libs/.complete"
}

# The broker logs to server.log; the short-lived tools run here log to tools/ so that a failed
# start shows the broker's own last lines, not the readiness probe's.
java_cmd() {
  local log_dir="$1"; shift
  ${exec_java:+exec} java -Xms128m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
       -Dkafka.logs.dir="$log_dir" \
       -Dlog4j2.configurationFile="$here/log4j2.yaml" \
       -cp "$libs/*" "$@"
}

tool() { java_cmd "$data_dir/logs/tools" "$@"; }

write_config() {
  mkdir -p "$data_dir/logs/tools"
  sed -e "s|@DATA_DIR@|$data_dir|g" -e "s|@PORT@|$port|g" \
      -e "s|@CONTROLLER_PORT@|$controller_port|g" -e "s|@NODE_ID@|$node_id|g" -e "s|@VOTERS@|$voters|g" \
      -e "s|@REPLICATION@|$replication|g" -e "s|@MIN_ISR@|$min_isr|g" "$here/server.properties.in" > "$config"
  if [ -n "${KAFKA_EXTRA_CONFIG:-}" ]; then cat "$KAFKA_EXTRA_CONFIG" >> "$config"; fi
}

format_storage() {
  if [ -f "$data_dir/data/meta.properties" ]; then return; fi
  # The nodes of a cluster share the id infra/cluster.sh gives them.
  local cluster_id="${KAFKA_CLUSTER_ID:-}"
  [ -n "$cluster_id" ] || cluster_id=$(tool kafka.tools.StorageTool random-uuid)
  say "formatting storage in $data_dir/data (cluster $cluster_id)"
  # KAFKA_SCRAM_USERS="name:password ..." adds SCRAM-SHA-512 users at format time, so a SASL_SSL
  # listener (configured through KAFKA_EXTRA_CONFIG) has its users before the broker first starts.
  local scram=() user
  for user in ${KAFKA_SCRAM_USERS:-}; do
    scram+=(--add-scram "SCRAM-SHA-512=[name=${user%%:*},password=${user#*:}]")
  done
  tool kafka.tools.StorageTool format -t "$cluster_id" -c "$config" ${scram[@]+"${scram[@]}"} >/dev/null
}

wait_ready() {
  local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-90}))
  while [ $SECONDS -lt $deadline ]; do
    if ! is_running && ! port_open "$port"; then
      say "the broker exited while starting; last lines of $data_dir/logs/server.log:"
      tail -n 40 "$data_dir/logs/server.log" 2>/dev/null || true
      tail -n 20 "$data_dir/logs/stdout.log" 2>/dev/null || true
      return 1
    fi
    # A metadata request answered (not merely an open port) means the broker is serving.
    # KAFKA_CLIENT_CONFIG: the probe's client properties when the listener needs TLS or SASL.
    if port_open "$port" && tool org.apache.kafka.tools.TopicCommand \
         --bootstrap-server "127.0.0.1:$port" ${KAFKA_CLIENT_CONFIG:+--command-config "$KAFKA_CLIENT_CONFIG"} \
         --list >/dev/null 2>&1; then
      return 0
    fi
    sleep 1
  done
  say "the broker did not answer a metadata request within ${KAFKA_START_TIMEOUT:-90}s:"
  tail -n 40 "$data_dir/logs/server.log" 2>/dev/null || true
  return 1
}

# Starts the node without waiting: a node of a cluster answers only once a majority of the
# controllers runs, so infra/cluster.sh starts them all before it waits. Returns 1 when nothing was
# started (already running, or the port taken).
start() {
  if is_running; then
    say "already running (pid $(cat "$pid_file")) on 127.0.0.1:$port; nothing to do"
    return 1
  fi
  if port_open "$port"; then
    say "something else already listens on 127.0.0.1:$port; using it as the broker"
    return 1
  fi
  fetch_jars
  write_config
  format_storage
  say "starting on 127.0.0.1:$port (data and logs in $data_dir)"
  # exec: the background subshell becomes the JVM, so the pid file holds the broker's own pid and
  # `down` stops the broker, not only the shell that started it.
  exec_java=1 java_cmd "$data_dir/logs" kafka.Kafka "$config" >"$data_dir/logs/stdout.log" 2>&1 </dev/null &
  echo $! > "$pid_file"
  disown
}

up() {
  local started=$SECONDS
  start || return 0
  wait_ready
  say "ready after $((SECONDS - started))s (pid $(cat "$pid_file"))"
}

down() {
  if ! is_running; then
    say "not running; nothing to stop"
    rm -f "$pid_file"
    return 0
  fi
  local pid
  pid=$(cat "$pid_file")
  say "stopping pid $pid"
  kill "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pid_file"; say "stopped"; return 0; }
    sleep 0.5
  done
  say "did not stop in 30s; killing"
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pid_file"
}

status() {
  if is_running; then say "running (pid $(cat "$pid_file")) on 127.0.0.1:$port"; else say "not running"; return 1; fi
}

case "${1:-}" in
  up) up ;;
  start) start || true ;;
  wait) wait_ready && say "ready on 127.0.0.1:$port" ;;
  kill) is_running && kill -9 "$(cat "$pid_file")" && say "killed (SIGKILL)" ;;
  down) down ;;
  status) status ;;
  reset) down; rm -rf "$data_dir"; say "removed $data_dir" ;;
  classpath) fetch_jars >&2; echo "$libs/*" ;;
  *) echo "usage: $0 up|start|wait|kill|down|status|reset|classpath" >&2; exit 2 ;;
esac
