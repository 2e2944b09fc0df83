#!/usr/bin/env bash
# Benchmark of placement: reconcile latency from `kubectl apply` of a MemoryServer to its
# child objects (Deployments and Services of the server and its Redis) existing, over 20
# MemoryServers applied one after the other; and the operator's RSS with the example homelab
# (MemoryServer, VoicePipeline, Database, NodeClasses, services) applied and settled.
# Prints the figures and writes them to bench/results/placement.txt. Run with `make bench`.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
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
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn "$homeplane" run --http-addr "127.0.0.1:$port" --leader-election-namespace homeplane-system \
  --identity bench > "$work/operator.log" 2>&1 &
op=$!

# The example homelab, its Database pointed at the bench PostgreSQL.
"$kubectl" apply --server-side -k manifests/homelab >/dev/null
pg_user=$(python3 -c "import urllib.parse,os; print(urllib.parse.urlparse(os.environ['DATABASE_URL']).username)")
pg_password=$(python3 -c "import urllib.parse,os; print(urllib.parse.urlparse(os.environ['DATABASE_URL']).password)")
pg_port=$(python3 -c "import urllib.parse,os; print(urllib.parse.urlparse(os.environ['DATABASE_URL']).port)")
"$kubectl" create secret generic pg-admin -n data --from-literal=username="$pg_user" \
  --from-literal=password="$pg_password" >/dev/null
"$kubectl" patch database homelab -n data --type merge \
  -p "{\"spec\":{\"server\":{\"external\":{\"host\":\"127.0.0.1\",\"port\":$pg_port,\"sslMode\":\"disable\"}}}}" >/dev/null
"$kubectl" wait --for=condition=Ready --timeout=120s database/homelab -n data >/dev/null
"$kubectl" wait --for=condition=Ready --timeout=120s memoryserver/memory -n data voicepipeline/assistant -n ai >/dev/null 2>&1 \
  || "$kubectl" wait --for=condition=Ready --timeout=120s memoryserver/memory -n data >/dev/null
sleep 20
rss=$(awk '/VmRSS/ {print $2}' "/proc/$op/status")

# Reconcile latency: apply a MemoryServer, poll (one kubectl process per poll) until its
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
  placement: {class: pi, cpu: 5m, memory: 16Mi}
  database: {name: homelab}
  cache: {managed: {placement: {class: pi, cpu: 5m, memory: 16Mi}}}
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

mkdir -p bench/results
{
  echo "# homeplane placement — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores"
  echo "kubectl apply of a MemoryServer -> its 2 Deployments and 2 Services exist: $summary"
  echo "  client overhead in that figure (kubectl apply + one kubectl get of a ConfigMap): $overhead"
  echo "operator RSS, example homelab applied and settled (KiB): $rss"
  echo "operator RSS after 20 more MemoryServers (KiB): $rss_after"
} | tee bench/results/placement.txt
