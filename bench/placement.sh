#!/usr/bin/env bash
# Benchmark of placement: reconcile latency from `kubectl apply` of a MemoryServer to its
# child objects (Deployments and Services of the server and its Redis) existing, over 20
# MemoryServers applied one after the other; and the operator's RSS with the example homelab
# (MemoryServer, VoicePipeline, Database, NodeClasses, services) applied and settled, and again
# after a restart with 30 MB of other Secrets in the cluster.
# Prints the figures and writes them to bench/results/placement.txt. Run with `make bench`.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
source "$HOMEPLANE_ROOT/bench/lib.sh"
cd "$HOMEPLANE_ROOT"
"$HOMEPLANE_ROOT/scripts/setup.sh"
cargo build --release --locked -q -p homeplane-operator
homeplane="$CARGO_TARGET_DIR/release/homeplane"
bin="$("$HOMEPLANE_ROOT/scripts/build-cluster.sh")"
work="$HOMEPLANE_ROOT/.homeplane/bench-placement"
mkdir -p "$work"
# A fresh control plane and PostgreSQL for every run.
"$HOMEPLANE_ROOT/scripts/cluster.sh" down "$work/cluster" >/dev/null 2>&1 || true
"$HOMEPLANE_ROOT/scripts/postgres.sh" down "$work/postgres" >/dev/null 2>&1 || true
rm -rf "$work/cluster" "$work/postgres"
"$HOMEPLANE_ROOT/scripts/cluster.sh" up "$work/cluster" 2>/dev/null
"$HOMEPLANE_ROOT/scripts/postgres.sh" up "$work/postgres" 2>/dev/null
cleanup() {
  [ -n "${op:-}" ] && kill "$op" 2>/dev/null || true
  "$HOMEPLANE_ROOT/scripts/cluster.sh" down "$work/cluster" >/dev/null 2>&1 || true
  "$HOMEPLANE_ROOT/scripts/postgres.sh" down "$work/postgres" >/dev/null 2>&1 || true
}
trap cleanup EXIT
export KUBECONFIG="$work/cluster/kubeconfig"
kubectl="$bin/kubectl"
source "$work/postgres/env" # DATABASE_URL, PGHOST, PGPORT, PGPASSWORD...
"$kubectl" apply --server-side -f crds/generated >/dev/null
"$kubectl" wait --for=condition=Established -f crds/generated >/dev/null
"$kubectl" create namespace homeplane-system >/dev/null
port=$(free_port)
RUST_LOG=warn "$homeplane" run --http-addr "127.0.0.1:$port" --leader-election-namespace homeplane-system \
  --identity bench > "$work/operator.log" 2>&1 &
op=$!

# The example homelab, its Database pointed at the bench PostgreSQL.
apply_homelab "$kubectl"
"$kubectl" wait --for=condition=Ready --timeout=120s memoryserver/memory -n data voicepipeline/assistant -n ai >/dev/null 2>&1 \
  || "$kubectl" wait --for=condition=Ready --timeout=120s memoryserver/memory -n data >/dev/null
sleep 20
rss=$(awk '/VmRSS/ {print $2}' "/proc/$op/status")

# Reconcile latency: apply a MemoryServer (on the GPU node's class: the example homelab leaves
# the Pi almost full, and a MemoryServer that does not fit is refused before creation), poll
# (one kubectl process per poll) until its
# Deployments and Services exist. The same apply-and-poll of a ConfigMap, which needs no
# controller, is the client overhead included in the figure.
children() { # children NAME -> number of child objects that exist
  "$kubectl" get -n data --ignore-not-found -o name deployment/"$1" deployment/"$1"-cache \
    service/"$1" service/"$1"-cache 2>/dev/null | wc -l
}
latencies=(); overheads=()
for i in $(seq 1 20); do
  t0=$(date +%s%N)
  cat <<YAML | "$kubectl" apply -n data -f - >/dev/null
apiVersion: homeplane.dev/v1alpha1
kind: MemoryServer
metadata: {name: bench-$i}
spec:
  image: example/memory:1
  placement: {class: gpu, cpu: 5m, memory: 16Mi}
  database: {name: homelab}
  cache: {managed: {placement: {class: gpu, cpu: 5m, memory: 16Mi}}}
  embedding: {endpoint: {url: "http://127.0.0.1:9", model: bench}}
YAML
  deadline=$(( $(date +%s) + 30 ))
  until [ "$(children "bench-$i")" = 4 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || {
      "$kubectl" get memoryserver "bench-$i" -n data -o jsonpath='{.status.conditions}' >&2
      die "the children of MemoryServer bench-$i did not appear within 30 s"
    }
  done
  t1=$(date +%s%N)
  latencies+=("$(( (t1 - t0) / 1000000 ))")
  t0=$(date +%s%N)
  "$kubectl" create configmap "overhead-$i" -n data --from-literal=k=v >/dev/null
  "$kubectl" get -n data --ignore-not-found -o name configmap/"overhead-$i" >/dev/null
  overheads+=("$(( ($(date +%s%N) - t0) / 1000000 ))")
done
percentiles() {
  sort -n | python3 -c '
import sys
v = [int(x) for x in sys.stdin]
p = lambda q: v[max(0, min(len(v) - 1, -(-len(v) * q // 100) - 1))]
print(f"p50 {p(50)} ms, p95 {p(95)} ms, max {v[-1]} ms over {len(v)}")'
}
overhead=$(printf '%s\n' "${overheads[@]}" | percentiles)
summary=$(printf '%s\n' "${latencies[@]}" | percentiles)
rss_after=$(awk '/VmRSS/ {print $2}' "/proc/$op/status")

# A cluster's other Secrets must not weigh on the operator: restarted (everything in its first
# list), then restarted again with 150 more Secrets of 200 KB (what Helm keeps for release
# history), created by the API (no last-applied copy).
restart() { # restart: sets rss_now and hwm_now (KiB), 25 s after the start
  kill "$op"; wait "$op" 2>/dev/null || true
  RUST_LOG=warn "$homeplane" run --http-addr "127.0.0.1:$port" --leader-election-namespace homeplane-system \
    --identity bench > "$work/operator.log" 2>&1 &
  op=$!
  sleep 25
  rss_now=$(awk '/VmRSS/ {print $2}' "/proc/$op/status")
  hwm_now=$(awk '/VmHWM/ {print $2}' "/proc/$op/status")
}
restart
rss_restart=$rss_now hwm_restart=$hwm_now
"$kubectl" create namespace helm-releases >/dev/null
blob=$(head -c 150000 /dev/urandom | base64 -w0 | head -c 200000)
for i in $(seq 1 150); do
  printf -- '---\napiVersion: v1\nkind: Secret\nmetadata: {name: sh.helm.release.v1.app.v%s, namespace: helm-releases}\ntype: helm.sh/release.v1\ndata: {release: %s}\n' "$i" "$blob"
done | "$kubectl" create -f - >/dev/null
restart
rss_secrets=$rss_now hwm_secrets=$hwm_now

mkdir -p bench/results
{
  echo "# homeplane placement — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores"
  echo "kubectl apply of a MemoryServer -> its 2 Deployments and 2 Services exist: $summary"
  echo "  client overhead in that figure (kubectl apply + one kubectl get of a ConfigMap): $overhead"
  echo "operator RSS, example homelab applied and settled (KiB): $rss"
  echo "operator RSS after 20 more MemoryServers (KiB): $rss_after"
  echo "operator restarted (all of it in its first lists): RSS $rss_restart KiB, peak $hwm_restart KiB"
  echo "  and with 150 more Secrets of 200 KB in the cluster (30 MB): RSS $rss_secrets KiB, peak $hwm_secrets KiB"
} | tee bench/results/placement.txt
