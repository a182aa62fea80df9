#!/usr/bin/env bash
# Makes sure /usr/bin/chromium (Debian's chromium package) is there for the live map's browser test,
# installing the package if it is missing and we are root. Idempotent.
set -euo pipefail

browser=/usr/bin/chromium

say() { printf 'chromium: %s\n' "$*"; }

ensure() {
  if [ -x "$browser" ]; then
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    say "$browser is missing; run: sudo apt-get install -y chromium"; exit 1
  fi
  say "installing Debian's chromium package"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  [ -x "$browser" ] || { say "the package installed no $browser"; exit 1; }
}

status() {
  if [ -x "$browser" ]; then
    say "$("$browser" --version 2>/dev/null || echo "$browser")"
  else
    say "not installed"; exit 1
  fi
}

case "${1:-}" in
  ensure) ensure ;;
  status) status ;;
  *) echo "usage: $0 ensure|status" >&2; exit 2 ;;
esac
