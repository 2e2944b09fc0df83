#!/usr/bin/env bash
# Benchmark of the status dashboard (not a test): a control plane of its own with 1,000
# homeplane objects (most Ready, some Failed, some in progress) and 200 Drifts in one namespace,
# and the operator standing by there (a Lease held by someone else keeps the controllers off,
# so the statuses stay as written) with its dashboard. Measures the server time of the pages
# (median and p95 of the Server-Timing the dashboard reports, 200 views each), their weight,
# the API server's GET/LIST requests made per page view (from kube-apiserver's own
# apiserver_request_total, against the same time without views), and the operator's resident
# memory without the dashboard and with it serving an open SSE client. Writes the figures to
# bench/results/dashboard.txt. Run with `make bench`.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$HOMEPLANE_ROOT"
"$HOMEPLANE_ROOT/scripts/setup.sh"
cargo build --release --locked -q -p homeplane-operator
homeplane="$CARGO_TARGET_DIR/release/homeplane"
bin="$("$HOMEPLANE_ROOT/scripts/build-cluster.sh")"
work="$HOMEPLANE_ROOT/.homeplane/bench-dashboard"
mkdir -p "$work"
measure="$HOMEPLANE_ROOT/bench/dashboard.py"
views=${DASHBOARD_BENCH_VIEWS:-200}

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  "$HOMEPLANE_ROOT/scripts/cluster.sh" down "$work/cluster" >/dev/null 2>&1 || true
}
trap cleanup EXIT
"$HOMEPLANE_ROOT/scripts/cluster.sh" down "$work/cluster" >/dev/null 2>&1 || true
"$HOMEPLANE_ROOT/scripts/cluster.sh" up "$work/cluster" 2>/dev/null
export KUBECONFIG="$work/cluster/kubeconfig"
kubectl="$bin/kubectl"
"$kubectl" apply --server-side -f crds/generated >/dev/null
"$kubectl" wait --for=condition=Established -f crds/generated >/dev/null
ns=bench
"$kubectl" create namespace "$ns" >/dev/null
# Someone else leads for a day: this operator stands by, as every replica but one does.
now=$(date -u +%Y-%m-%dT%H:%M:%S.000000Z)
printf 'apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: homeplane-operator, namespace: %s}\nspec: {holderIdentity: elsewhere, leaseDurationSeconds: 86400, renewTime: "%s", acquireTime: "%s"}\n' \
  "$ns" "$now" "$now" | "$kubectl" apply -f - >/dev/null
log "writing 1,000 objects and 200 Drifts"
python3 "$measure" objects "$ns" "$work" >/dev/null
"$kubectl" apply --server-side --field-manager=bench -f "$work/objects.yaml" >/dev/null
"$kubectl" apply --server-side --field-manager=bench --subresource=status -f "$work/status.yaml" >/dev/null

start_op() { # start_op NAME EXTRA-ARGS...: prints the pid
  local name=$1; shift
  "$homeplane" run --http-addr "127.0.0.1:$(free_port)" --leader-election-namespace "$ns" \
    --watch-namespace "$ns" --identity "$name" "$@" > "$work/$name.log" 2>&1 &
  echo $!
}
settle=30

log "the operator without the dashboard"
pid=$(start_op plain); pids+=("$pid")
sleep "$settle"
rss_plain=$(python3 "$measure" rss "$pid")
kill "$pid"; wait "$pid" 2>/dev/null || true

log "the operator with the dashboard"
port=$(free_port)
pid=$(start_op dashboard --dashboard-addr "127.0.0.1:$port"); pids+=("$pid")
until curl -sf "127.0.0.1:$port/healthz" >/dev/null; do sleep 0.2; done
sleep "$settle"
rss_idle=$(python3 "$measure" rss "$pid")
python3 "$measure" sse "http://127.0.0.1:$port/events?page=%2F" & sse=$!; pids+=("$sse")
sleep 5
# A change the open page shows, so the stream renders and sends.
"$kubectl" patch drift stateregistry-0.property-0 -n "$ns" --type=merge -p '{"spec":{"observed":"256Mi"}}' >/dev/null
sleep "$settle"
rss_sse=$(python3 "$measure" rss "$pid")
figures=$(python3 "$measure" pages "http://127.0.0.1:$port" "$kubectl" "$views")
rss_after=$(python3 "$measure" rss "$pid")
kill "$sse" "$pid" 2>/dev/null || true

value() { awk -v k="$1" '$1 == k {print $2}' <<< "$figures"; }
mib() { python3 -c "print(f'{($1) / 1024:.1f}')"; }
mkdir -p bench/results
{
  echo "# homeplane dashboard — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, release build"
  echo "# 1,000 homeplane objects (85% Ready, 10% Failed, 5% in progress) and 200 Drifts; the operator stands by"
  echo "# server time: the Server-Timing the dashboard reports (snapshot of the caches, model, templates), $views views per page"
  for page in landing drift capacity databases backups ai; do
    printf '%-10s server time median %6s ms  p95 %6s ms (goal p95 <= 20 ms)  page weight %7s bytes (goal <= 100 KB)  wall median %s ms\n' \
      "$page" "$(value "${page}_server_ms_median")" "$(value "${page}_server_ms_p95")" "$(value "${page}_bytes")" "$(value "${page}_wall_ms_median")"
  done
  echo "API server GET/LIST requests while the $(value views) page views ran ($(value viewing_seconds) s): $(value api_reads_during_views); the same time after, nobody looking: $(value api_reads_same_time_idle)"
  echo "API requests per page view: $(value api_reads_per_view) (goal 0)"
  echo "operator RSS, standing by: without the dashboard $(mib "$rss_plain") MiB; with it, nobody looking $(mib "$rss_idle") MiB; with one open SSE client $(mib "$rss_sse") MiB (+$(mib "$rss_sse - $rss_plain") MiB, goal <= 4 MiB); after the $(value views) views $(mib "$rss_after") MiB"
} | tee bench/results/dashboard.txt
