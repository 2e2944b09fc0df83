#!/usr/bin/env bash
# Fuzzing of every parser of untrusted input (fuzz/fuzz_targets), with libFuzzer on stable Rust:
# libfuzzer-sys links libFuzzer, and a rustc wrapper adds SanitizerCoverage (stable `-C passes`
# and `-C llvm-args`) to homeplane's own crates only, so dependencies build as usual.
#
#   scripts/fuzz.sh short   every target for SHORT_SECONDS (default 5), from the committed
#                           corpus (what `make test` runs)
#   scripts/fuzz.sh long    every target for FUZZ_RUNS executions (default 1,000,000) or
#                           FUZZ_MAX_SECONDS (default 900), whichever comes first (`make fuzz`)
#   scripts/fuzz.sh merge   minimise what the last long run found into fuzz/corpus
#
# New inputs go to .homeplane/fuzz/corpus/<target> (the committed corpus is only read);
# crashes to .homeplane/fuzz/artifacts. Prints executions per target; exits non-zero when a
# target crashed.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$HOMEPLANE_ROOT"

mode="${1:-short}"
work="$HOMEPLANE_ROOT/.homeplane/fuzz"
export CARGO_TARGET_DIR="$HOMEPLANE_CACHE/fuzz-target"
export CARGO_BUILD_BUILD_DIR="$HOMEPLANE_CACHE/fuzz-build"
export CARGO_INCREMENTAL=0
export RUSTC_WRAPPER="$HOMEPLANE_ROOT/scripts/fuzz-rustc.sh"
mkdir -p "$work/corpus" "$work/artifacts"

log "building the fuzz targets (release, coverage on homeplane's crates)"
(cd fuzz && cargo build --release --locked -q --bins)
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^homeplane-fuzz$')

case "$mode" in
  short) args=(-max_total_time="${SHORT_SECONDS:-5}") ;;
  long) args=(-runs="${FUZZ_RUNS:-1000000}" -max_total_time="${FUZZ_MAX_SECONDS:-900}") ;;
  merge) args=() ;;
  *) die "usage: $0 short|long|merge" ;;
esac

summary="$work/summary-$mode.txt"
: > "$summary"
failed=0
for t in $targets; do
  bin="$CARGO_TARGET_DIR/release/$t"
  mkdir -p "$work/corpus/$t"
  if [ "$mode" = merge ]; then
    "$bin" -merge=1 "fuzz/corpus/$t" "$work/corpus/$t" >/dev/null 2>&1 || failed=1
    continue
  fi
  out="$work/$t.log"
  set +e
  "$bin" "${args[@]}" -rss_limit_mb=1024 -timeout=10 -max_len=65536 \
    -artifact_prefix="$work/artifacts/$t-" "$work/corpus/$t" "fuzz/corpus/$t" >"$out" 2>&1
  code=$?
  set -e
  # libFuzzer ends with "Done N runs in S second(s)"; a crash ends without it.
  runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 \2/p' "$out" | tail -n 1)
  [ -n "$runs" ] || runs=$(sed -n 's/^#\([0-9]*\)\t.*exec\/s.*/\1 ?/p' "$out" | tail -n 1)
  if [ "$code" = 0 ]; then status=ok; else status="CRASHED (see $out)"; failed=1; fi
  printf '%-16s %12s executions in %5ss  %s\n' "$t" "${runs%% *}" "${runs##* }" "$status" | tee -a "$summary"
done
if [ "$failed" != 0 ]; then
  log "fuzzing found a failure; inputs are in $work/artifacts"
  exit 1
fi
[ "$mode" = merge ] && log "merged into fuzz/corpus" || log "no target crashed (summary: $summary)"
