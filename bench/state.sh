#!/usr/bin/env bash
# Benchmark of the state registry's diff engine alone at 234, 10k and 100k properties
# (optimised build). Prints the figures and writes them to bench/results/state-diff.txt.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$HOMEPLANE_ROOT"
out="$HOMEPLANE_ROOT/bench/results/state-diff.txt"
{
  cargo bench --locked -q -p homeplane-state --bench diff 2>/dev/null
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores"
} | tee "$out"
