#!/usr/bin/env bash
# `make test`: formatting and lints, then every test — unit tests, and the integration and
# end-to-end tests against a real control plane (started here and shared by the test binaries;
# each test uses its own namespace). Exits non-zero on any failure.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$HOMEPLANE_ROOT"
t0=$(date +%s)

"$HOMEPLANE_ROOT/scripts/setup.sh"
log "checking formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -q -- -D warnings
# A short run of every fuzz target from its committed corpus (the long one is `make fuzz`).
log "fuzzing every parser briefly"
"$HOMEPLANE_ROOT/scripts/fuzz.sh" short

servers="$HOMEPLANE_ROOT/.homeplane/test"
dir="$servers/cluster"
# The machine as the real node finds it (after cleaning what a killed run may have left), to
# compare with what it is after the run.
"$HOMEPLANE_ROOT/scripts/realnode.sh" down "$dir"
"$HOMEPLANE_ROOT/scripts/realnode.sh" state "$dir" > "$servers/machine-before.txt"
stop_servers() { "$HOMEPLANE_ROOT/scripts/test-servers.sh" down "$servers"; }
trap stop_servers EXIT
"$HOMEPLANE_ROOT/scripts/test-servers.sh" up "$servers"
# shellcheck disable=SC1091
source "$servers/env"

log "running the tests"
results="$HOMEPLANE_ROOT/.homeplane/test/results.txt"
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e
passed=$(awk '/^test result:/ {p += $4} END {print p + 0}' "$results")
failed=$(awk '/^test result:/ {f += $6} END {print f + 0}' "$results")
# Stop the servers now, so that the summary is the last line printed.
trap - EXIT
stop_servers
"$HOMEPLANE_ROOT/scripts/realnode.sh" state "$dir" > "$servers/machine-after.txt"
if ! diff -u "$servers/machine-before.txt" "$servers/machine-after.txt" >&2; then
  log "the real node left the machine changed (above: before, after)"
  status=1; failed=$((failed + 1))
fi
if [ "$status" = 0 ]; then
  log "make test passed in $(( $(date +%s) - t0 ))s (control plane start-up: $(cat "$dir/startup-seconds")s, Flux: $(cat "$servers/flux/startup-seconds")s)"
else
  log "make test failed"
fi
echo "${passed} passed, ${failed} failed"
exit "$status"
