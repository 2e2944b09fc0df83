#!/usr/bin/env bash
# The fault matrix of issue 13, run on its own: starts the test servers, runs the fault tests
# (operator/tests/faults.rs) one at a time, and writes the table of what each fault ended as
# and how long recovery took to bench/results/faults.txt (dated). `make test` runs the same
# tests; this script runs them one at a time, for the table's figures.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$HOMEPLANE_ROOT"
"$HOMEPLANE_ROOT/scripts/setup.sh"
servers="$HOMEPLANE_ROOT/.homeplane/bench-faults"
trap '"$HOMEPLANE_ROOT/scripts/test-servers.sh" down "$servers"' EXIT
"$HOMEPLANE_ROOT/scripts/test-servers.sh" up "$servers"
# shellcheck disable=SC1091
source "$servers/env"
lines="$servers/faults.lines"
rm -f "$lines"
t0=$(date +%s)
HOMEPLANE_FAULTS_OUT="$lines" cargo test --locked -p homeplane-operator --test faults -- --test-threads=1
out="$HOMEPLANE_ROOT/bench/results/faults.txt"
{
  echo "# Fault matrix (issue 13), $(date -u +%Y-%m-%d), $(nproc) cores; operator/tests/faults.rs"
  echo "# Each fault is injected into the real component (toxiproxy $("$HOMEPLANE_ROOT/scripts/toxiproxy.sh" bin | sed 's/.*toxiproxy-\(v[0-9.]*\).*/\1/'), an HTTP fault injector, or the server stopped)."
  echo "# recovery: from the end of the fault (or the start of the run) to the checked outcome."
  echo "# Every row also checked: nothing lost, no false Succeeded, the bucket/database as it must be."
  echo "#"
  echo "# fault | outcome | recovery"
  sed 's/^FAULT | //' "$lines"
  echo "#"
  echo "# whole matrix, one test at a time: $(( $(date +%s) - t0 ))s"
} > "$out"
cat "$out"
