#!/usr/bin/env bash
# Installs refinery_cli (PostgreSQL only) from crates.io into the homeplane cache, once; prints
# the path of its `refinery` binary.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
root="$HOMEPLANE_CACHE/tools/refinery_cli-0.10.0"
if [ ! -x "$root/bin/refinery" ]; then
  log "installing refinery_cli 0.10.0 (first time only)"
  CARGO_TARGET_DIR="$HOMEPLANE_CACHE/tools/target" cargo install --locked --quiet refinery_cli@0.10.0 \
    --no-default-features --features postgresql --root "$root"
fi
echo "$root/bin/refinery"
