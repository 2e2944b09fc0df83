#!/usr/bin/env bash
# Builds the controller-runtime peer of the memory benchmark (bench/peer) into the homeplane
# cache, keyed by its sources, once; prints the path of the binary.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
src="$HOMEPLANE_ROOT/bench/peer"
out="$HOMEPLANE_CACHE/bench/peer-$(cache_key "$src/go.mod" "$src/go.sum" "$src/main.go")"
if [ ! -x "$out/peer" ]; then
  command -v go >/dev/null || die "go is not installed (the machine should ship Go 1.26)"
  log "building the controller-runtime peer (first time only)"
  mkdir -p "$out"
  (cd "$src" && go build -ldflags "-s -w" -o "$out/peer.partial" .)
  mv "$out/peer.partial" "$out/peer"
fi
echo "$out/peer"
