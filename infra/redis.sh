#!/usr/bin/env bash
# Starts a Redis server from Debian's redis-server package on 127.0.0.1 (installing the package if
# it is missing and we are root), or uses the one already listening. Idempotent.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
data_dir="${REDIS_DATA_DIR:-${GEODISPATCH_CACHE:-$root/.cache}/redis}"
port="${REDIS_PORT:-6379}"
pid_file="$data_dir/redis.pid"

say() { printf 'redis: %s\n' "$*"; }

answers() { redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; }

install_server() {
  command -v redis-server >/dev/null && return
  if [ "$(id -u)" -ne 0 ]; then
    say "redis-server is not installed; run: sudo apt-get install -y redis-server"; exit 1
  fi
  say "installing Debian's redis-server package"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
}

up() {
  install_server
  if answers; then
    say "already answering on 127.0.0.1:$port; nothing to do"
    return 0
  fi
  mkdir -p "$data_dir"
  say "starting on 127.0.0.1:$port (data in $data_dir)"
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --pidfile "$pid_file" \
    --dir "$data_dir" --logfile "$data_dir/redis.log" --save "" --appendonly no \
    ${REDIS_EXTRA_ARGS:-}
  for _ in $(seq 1 50); do answers && { say "ready"; return 0; }; sleep 0.1; done
  say "did not answer; last lines of $data_dir/redis.log:"; tail -n 20 "$data_dir/redis.log"; exit 1
}

down() {
  if [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    say "stopping pid $(cat "$pid_file")"
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || kill "$(cat "$pid_file")"
    rm -f "$pid_file"
  else
    say "no Redis started by us; nothing to stop"
  fi
}

case "${1:-}" in
  up) up ;;
  install) install_server ;;
  down) down ;;
  status) answers && say "answering on 127.0.0.1:$port" || { say "not answering"; exit 1; } ;;
  *) echo "usage: $0 up|down|status|install" >&2; exit 2 ;;
esac
