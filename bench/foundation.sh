#!/usr/bin/env bash
# Benchmark of the foundation: control-plane start-up time, the operator's memory at idle with
# the example homelab applied, and leader handover after the leader is killed. Prints the
# figures and writes them to bench/results/foundation.txt. Run with `make bench`.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$HOMEPLANE_ROOT"
"$HOMEPLANE_ROOT/scripts/setup.sh"
cargo build --release --locked -q -p homeplane-operator
homeplane="$CARGO_TARGET_DIR/release/homeplane"
bin="$("$HOMEPLANE_ROOT/scripts/build-cluster.sh")"
work="$HOMEPLANE_ROOT/.homeplane/bench"
mkdir -p "$work"
now() { python3 -c 'import time; print(time.time())'; }

# Control-plane start-up, three cold starts.
startups=()
for i in 1 2 3; do
  "$HOMEPLANE_ROOT/scripts/cluster.sh" down "$work/cluster" >/dev/null 2>&1 || true
  "$HOMEPLANE_ROOT/scripts/cluster.sh" up "$work/cluster" 2>/dev/null
  startups+=("$(cat "$work/cluster/startup-seconds")")
done
trap '"$HOMEPLANE_ROOT/scripts/cluster.sh" down "$work/cluster" >/dev/null 2>&1' EXIT
export KUBECONFIG="$work/cluster/kubeconfig"
kubectl="$bin/kubectl"
"$kubectl" apply --server-side -f crds/generated >/dev/null
"$kubectl" wait --for=condition=Established -f crds/generated >/dev/null
"$kubectl" create namespace homeplane-system >/dev/null
"$kubectl" apply --server-side -k manifests/homelab >/dev/null

# Two replicas; RSS of the leader at idle after 30 s with the homelab applied.
start_op() { # start_op IDENTITY PORT
  "$homeplane" run --http-addr "127.0.0.1:$2" --leader-election-namespace homeplane-system \
    --identity "$1" > "$work/$1.log" 2>&1 &
  echo $!
}
port_a=$(free_port); port_b=$(free_port)
pid_a=$(start_op bench-a "$port_a"); sleep 1; pid_b=$(start_op bench-b "$port_b")
sleep 30
rss_a=$(awk '/VmRSS/ {print $2}' "/proc/$pid_a/status")
rss_b=$(awk '/VmRSS/ {print $2}' "/proc/$pid_b/status")
leader=$(curl -s "127.0.0.1:$port_a/metrics" | awk '$1 == "homeplane_leader" {print $2}')
if [ "$leader" = 1 ]; then lpid=$pid_a; spid=$pid_b; sport=$port_b; else lpid=$pid_b; spid=$pid_a; sport=$port_a; fi

# Handover: SIGKILL the leader, time until the standby leads.
t0=$(now); kill -9 "$lpid"
until [ "$(curl -s "127.0.0.1:$sport/metrics" | awk '$1 == "homeplane_leader" {print $2}')" = 1 ]; do sleep 0.1; done
handover=$(python3 -c "print(f'{$(now) - $t0:.1f}')")
kill "$spid" 2>/dev/null || true

mkdir -p bench/results
{
  echo "# homeplane foundation — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores"
  echo "control-plane start-up (s, three cold starts): ${startups[*]}"
  echo "operator RSS at idle, homelab applied (KiB): leader $( [ "$lpid" = "$pid_a" ] && echo "$rss_a" || echo "$rss_b"), standby $( [ "$spid" = "$pid_a" ] && echo "$rss_a" || echo "$rss_b")"
  echo "leader handover after SIGKILL (s, lease 15 s): $handover"
} | tee bench/results/foundation.txt
