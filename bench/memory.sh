#!/usr/bin/env bash
# Benchmark of memory against a peer: homeplane and a minimal controller-runtime operator with
# the same watches (bench/peer) run side by side against one control plane, each as a leader
# and a standby (separate Leases), and their resident memory is read at the same moments:
# idle on an empty cluster, with the example homelab applied, and with 1,000 homeplane objects
# and 10,000 owned objects more (bench/generate.py); then each is restarted alone with all of
# it in its first lists. RSS is the median of 10 readings a second apart; "peak" is VmHWM.
# Last, homeplane runs once more under heaptrack (a build with symbols) with everything in the
# cluster, and the heap's peak by allocation site goes to bench/results/memory-heap.txt, so
# what the memory is made of is on record (BENCH_HEAP=0 leaves it out). Beside RSS, the
# anonymous part (RssAnon: heap and stacks, what a memory limit cannot reclaim) of each.
# Prints the figures and writes them to bench/results/memory.txt. Run with `make bench`.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
source "$HOMEPLANE_ROOT/bench/lib.sh"
cd "$HOMEPLANE_ROOT"
"$HOMEPLANE_ROOT/scripts/setup.sh"
bench_packages heaptrack
cargo build --release --locked -q -p homeplane-operator
homeplane="$CARGO_TARGET_DIR/release/homeplane"
peer="$("$HOMEPLANE_ROOT/bench/build-peer.sh")"
bin="$("$HOMEPLANE_ROOT/scripts/build-cluster.sh")"
work="$HOMEPLANE_ROOT/.homeplane/bench-memory"
settle=${BENCH_SETTLE_SECONDS:-60}
mkdir -p "$work"
"$HOMEPLANE_ROOT/scripts/cluster.sh" down "$work/cluster" >/dev/null 2>&1 || true
"$HOMEPLANE_ROOT/scripts/postgres.sh" down "$work/postgres" >/dev/null 2>&1 || true
rm -rf "$work/cluster" "$work/postgres"
"$HOMEPLANE_ROOT/scripts/cluster.sh" up "$work/cluster" 2>/dev/null
"$HOMEPLANE_ROOT/scripts/postgres.sh" up "$work/postgres" 2>/dev/null
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$HOMEPLANE_ROOT/scripts/cluster.sh" down "$work/cluster" >/dev/null 2>&1 || true
  "$HOMEPLANE_ROOT/scripts/postgres.sh" down "$work/postgres" >/dev/null 2>&1 || true
}
trap cleanup EXIT
export KUBECONFIG="$work/cluster/kubeconfig"
kubectl="$bin/kubectl"
source "$work/postgres/env"
"$kubectl" apply --server-side -f crds/generated >/dev/null
"$kubectl" wait --for=condition=Established -f crds/generated >/dev/null
"$kubectl" create namespace homeplane-system >/dev/null

start_homeplane() { # start_homeplane NAME [BINARY_PREFIX...] -> pid
  local name=$1; shift
  # MALLOC_ARENA_MAX as the chart runs it (BENCH_MALLOC_ARENA_MAX= leaves glibc's default).
  RUST_LOG=warn MALLOC_ARENA_MAX=${BENCH_MALLOC_ARENA_MAX-2} "$@" "$homeplane" run --http-addr "127.0.0.1:$(free_port)" \
    --leader-election-namespace homeplane-system --identity "$name" > "$work/$name.log" 2>&1 &
  echo $!
}
start_peer() { # start_peer NAME -> pid
  "$peer" --leader-election-namespace homeplane-system > "$work/$1.log" 2>&1 &
  echo $!
}
rss() { # rss PID -> median VmRSS (KiB) of 10 readings a second apart
  local i
  for i in $(seq 1 10); do awk '/^VmRSS/ {print $2}' "/proc/$1/status"; sleep 1; done | median
}
hwm() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
anon() { awk '/^RssAnon/ {print $2}' "/proc/$1/status"; } # what a memory limit cannot reclaim
mib() { python3 -c "print(f'{$1 / 1024:.1f}')"; }
leads() { # leads LEASE IDENTITY-PREFIX: whether the Lease is held by that identity
  "$kubectl" get lease "$1" -n homeplane-system -o jsonpath='{.spec.holderIdentity}' 2>/dev/null | grep -q "^$2"
}

hp_a=$(start_homeplane hp-a); pids+=("$hp_a"); sleep 2
hp_b=$(start_homeplane hp-b); pids+=("$hp_b")
peer_a=$(start_peer peer-a); pids+=("$peer_a"); sleep 2
peer_b=$(start_peer peer-b); pids+=("$peer_b")
# Who leads: homeplane's Lease names the identity; controller-runtime's leader says so in its log.
for _ in $(seq 1 60); do
  "$kubectl" get lease homeplane-operator -n homeplane-system >/dev/null 2>&1 \
    && grep -liq "successfully acquired lease" "$work"/peer-?.log 2>/dev/null && break
  sleep 1
done
hp_leader=$hp_a hp_standby=$hp_b peer_leader=$peer_a peer_standby=$peer_b
leads homeplane-operator hp-a || { hp_leader=$hp_b; hp_standby=$hp_a; }
grep -qi "successfully acquired lease" "$work/peer-a.log" || { peer_leader=$peer_b; peer_standby=$peer_a; }

sample() { # sample PHASE: the four RSS figures of this moment, then the four anonymous ones
  local a b c d
  a=$(rss "$hp_leader") b=$(rss "$peer_leader") c=$(rss "$hp_standby") d=$(rss "$peer_standby")
  printf '%s %s %s %s %s %s %s %s %s\n' "$1" "$a" "$b" "$c" "$d" "$(anon "$hp_leader")" \
    "$(anon "$peer_leader")" "$(anon "$hp_standby")" "$(anon "$peer_standby")" | tee -a "$work/samples.txt" >&2
}
: > "$work/samples.txt"
log "idle: both operators on an empty cluster"
sleep 30
sample idle

log "the example homelab"
apply_homelab "$kubectl"
sleep "$settle"
sample homelab

log "1,000 homeplane objects and 10,000 owned objects more"
python3 bench/generate.py --namespaces 20 --homeplane 1000 --owned 10000 > "$work/objects.json"
t0=$(now_ms)
"$kubectl" create -f "$work/objects.json" > /dev/null
created_s=$(( ($(now_ms) - t0) / 1000 ))
objects=$("$kubectl" get configmaps,secrets,services,deployments,statefulsets,jobs,serviceaccounts,rolebindings \
  -A -l app.kubernetes.io/managed-by=homeplane --no-headers | wc -l)
homeplane_objects=$("$kubectl" get homeplane -A --no-headers | wc -l)
sleep "$settle"
sample scale

log "each restarted alone, all of it in its first lists"
kill "$hp_leader" "$hp_standby" "$peer_leader" "$peer_standby"
wait "$hp_leader" "$hp_standby" "$peer_leader" "$peer_standby" 2>/dev/null || true
pids=()
hp_new=$(start_homeplane hp-restart); pids+=("$hp_new")
peer_new=$(start_peer peer-restart); pids+=("$peer_new")
# The peer waits for its old Lease to expire (15 s); both have listed everything after 45 s.
sleep 45
until leads homeplane-operator hp-restart; do sleep 1; done
hp_restart=$(rss "$hp_new") peer_restart=$(rss "$peer_new")
hp_peak=$(hwm "$hp_new") peer_peak=$(hwm "$peer_new")
kill "$hp_new" "$peer_new"; wait "$hp_new" "$peer_new" 2>/dev/null || true
pids=()

heap_file=""
if [ "${BENCH_HEAP:-1}" = 1 ]; then
log "homeplane under heaptrack (a build with symbols), everything in the cluster"
cargo build --profile profiling --locked -q -p homeplane-operator
profiled="$CARGO_TARGET_DIR/profiling/homeplane"
rm -f "$work"/heap.*
RUST_LOG=warn MALLOC_ARENA_MAX=${BENCH_MALLOC_ARENA_MAX-2} heaptrack -o "$work/heap" "$profiled" run --http-addr "127.0.0.1:$(free_port)" \
  --leader-election-namespace homeplane-system --identity hp-heap > "$work/hp-heap.log" 2>&1 &
heap_pid=$!; pids+=("$heap_pid")
sleep 60
# heaptrack writes its file when the program ends: stop homeplane (its child) cleanly.
for child in $(pgrep -P "$heap_pid"); do kill -TERM "$child" 2>/dev/null || true; done
wait "$heap_pid" 2>/dev/null || true
pids=()
heap_file=$(ls "$work"/heap*.zst "$work"/heap*.gz 2>/dev/null | head -n 1 || true)
fi

anon_rows=()
read_phase() { awk -v p="$1" '$1 == p {print $2, $3, $4, $5, $6, $7, $8, $9}' "$work/samples.txt"; }
mkdir -p bench/results
{
  echo "# homeplane vs a controller-runtime operator with the same watches — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(machine)"
  echo "# peer: bench/peer (controller-runtime v0.25.2, Go $(go env GOVERSION | sed 's/^go//'), GOGC default, managed fields stripped,"
  echo "#   owned kinds by label, homeplane kinds with raw-JSON spec/status); both out of cluster against the same"
  echo "#   control plane at the same time, leader and standby each. RSS: median of 10 readings, MiB."
  printf '%-46s %10s %10s %8s\n' "phase" "homeplane" "peer" "ratio"
  for phase in idle homelab scale; do
    read -r a b c d e f g h < <(read_phase "$phase")
    case $phase in
      idle) what="idle, empty cluster";;
      homelab) what="example homelab applied";;
      scale) what="+ $homeplane_objects homeplane, $objects owned objects";;
    esac
    printf '%-46s %10s %10s %8s\n' "$what (leader)" "$(mib "$a")" "$(mib "$b")" "$(ratio "$a" "$b")"
    printf '%-46s %10s %10s %8s\n' "$what (standby)" "$(mib "$c")" "$(mib "$d")" "$(ratio "$c" "$d")"
    anon_rows+=("$(printf '%-46s %10s %10s %8s' "$what (leader)" "$(mib "$e")" "$(mib "$f")" "$(ratio "$e" "$f")")")
    anon_rows+=("$(printf '%-46s %10s %10s %8s' "$what (standby)" "$(mib "$g")" "$(mib "$h")" "$(ratio "$g" "$h")")")
  done
  printf '%-46s %10s %10s %8s\n' "restarted with all of it (RSS after 45 s)" "$(mib "$hp_restart")" "$(mib "$peer_restart")" "$(ratio "$hp_restart" "$peer_restart")"
  printf '%-46s %10s %10s %8s\n' "restarted with all of it (peak)" "$(mib "$hp_peak")" "$(mib "$peer_peak")" "$(ratio "$hp_peak" "$peer_peak")"
  echo "anonymous memory (RssAnon: heap and stacks, without the program's own pages), one reading, MiB:"
  printf '%s\n' "${anon_rows[@]}"
  echo "objects created in ${created_s}s; settled ${settle}s before each reading"
} | tee bench/results/memory.txt
if [ -n "$heap_file" ]; then
  {
    echo "# homeplane's heap with the example homelab, $homeplane_objects homeplane and $objects owned objects"
    echo "# heaptrack $(heaptrack --version 2>&1 | awk '{print $NF}'), $(date -u +%Y-%m-%dT%H:%M:%SZ), $(machine); 60 s after a start"
    echo "# each line: what the allocation site held at the heap's peak, its calls, its first frames outside the allocator, std and the async plumbing"
    heaptrack_print --print-peaks 1 --print-allocators 0 --print-temporary 0 --print-leaks 0 \
      --peak-limit 1 --sub-peak-limit 25 "$heap_file" 2>/dev/null | sed -n '/PEAK MEMORY CONSUMERS/,$p' \
      | python3 "$HOMEPLANE_ROOT/bench/heap_summary.py"
  } > bench/results/memory-heap.txt
  log "heap profile summary in bench/results/memory-heap.txt"
fi
