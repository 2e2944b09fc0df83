#!/usr/bin/env bash
# Installs sqlx-cli (postgres only, rustls) from crates.io into the homeplane cache, once.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
root="$HOMEPLANE_CACHE/tools/sqlx-cli-0.9.0"
if [ ! -x "$root/bin/sqlx" ]; then
  log "installing sqlx-cli 0.9.0 (first time only)"
  CARGO_TARGET_DIR="$HOMEPLANE_CACHE/tools/target" cargo install --locked --quiet sqlx-cli@0.9.0 \
    --no-default-features --features postgres,rustls --root "$root"
fi
echo "$root/bin/sqlx"
