#!/usr/bin/env bash
# The distributed servers of `make cluster-up`: three Kafka nodes (each broker and controller, from the
# same Maven-fetched jars as the development broker, replication 3 with min.insync.replicas 2) and a
# Redis Cluster of three primaries with a replica each (Debian's redis-server). Ports, all on 127.0.0.1:
#   Kafka:  CLUSTER_KAFKA_PORT (9192), +2 and +4; each node's controller on the port after its broker's
#   Redis:  CLUSTER_REDIS_PORT (7000) to +5
# and their data under CLUSTER_HOME (.cache/cluster). `eval "$(infra/cluster.sh env)"` points the
# project at them. Idempotent, like infra/kafka/kafka.sh.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cache="${GEODISPATCH_CACHE:-$root/.cache}"
home="${CLUSTER_HOME:-$cache/cluster}"
kafka_base="${CLUSTER_KAFKA_PORT:-9192}"
redis_base="${CLUSTER_REDIS_PORT:-7000}"
nodes=(1 2 3)
redis_ports=()
for i in 0 1 2 3 4 5; do redis_ports+=($((redis_base + i))); done
# A primary silent this long is failed over to its replica: short, so that the fault scenarios see the
# failover within their run.
redis_node_timeout_ms="${CLUSTER_REDIS_NODE_TIMEOUT_MS:-3000}"

say() { printf 'cluster: %s\n' "$*"; }

broker_port() { echo $((kafka_base + 2 * ($1 - 1))); }

bootstrap() {
  local n out=()
  for n in "${nodes[@]}"; do out+=("127.0.0.1:$(broker_port "$n")"); done
  (IFS=,; echo "${out[*]}")
}

redis_nodes() { (IFS=,; printf '%s\n' "${redis_ports[*]/#/127.0.0.1:}"); }

# One Kafka node through infra/kafka/kafka.sh, with the cluster's identity and this node's ports.
kafka_node() {
  local n="$1"; shift
  local port voters="" m
  port=$(broker_port "$n")
  for m in "${nodes[@]}"; do voters+="${voters:+,}$m@127.0.0.1:$(( $(broker_port "$m") + 1 ))"; done
  KAFKA_NODE_ID="$n" KAFKA_VOTERS="$voters" KAFKA_REPLICATION=3 KAFKA_CLUSTER_ID="$(cluster_id)" \
    KAFKA_PORT="$port" KAFKA_CONTROLLER_PORT=$((port + 1)) KAFKA_DATA_DIR="$home/kafka-$n" \
    "$here/kafka/kafka.sh" "$@"
}

cluster_id() {
  mkdir -p "$home"
  if [ ! -s "$home/kafka-cluster-id" ]; then
    "$here/kafka/kafka.sh" classpath >/dev/null
    java -cp "$("$here/kafka/kafka.sh" classpath 2>/dev/null)" kafka.tools.StorageTool random-uuid \
      > "$home/kafka-cluster-id" 2>/dev/null
  fi
  cat "$home/kafka-cluster-id"
}

redis_answers() { redis-cli -p "$1" ping 2>/dev/null | grep -q PONG; }

redis_node_up() {
  local port="$1" dir="$home/redis-$1"
  redis_answers "$port" && return 0
  mkdir -p "$dir"
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --pidfile "$dir/redis.pid" --dir "$dir" \
    --logfile "$dir/redis.log" --save "" --appendonly no --cluster-enabled yes \
    --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout "$redis_node_timeout_ms"
  for _ in $(seq 1 50); do redis_answers "$port" && return 0; sleep 0.1; done
  say "redis node $port did not answer; last lines of $dir/redis.log:"; tail -n 20 "$dir/redis.log"; exit 1
}

redis_ok() { redis-cli -p "$redis_base" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; }

redis_up() {
  "$here/redis.sh" install
  local port
  for port in "${redis_ports[@]}"; do redis_node_up "$port"; done
  if ! redis-cli -p "$redis_base" cluster info | grep -q 'cluster_slots_assigned:16384'; then
    say "creating the Redis Cluster (3 primaries, 1 replica each)"
    redis-cli --cluster create "${redis_ports[@]/#/127.0.0.1:}" --cluster-replicas 1 --cluster-yes >/dev/null
  fi
  for _ in $(seq 1 100); do
    if redis_ok && [ "$(redis-cli -p "$redis_base" cluster nodes | grep -c 'slave\|replica')" -ge 3 ]; then
      say "redis cluster ready on $(redis_nodes)"; return 0
    fi
    sleep 0.2
  done
  say "the Redis Cluster did not reach cluster_state:ok:"; redis-cli -p "$redis_base" cluster info; exit 1
}

redis_down() {
  local port
  for port in "${redis_ports[@]}"; do
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done
  say "redis cluster stopped"
}

kafka_up() {
  local n
  for n in "${nodes[@]}"; do kafka_node "$n" start; done
  for n in "${nodes[@]}"; do kafka_node "$n" wait; done
  say "kafka cluster ready on $(bootstrap)"
}

up() {
  kafka_up
  redis_up
  say "use it with: eval \"\$(infra/cluster.sh env)\""
}

down() {
  local n
  for n in "${nodes[@]}"; do kafka_node "$n" down; done
  redis_down
}

# The ports of the primaries serving slots, as a node that answers sees them.
redis_primaries() {
  local port
  for port in "${redis_ports[@]}"; do
    if redis_answers "$port"; then
      redis-cli -p "$port" cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ && NF >= 9 {
        split($2, a, "@"); n = split(a[1], hp, ":"); print hp[n] }' | sort -n
      return 0
    fi
  done
  return 1
}

# SIGKILL one Redis node (the fault scenarios kill a primary under load).
redis_kill() {
  local pid_file="$home/redis-$1/redis.pid"
  kill -9 "$(cat "$pid_file")" && rm -f "$pid_file" && say "redis node $1 killed (SIGKILL)"
}

env_lines() {
  echo "export KAFKA_BOOTSTRAP_SERVERS=$(bootstrap)"
  echo "export GEODISPATCH_REPLICATION_FACTOR=3"
  echo "export REDIS_CLUSTER_NODES=$(redis_nodes)"
  echo "export GEODISPATCH_REDIS_WAIT_REPLICAS=1"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  kafka-up) kafka_up ;;
  redis-up) redis_up ;;
  status) for n in "${nodes[@]}"; do kafka_node "$n" status || true; done
          redis_ok && say "redis cluster ok on $(redis_nodes)" || say "redis cluster not ok" ;;
  kill-broker) kafka_node "$2" kill ;;
  start-broker) kafka_node "$2" start; kafka_node "$2" wait ;;
  redis-primaries) redis_primaries ;;
  redis-kill) redis_kill "$2" ;;
  redis-start) redis_node_up "$2"; say "redis node $2 answering" ;;
  env) env_lines ;;
  reset) down; rm -rf "$home"; say "removed $home" ;;
  *) echo "usage: $0 up|down|status|env|reset|kafka-up|redis-up|kill-broker N|start-broker N|redis-primaries|redis-kill PORT|redis-start PORT" >&2
     exit 2 ;;
esac
