#!/usr/bin/env bash
# Benchmark of a reconciliation that changes nothing, per kind (issue 17), on the demo: the
# writes the API server receives because of it (its own request metrics) and the time it spends
# computing (homeplane_reconcile_busy_seconds, round trips left out). Uses the running demo, or
# starts one (`make demo`) and stops it after. Details in bench/reconcile.py.
# Prints the figures and writes them to bench/results/reconcile.txt. Run with `make bench`.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
source "$HOMEPLANE_ROOT/bench/lib.sh"
cd "$HOMEPLANE_ROOT"
state="$HOMEPLANE_ROOT/.homeplane/demo"
if ! { [ -f "$state/operator.pid" ] && kill -0 "$(cat "$state/operator.pid")" 2>/dev/null; }; then
  log "starting the demo (make demo)"
  trap 'bash "$HOMEPLANE_ROOT/scripts/demo.sh" down >/dev/null 2>&1 || true' EXIT
  bash scripts/demo.sh up > "$HOMEPLANE_ROOT/.homeplane/bench-reconcile-demo.log" 2>&1
fi
bin="$("$HOMEPLANE_ROOT/scripts/build-cluster.sh")"
export KUBECONFIG="$state/cluster/kubeconfig"
port=$(cat "$state/operator.port")
rounds=${BENCH_ROUNDS:-5}
seconds=${BENCH_WINDOW_SECONDS:-60}
log "a quiet window of ${seconds}s, then ${rounds} rounds of annotations in another"
mkdir -p bench/results
out=bench/results/reconcile.txt
{
  echo "# homeplane: a reconciliation that changes nothing — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(machine)"
  echo "# on the demo (make demo: the example homelab applied by Flux, real PostgreSQL, n8n, S3); release build"
  echo "# busy: homeplane_reconcile_busy_seconds, the CPU time a reconciliation spends in its polls (no round trips),"
  echo "#   as the upper bound of its histogram bucket; writes: apiserver_request_total, the API server's own count"
} > "$out"
python3 bench/reconcile.py "$bin/kubectl" "http://127.0.0.1:$port/metrics" "$rounds" "$seconds" "$out"
