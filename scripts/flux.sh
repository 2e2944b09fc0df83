#!/usr/bin/env bash
# Starts and stops Flux for the tests and the demo: a Git server on loopback speaking Git's
# smart HTTP protocol (tests/cluster/flux/gitserver: `git http-backend` behind net/http/cgi,
# serving the bare repositories in DIR/git), and Flux's source-controller and
# kustomize-controller (v1.9.6, built by scripts/build-flux.sh) running outside the cluster the
# way Flux's own `make run` does, against the cluster of KUBECONFIG. Flux's CRDs and the
# flux-system namespace are installed first.
#
#   scripts/flux.sh up DIR KUBECONFIG   start (or find running) Flux with its state in DIR
#   scripts/flux.sh down DIR            stop it (DIR is kept, so logs can be read)
#   scripts/flux.sh status DIR          exit 0 when it is up
#
# DIR/env exports FLUX_GIT_URL (repositories are FLUX_GIT_URL/NAME.git, pushes need no
# credentials), FLUX_GIT_ROOT (make a repository there with `git init --bare NAME.git`) and
# FLUX_BIN. Logs are in DIR/logs.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 up DIR KUBECONFIG | down DIR | status DIR"
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"

running() {
  [ -f "$dir/pids" ] && [ -f "$dir/env" ] || return 1
  while read -r _ pid; do kill -0 "$pid" 2>/dev/null || return 1; done < "$dir/pids"
}

stop() {
  [ -f "$dir/pids" ] || return 0
  tac "$dir/pids" | while read -r _ pid; do
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -f "$dir/pids"
}

start() { # start NAME ENV... -- BINARY ARGS...
  local name=$1; shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" setsid "$@" > "$dir/logs/$name.log" 2>&1 < /dev/null &
  echo "$name $!" >> "$dir/pids"
}

wait_for() { # wait_for SECONDS NAME URL [CURL-FLAGS]: until URL answers (2xx with the default -f)
  local secs=$1 name=$2 url=$3 flags=${4:--sf}
  for _ in $(seq 1 $((secs * 5))); do
    curl "$flags" -o /dev/null "$url" && return 0
    grep -q "^$name " "$dir/pids" && kill -0 "$(awk -v n="$name" '$1 == n {print $2}' "$dir/pids")" 2>/dev/null \
      || { tail -n 20 "$dir/logs/$name.log" >&2; die "$name exited at start-up; see $dir/logs/$name.log"; }
    sleep 0.2
  done
  tail -n 20 "$dir/logs/$name.log" >&2
  die "$name did not answer within ${secs}s; see $dir/logs/$name.log"
}

up() {
  local kubeconfig="${1:-}"
  [ -n "$kubeconfig" ] && [ -f "$kubeconfig" ] || die "usage: $0 up DIR KUBECONFIG"
  kubeconfig="$(cd "$(dirname "$kubeconfig")" && pwd)/$(basename "$kubeconfig")"
  if running && [ "$(cat "$dir/kubeconfig-path" 2>/dev/null)" = "$kubeconfig" ]; then
    log "Flux already up ($dir)"; return 0
  fi
  stop
  local t0 flux cluster_bin; t0=$(date +%s.%N)
  flux="$("$HOMEPLANE_ROOT/scripts/build-flux.sh")"
  cluster_bin="$("$HOMEPLANE_ROOT/scripts/build-cluster.sh")"
  local kubectl=("$cluster_bin/kubectl" --kubeconfig "$kubeconfig")
  mkdir -p "$dir/logs" "$dir/git" "$dir/storage"
  echo "$kubeconfig" > "$dir/kubeconfig-path"

  "${kubectl[@]}" apply --server-side --force-conflicts -f "$flux/crds" >/dev/null
  "${kubectl[@]}" wait --for=condition=Established --timeout=60s -f "$flux/crds" >/dev/null
  "${kubectl[@]}" create namespace flux-system --dry-run=client -o yaml | "${kubectl[@]}" apply -f - >/dev/null

  local git_port storage_port source_health kustomize_health
  git_port=$(free_port); storage_port=$(free_port)
  source_health=$(free_port); kustomize_health=$(free_port)
  start gitserver -- "$flux/bin/gitserver" -root "$dir/git" -addr "127.0.0.1:$git_port"
  # Out of cluster, as Flux's `make run`: KUBECONFIG from the environment (there is no flag),
  # artifacts served on loopback, no metrics endpoint, no leader election (the default).
  local runtime=(KUBECONFIG="$kubeconfig" RUNTIME_NAMESPACE=flux-system)
  start source-controller "${runtime[@]}" -- "$flux/bin/source-controller" \
    --storage-path "$dir/storage" --storage-addr "127.0.0.1:$storage_port" \
    --storage-adv-addr "127.0.0.1:$storage_port" \
    --metrics-addr 0 --health-addr "127.0.0.1:$source_health" --log-encoding console
  # A Kustomization waiting on another (dependsOn) looks again every 5 s instead of 30 s.
  start kustomize-controller "${runtime[@]}" -- "$flux/bin/kustomize-controller" \
    --metrics-addr 0 --health-addr "127.0.0.1:$kustomize_health" --log-encoding console \
    --requeue-dependency 5s --no-remote-bases
  wait_for 30 gitserver "http://127.0.0.1:$git_port/" -s
  wait_for 60 source-controller "http://127.0.0.1:$source_health/readyz"
  wait_for 60 kustomize-controller "http://127.0.0.1:$kustomize_health/readyz"
  {
    echo "export FLUX_GIT_URL=http://127.0.0.1:$git_port"
    echo "export FLUX_GIT_ROOT=$dir/git"
    echo "export FLUX_BIN=$flux/bin"
  } > "$dir/env"
  local secs; secs=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  echo "$secs" > "$dir/startup-seconds"
  log "Flux up in ${secs}s: Git server http://127.0.0.1:$git_port (repositories in $dir/git), logs in $dir/logs"
}

case "$cmd" in
  up)
    up "${3:-}"
    # A test process that started its own Flux gets it stopped when it exits.
    if [ -n "${HOMEPLANE_FLUX_OWNER_PID:-}" ]; then
      setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" down "$3"' _ \
        "$HOMEPLANE_FLUX_OWNER_PID" "$0" "$dir" > /dev/null 2>&1 < /dev/null &
    fi
    ;;
  down) stop; log "Flux in $dir stopped" ;;
  status) running ;;
  *) die "usage: $0 up DIR KUBECONFIG | down DIR | status DIR" ;;
esac
