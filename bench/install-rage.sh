#!/usr/bin/env bash
# Installs rage (the Rust age CLI) from crates.io into the homeplane cache, once; prints the
# path of its `rage` binary.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
root="$HOMEPLANE_CACHE/tools/rage-0.12.1"
if [ ! -x "$root/bin/rage" ]; then
  log "installing rage 0.12.1 (first time only)"
  CARGO_TARGET_DIR="$HOMEPLANE_CACHE/tools/target" cargo install --locked --quiet rage@0.12.1 \
    --no-default-features --root "$root"
fi
echo "$root/bin/rage"
