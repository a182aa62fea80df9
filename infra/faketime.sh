#!/usr/bin/env bash
# Makes sure libfaketime (Debian's faketime package) is there for the clock-step fault scenario
# (tests/faults/test_clock_faults.py), installing the package if it is missing and we are root. Idempotent.
set -euo pipefail

# The library the scenario preloads into one worker (tests/faults/clock.py names the same path).
lib=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1

say() { printf 'faketime: %s\n' "$*"; }

ensure() {
  if [ -f "$lib" ]; then
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    say "$lib is missing; run: sudo apt-get install -y faketime"; exit 1
  fi
  say "installing Debian's faketime package"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
  [ -f "$lib" ] || { say "the package installed no $lib"; exit 1; }
}

status() {
  if [ -f "$lib" ]; then
    say "$lib"
  else
    say "not installed"; exit 1
  fi
}

case "${1:-}" in
  ensure) ensure ;;
  status) status ;;
  *) echo "usage: $0 ensure|status" >&2; exit 2 ;;
esac
