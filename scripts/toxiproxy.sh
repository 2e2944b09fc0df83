#!/usr/bin/env bash
# Toxiproxy (Shopify's fault-injecting TCP proxy), built from its Go module into the cache like
# the control plane, for the fault-matrix tests: it sits between the operator and a server (the
# API server, PostgreSQL, S3) and cuts, slows or resets connections on request.
#
#   scripts/toxiproxy.sh bin         print the path of toxiproxy-server, building it on first use
#   scripts/toxiproxy.sh up DIR      start a server on a free loopback port; DIR/env has TOXIPROXY_URL
#   scripts/toxiproxy.sh down DIR    stop it
set -euo pipefail
source "$(dirname "$0")/lib.sh"

TOXIPROXY_VERSION=v2.5.0

bin() {
  go_binary "$HOMEPLANE_CACHE/toxiproxy-$TOXIPROXY_VERSION" \
    "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION" toxiproxy-server
}

cmd="${1:-}"
if [ "$cmd" = bin ]; then bin; exit 0; fi
dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 up|down DIR | bin"
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"

running() { [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; }

up() {
  if [ -f "$dir/env" ] && running; then log "toxiproxy already up ($dir)"; return 0; fi
  local exe port
  exe="$(bin)"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  setsid "$exe" -host 127.0.0.1 -port "$port" > "$dir/toxiproxy.log" 2>&1 < /dev/null &
  echo $! > "$dir/pid"
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/version" >/dev/null && break
    running || die "toxiproxy exited at start-up; see $dir/toxiproxy.log"
    sleep 0.1
  done
  echo "export TOXIPROXY_URL=http://127.0.0.1:$port" > "$dir/env"
  log "toxiproxy up on 127.0.0.1:$port ($dir)"
}

down() {
  running || return 0
  kill "$(cat "$dir/pid")" 2>/dev/null || true
  rm -f "$dir/pid"
}

case "$cmd" in
  up)
    up
    # A test process that started its own proxy gets it stopped when it exits.
    if [ -n "${HOMEPLANE_TOXIPROXY_OWNER_PID:-}" ]; then
      setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" down "$3"' _ \
        "$HOMEPLANE_TOXIPROXY_OWNER_PID" "$0" "$dir" > /dev/null 2>&1 < /dev/null &
    fi
    ;;
  down) down ;;
  *) die "usage: $0 up|down DIR | bin" ;;
esac
