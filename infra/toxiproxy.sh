#!/usr/bin/env bash
# Makes sure .cache/bin/toxiproxy-server is there for the fault suite's link faults (tests/faults/links.py),
# building Toxiproxy's server from its Go module with the installed Go toolchain if it is missing. Idempotent.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# Pinned so that the toxics' HTTP API the tests speak stays the one they were written against.
version=v2.5.0
module=github.com/Shopify/toxiproxy/v2
bin_dir="${GEODISPATCH_CACHE:-$root/.cache}/bin"
server="$bin_dir/toxiproxy-server"

say() { printf 'toxiproxy: %s\n' "$*"; }

built() { [ -x "$server" ] && "$server" -version 2>/dev/null | grep -q "${version#v}"; }

ensure() {
  if built; then
    return 0
  fi
  command -v go >/dev/null || { say "go is not installed: the fault proxy is built from source with it"; exit 1; }
  mkdir -p "$bin_dir"
  say "building $module/cmd/server@$version into $bin_dir"
  # The module's own go.mod pins its dependencies; GOFLAGS from the caller (e.g. -mod=vendor) would not apply.
  # The version is stamped in as upstream's Makefile does, so that `built` can tell an old binary.
  GOBIN="$bin_dir" GOFLAGS=-buildvcs=false go install \
    -ldflags "-X $module.Version=${version#v}" "$module/cmd/server@$version"
  mv -f "$bin_dir/server" "$server"
  built || { say "the built $server does not report version $version"; exit 1; }
  say "ready: $server"
}

status() {
  if built; then
    say "$("$server" -version 2>&1 | head -n 1) at $server"
  else
    say "not built"; exit 1
  fi
}

case "${1:-}" in
  ensure) ensure ;;
  status) status ;;
  *) echo "usage: $0 ensure|status" >&2; exit 2 ;;
esac
