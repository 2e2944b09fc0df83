#!/usr/bin/env bash
# Starts and stops a local S3-compatible server: Versity's S3 gateway (versitygw, built from its
# Go module into the cache) with the POSIX backend, so objects live as files under DIR/data. It
# checks SigV4 signatures, supports multipart uploads (with UploadPartCopy) and conditional
# writes, and is started with region `auto` like Cloudflare R2. The root credentials are
# generated and written with the endpoint to DIR/env (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_REGION).
#
#   scripts/s3.sh up DIR | down DIR | bin
set -euo pipefail
source "$(dirname "$0")/lib.sh"

VERSITYGW_VERSION=v1.8.0

# bin prints the path of the versitygw binary, building it on first use.
bin() {
  go_binary "$HOMEPLANE_CACHE/s3/versitygw-$VERSITYGW_VERSION" \
    "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION" versitygw
}

cmd="${1:-}"
if [ "$cmd" = bin ]; then bin; exit 0; fi
dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 up|down DIR | bin"
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"

running() { [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; }

up() {
  if [ -f "$dir/env" ] && running; then log "S3 server already up ($dir)"; return 0; fi
  local exe port access secret
  exe="$(bin)"
  port=$(free_port)
  if [ ! -f "$dir/credentials" ]; then
    printf '%s %s\n' "hp$(openssl rand -hex 8)" "$(openssl rand -hex 20)" > "$dir/credentials"
    chmod 600 "$dir/credentials"
  fi
  read -r access secret < "$dir/credentials"
  mkdir -p "$dir/data"
  ROOT_ACCESS_KEY_ID="$access" ROOT_SECRET_ACCESS_KEY="$secret" setsid "$exe" --quiet \
    --port "127.0.0.1:$port" --region auto posix "$dir/data" > "$dir/s3.log" 2>&1 < /dev/null &
  echo $! > "$dir/pid"
  for _ in $(seq 1 100); do
    if curl -s -o /dev/null "http://127.0.0.1:$port/"; then break; fi
    running || die "the S3 server exited at start-up; see $dir/s3.log"
    sleep 0.1
  done
  curl -s -o /dev/null "http://127.0.0.1:$port/" || die "the S3 server did not answer; see $dir/s3.log"
  {
    echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$port"
    echo "export AWS_ACCESS_KEY_ID=$access"
    echo "export AWS_SECRET_ACCESS_KEY=$secret"
    echo "export AWS_REGION=auto"
  } > "$dir/env"
  chmod 600 "$dir/env"
  log "S3 server (versitygw $VERSITYGW_VERSION) up on 127.0.0.1:$port ($dir)"
}

down() {
  running || return 0
  kill "$(cat "$dir/pid")" 2>/dev/null || true
  for _ in $(seq 1 50); do running || break; sleep 0.1; done
  rm -f "$dir/pid"
  log "S3 server in $dir stopped"
}

case "$cmd" in
  up)
    up
    # A test process that started its own server gets it stopped when it exits.
    if [ -n "${HOMEPLANE_S3_OWNER_PID:-}" ]; then
      setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" down "$3"' _ \
        "$HOMEPLANE_S3_OWNER_PID" "$0" "$dir" > /dev/null 2>&1 < /dev/null &
    fi
    ;;
  down) down ;;
  *) die "usage: $0 up|down DIR | bin" ;;
esac
