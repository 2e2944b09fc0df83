#!/usr/bin/env bash
# Benchmarks of the state registry:
#  1. the diff engine alone at 234, 10k and 100k properties (optimised build), written to
#     bench/results/state-diff.txt;
#  2. a full evaluation of the demo's seed registry (~234 properties plus derived ones)
#     including every observer call (Kubernetes lists, PostgreSQL, HTTP, the Podman API),
#     as the operator reports it in status.lastEvaluationMillis, over 10 evaluations; written
#     to bench/results/state-registry.txt. Uses a running `make demo`, or starts one (and
#     stops it again).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$HOMEPLANE_ROOT"

out="$HOMEPLANE_ROOT/bench/results/state-diff.txt"
{
  cargo bench --locked -q -p homeplane-state --bench diff 2>/dev/null
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores"
} | tee "$out"

demo="$HOMEPLANE_ROOT/.homeplane/demo"
started=no
if ! { [ -f "$demo/env" ] && [ -f "$demo/operator.pid" ] && kill -0 "$(cat "$demo/operator.pid")" 2>/dev/null; }; then
  bash scripts/demo.sh up >/dev/null
  started=yes
fi
# shellcheck disable=SC1091
source "$demo/env"
get() { kubectl get stateregistry homelab -n monitoring -o jsonpath="$1"; }
kubectl patch stateregistry homelab -n monitoring --type merge -p '{"spec":{"interval":"3s"}}' >/dev/null
millis=(); last=""
for _ in $(seq 1 120); do
  t=$(get '{.status.lastEvaluationTime}')
  if [ -n "$t" ] && [ "$t" != "$last" ]; then
    [ -n "$last" ] && millis+=("$(get '{.status.lastEvaluationMillis}')")
    last=$t
  fi
  [ "${#millis[@]}" -ge 10 ] && break
  sleep 1
done
props=$(get '{.status.properties}'); sync=$(get '{.status.inSync}')
drifted=$(get '{.status.drifted}'); unknown=$(get '{.status.unknown}')
kubectl patch stateregistry homelab -n monitoring --type merge -p '{"spec":{"interval":"30s"}}' >/dev/null
[ "$started" = yes ] && bash scripts/demo.sh down >/dev/null 2>&1
sorted=$(printf '%s\n' "${millis[@]}" | sort -n)
median=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
{
  echo "# full evaluation of the demo's seed registry, observer calls included (${#millis[@]} evaluations)"
  echo "properties ${props}: ${sync} in sync, ${drifted} drifted, ${unknown} unknown"
  echo "evaluation (ms): median ${median}, min $(echo "$sorted" | head -1), max $(echo "$sorted" | tail -1)"
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores"
} | tee "$HOMEPLANE_ROOT/bench/results/state-registry.txt"
