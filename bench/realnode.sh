#!/usr/bin/env bash
# Benchmark of the real node (scripts/realnode.sh): how long `up` takes with everything built
# and its images already in its containerd (three starts), and the memory of its programs at
# rest (no pods of the tests, 60 s after start). Prints the figures and writes them to
# bench/results/realnode.txt. Run with `make bench`.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$HOMEPLANE_ROOT"
"$HOMEPLANE_ROOT/scripts/setup.sh"
work="$HOMEPLANE_ROOT/.homeplane/bench-realnode"
trap '"$HOMEPLANE_ROOT/scripts/cluster.sh" down "$work" >/dev/null 2>&1' EXIT
"$HOMEPLANE_ROOT/scripts/cluster.sh" up "$work" 2>/dev/null

startups=()
for _ in 1 2 3; do
  "$HOMEPLANE_ROOT/scripts/realnode.sh" down "$work" 2>/dev/null
  "$HOMEPLANE_ROOT/scripts/realnode.sh" up "$work" 2>/dev/null
  startups+=("$(cat "$work/node/startup-seconds")")
done
sleep 60
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
total=0
lines=()
while read -r name pid; do
  kib=$(rss "$pid"); total=$((total + kib))
  lines+=("  $name: $((kib / 1024)) MiB")
done < "$work/node/pids"
holder=$(sed -n 's/^holder //p' "$work/node/ns")
total=$((total + $(rss "$holder")))

mkdir -p bench/results
{
  echo "# homeplane real node — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores"
  echo "realnode.sh up, programs built and images imported (s, three starts): ${startups[*]}"
  echo "memory at rest, RSS of the node's programs after 60 s without pods: $((total / 1024)) MiB"
  printf '%s\n' "${lines[@]}"
} | tee bench/results/realnode.txt
