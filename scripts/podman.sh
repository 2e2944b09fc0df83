#!/usr/bin/env bash
# Starts and stops Podman's Docker-compatible API service (Debian's podman) on a unix socket in
# DIR, with its own storage and configuration there: runc with cgroupfs (crun refuses this
# machine's hybrid cgroups), no network for containers, file-descriptor and process limits
# that a sandbox lets a container set. DIR/env exports what podman and clients need
# (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF, XDG_RUNTIME_DIR, DOCKER_HOST).
#
#   scripts/podman.sh up DIR | down DIR
set -euo pipefail
source "$(dirname "$0")/lib.sh"

cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 up|down DIR"
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
command -v podman >/dev/null || die "podman is not installed; run scripts/setup.sh"

write_config() {
  mkdir -p "$dir/storage" "$dir/run" "$dir/xdg" "$dir/networks"
  chmod 700 "$dir/xdg"
  cat > "$dir/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
netns = "none"
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_config_dir = "$dir/networks"
CONF
  cat > "$dir/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$dir/storage"
runroot = "$dir/run"
CONF
  cat > "$dir/env" <<ENV
export CONTAINERS_CONF="$dir/containers.conf"
export CONTAINERS_STORAGE_CONF="$dir/storage.conf"
export XDG_RUNTIME_DIR="$dir/xdg"
export DOCKER_HOST="unix://$dir/podman.sock"
ENV
}

up() {
  if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    log "Podman API service already up ($dir)"; return 0
  fi
  write_config
  # shellcheck disable=SC1091
  source "$dir/env"
  rm -f "$dir/podman.sock"
  setsid podman system service --time=0 "unix://$dir/podman.sock" \
    > "$dir/service.log" 2>&1 < /dev/null &
  echo $! > "$dir/pid"
  for _ in $(seq 1 100); do
    if curl -sf --unix-socket "$dir/podman.sock" http://d/_ping >/dev/null 2>&1; then
      log "Podman API service up on unix://$dir/podman.sock"
      return 0
    fi
    sleep 0.2
  done
  cat "$dir/service.log" >&2
  die "the Podman API service did not answer on $dir/podman.sock"
}

down() {
  [ -f "$dir/env" ] || return 0
  # shellcheck disable=SC1091
  source "$dir/env"
  podman rm --all --force --time 0 >/dev/null 2>&1 || true
  if [ -f "$dir/pid" ]; then
    kill "$(cat "$dir/pid")" 2>/dev/null || true
    rm -f "$dir/pid"
  fi
  # Podman leaves its overlay storage mounted, sometimes more than once (each podman command
  # may mount it); unmount every layer so that the folder can be removed.
  local n=0
  while [ "$n" -lt 20 ] && umount "$dir/storage/overlay" 2>/dev/null; do n=$((n + 1)); done
  log "Podman API service in $dir stopped"
}

case "$cmd" in
  up)
    up
    # A test process that started its own service gets it stopped when it exits.
    if [ -n "${HOMEPLANE_PODMAN_OWNER_PID:-}" ]; then
      setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" down "$3"' _ \
        "$HOMEPLANE_PODMAN_OWNER_PID" "$0" "$dir" > /dev/null 2>&1 < /dev/null &
    fi
    ;;
  down) down ;;
  *) die "usage: $0 up|down DIR" ;;
esac
