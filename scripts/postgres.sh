#!/usr/bin/env bash
# Starts and stops a throwaway PostgreSQL server (Debian's) on a private loopback port, with its
# data in DIR and TLS on (a self-signed certificate). The server runs as the `postgres` system
# user (PostgreSQL refuses to run as root); the superuser `postgres` gets a generated password
# written to DIR/env as DATABASE_URL.
#
#   scripts/postgres.sh up DIR | down DIR
#
# POSTGRES_LISTEN (an address, default 127.0.0.1), POSTGRES_PORT (default: a free one) and
# POSTGRES_PASSWORD (default: generated) set the server up as a container of the postgres image
# would be; tests use them to run the server of a simulated pod at the pod's address.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 up|down DIR"
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
bindir="$(pg_bindir)" || die "PostgreSQL is not installed; run scripts/setup.sh"

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

up() {
  if [ -f "$dir/env" ] && as_owner "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    log "PostgreSQL already up ($dir)"; return 0
  fi
  local port password listen="${POSTGRES_LISTEN:-127.0.0.1}"
  # A server started again keeps its address (what it served is configured with it).
  port=${POSTGRES_PORT:-}
  if [ -z "$port" ] && [ -f "$dir/env" ]; then
    port=$(sed -n 's|.*@[^:]*:\([0-9]*\)/.*|\1|p' "$dir/env")
  fi
  port=${port:-$(free_port)}
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    password=${POSTGRES_PASSWORD:-$(openssl rand -hex 16)}
    printf '%s\n' "$password" > "$dir/password"
    chmod 600 "$dir/password"
    [ "$(id -u)" = 0 ] && chown postgres "$dir" "$dir/password"
    as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=scram-sha-256 \
      --pwfile="$dir/password" -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  password=$(cat "$dir/password")
  # TLS with a self-signed certificate, so clients can be tested with sslmode=require.
  if [ ! -f "$dir/data/server.key" ]; then
    as_owner openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=localhost" \
      -keyout "$dir/data/server.key" -out "$dir/data/server.crt" 2>/dev/null
    chmod 600 "$dir/data/server.key"
  fi
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 30 start \
    -o "-c listen_addresses=$listen -c port=$port -c unix_socket_directories=$dir -c fsync=off -c ssl=on" >/dev/null
  echo "export DATABASE_URL=postgres://postgres:$password@$listen:$port/postgres" > "$dir/env"
  chmod 600 "$dir/env"
  log "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') up on $listen:$port ($dir)"
}

down() {
  [ -f "$dir/data/PG_VERSION" ] || return 0
  as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  log "PostgreSQL in $dir stopped"
}

case "$cmd" in
  up)
    up
    # A test process that started its own server gets it stopped when it exits.
    if [ -n "${HOMEPLANE_POSTGRES_OWNER_PID:-}" ]; then
      setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" down "$3"' _ \
        "$HOMEPLANE_POSTGRES_OWNER_PID" "$0" "$dir" > /dev/null 2>&1 < /dev/null &
    fi
    ;;
  down) down ;;
  *) die "usage: $0 up|down DIR" ;;
esac
