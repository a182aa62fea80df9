#!/usr/bin/env bash
# Makes sure a file of one of Debian's packages is there for a test (Chromium for the live map's
# browser test, libfaketime for the clock-step fault scenario), installing the package if the file is
# missing and we are root. Idempotent.
#   infra/debian-package.sh ensure|status <package> <file>
set -euo pipefail

usage() { echo "usage: $0 ensure|status <package> <file>" >&2; exit 2; }
[ $# -eq 3 ] || usage
action=$1 package=$2 file=$3

say() { printf '%s: %s\n' "$package" "$*"; }

ensure() {
  if [ -e "$file" ]; then
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    say "$file is missing; run: sudo apt-get install -y $package"; exit 1
  fi
  say "installing Debian's $package package"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null
  [ -e "$file" ] || { say "the package installed no $file"; exit 1; }
}

status() {
  if [ -e "$file" ]; then
    say "$file"
  else
    say "not installed"; exit 1
  fi
}

case "$action" in
  ensure) ensure ;;
  status) status ;;
  *) usage ;;
esac
