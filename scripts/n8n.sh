#!/usr/bin/env bash
# Installs, starts and stops the real n8n that homeplane's Workflow tests and the demo talk to.
#
#   scripts/n8n.sh install   install Node 22 and n8n (pinned by tests/n8n/package.json and its
#                            lock) into ~/.cache/homeplane/n8n, once; prints the install folder
#   scripts/n8n.sh up DIR    start n8n headless on a free loopback port with its data in DIR,
#                            create the owner and an API key on first start, and write
#                            N8N_URL and N8N_API_KEY to DIR/env
#   scripts/n8n.sh down DIR  stop it (DIR is kept)
#
# n8n 1.x runs on Node 22, which npm itself installs (`node` package); the machine's Node only
# runs npm. With HOMEPLANE_N8N_OWNER_PID set, n8n is stopped when that process exits.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

NODE_VERSION=22.23.3
pkg="$HOMEPLANE_ROOT/tests/n8n"
root="$HOMEPLANE_CACHE/n8n"
node_dir="$root/node-$NODE_VERSION"
app_dir="$root/$(cache_key "$pkg/package.json" "$pkg/package-lock.json")"

install_node() {
  [ -x "$node_dir/bin/node" ] && return 0
  command -v npm >/dev/null || die "npm is missing (the machine should ship Node and npm)"
  log "installing Node $NODE_VERSION from npm"
  rm -rf "$node_dir.partial" && mkdir -p "$node_dir.partial"
  (cd "$node_dir.partial" && echo '{"private":true}' > package.json &&
    npm install --no-save --no-audit --no-fund --loglevel=error "node@$NODE_VERSION" >/dev/null)
  # The `node` package puts the real distribution (bin/node, include/node headers) in
  # node-linux-<arch>; keep that folder as a plain Node installation.
  local dist
  dist=$(dirname "$(dirname "$(find "$node_dir.partial/node_modules" -path '*/node-linux-*/bin/node' | head -n 1)")")
  [ -x "$dist/bin/node" ] || die "npm's node@$NODE_VERSION package has no node binary"
  rm -rf "$node_dir" && mv "$dist" "$node_dir" && rm -rf "$node_dir.partial"
}

install() {
  install_node
  if [ -f "$app_dir/.installed" ]; then echo "$app_dir"; return 0; fi
  log "installing n8n from npm (first run: about 2 minutes and 1.8 GB)"
  local t0; t0=$(date +%s)
  rm -rf "$app_dir.partial" && mkdir -p "$app_dir.partial"
  cp "$pkg/package.json" "$pkg/package-lock.json" "$app_dir.partial/"
  # Native modules (sqlite3) build against Node 22's own headers, not the machine's Node.
  # `npm install` rather than `npm ci`: the lock pins every version, but npm leaves other
  # platforms' optional binaries out of it, which `npm ci` refuses (npm/cli#4828).
  (cd "$app_dir.partial" && PATH="$node_dir/bin:$PATH" npm_config_nodedir="$node_dir" \
    npm install --no-audit --no-fund --loglevel=error >"$root/install.log" 2>&1) \
    || { tail -n 30 "$root/install.log" >&2; die "npm install of n8n failed (log: $root/install.log)"; }
  touch "$app_dir.partial/.installed"
  rm -rf "$app_dir" && mv "$app_dir.partial" "$app_dir"
  log "n8n installed in $(( $(date +%s) - t0 ))s into $app_dir"
  echo "$app_dir"
}

is_up() {
  [ -f "$dir/pid" ] && [ -f "$dir/env" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null || return 1
  # shellcheck disable=SC1091
  (source "$dir/env" && curl -sf "$N8N_URL/healthz" >/dev/null)
}

# fail MESSAGE: stop the n8n this run started, show its log, and exit.
fail() { tail -n 30 "$dir/n8n.log" >&2; down >/dev/null 2>&1 || true; die "$1 (log: $dir/n8n.log)"; }

# rest METHOD PATH [JSON]: a call to n8n's internal REST API with the session cookie in DIR.
rest() {
  curl -sS -f -X "$1" "$url/rest$2" -b "$dir/cookies" -c "$dir/cookies" \
    -H 'Content-Type: application/json' ${3:+--data "$3"}
}

# access: logs in as the owner (creating it on first start), makes sure DIR/api-key holds a
# working API key (creating one with every scope n8n offers) and prints it.
access() {
  local email=owner@homeplane.test password login owner scopes body key
  password=$(cat "$dir/owner-password")
  login=$(python3 -c 'import json,sys; print(json.dumps({"emailOrLdapLoginId": sys.argv[1], "password": sys.argv[2]}))' "$email" "$password")
  rm -f "$dir/cookies"
  if ! rest POST /login "$login" >/dev/null; then
    owner=$(python3 -c 'import json,sys; print(json.dumps({"email": sys.argv[1], "firstName": "Home", "lastName": "Plane", "password": sys.argv[2]}))' "$email" "$password")
    rest POST /owner/setup "$owner" >/dev/null || return 1
    rest POST /login "$login" >/dev/null || return 1
  fi
  if [ -f "$dir/api-key" ]; then
    key=$(cat "$dir/api-key")
    curl -sf "$url/api/v1/workflows?limit=1" -H "X-N8N-API-KEY: $key" >/dev/null && { echo "$key"; return 0; }
  fi
  scopes=$(rest GET /api-keys/scopes) || return 1
  body=$(python3 -c 'import json,sys; print(json.dumps({"label": "homeplane-" + sys.argv[2], "expiresAt": None, "scopes": json.loads(sys.argv[1])["data"]}))' "$scopes" "$(date +%s%N)") || return 1
  key=$(rest POST /api-keys "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["rawApiKey"])') || return 1
  curl -sf "$url/api/v1/workflows?limit=1" -H "X-N8N-API-KEY: $key" >/dev/null || return 1
  printf '%s\n' "$key" > "$dir/api-key"; chmod 600 "$dir/api-key"
  echo "$key"
}

# start: starts n8n on a free port and waits until it answers its REST API as itself; returns
# 1 if its port was taken by another process before n8n bound it (the caller tries another).
start() {
  local port; port=$(free_port)
  url="http://127.0.0.1:$port"
  N8N_USER_FOLDER="$dir/data" N8N_PORT="$port" N8N_LISTEN_ADDRESS=127.0.0.1 N8N_HOST=127.0.0.1 \
    N8N_PROTOCOL=http N8N_SECURE_COOKIE=false N8N_ENCRYPTION_KEY="$(cat "$dir/encryption-key")" \
    N8N_DIAGNOSTICS_ENABLED=false N8N_VERSION_NOTIFICATIONS_ENABLED=false \
    N8N_TEMPLATES_ENABLED=false N8N_PERSONALIZATION_ENABLED=false N8N_HIRING_BANNER_ENABLED=false \
    N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS=true N8N_RUNNERS_ENABLED=false \
    N8N_BLOCK_ENV_ACCESS_IN_NODE=true N8N_GIT_NODE_DISABLE_BARE_REPOS=true \
    EXTERNAL_FRONTEND_HOOKS_URLS= N8N_DIAGNOSTICS_CONFIG_FRONTEND= N8N_DIAGNOSTICS_CONFIG_BACKEND= \
    DB_SQLITE_POOL_SIZE=2 N8N_LOG_LEVEL=warn NODE_ENV=production \
    setsid "$node_dir/bin/node" "$app_dir/node_modules/n8n/bin/n8n" start \
    > "$dir/n8n.log" 2>&1 < /dev/null &
  echo $! > "$dir/pid"
  # /healthz answers before the REST routes exist; /rest/settings answers once they do. Only
  # an answer naming this port comes from this n8n (a test's listener once took its port while
  # it started, and answered).
  local deadline=$((SECONDS + 180)) settings
  while [ "$SECONDS" -lt "$deadline" ]; do
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      grep -q 'is already in use' "$dir/n8n.log" && { rm -f "$dir/pid"; return 1; }
      tail -n 30 "$dir/n8n.log" >&2; die "n8n exited while starting (log: $dir/n8n.log)"
    fi
    settings=$(curl -sf "$url/rest/settings" 2>/dev/null) && [[ $settings == *"127.0.0.1:$port"* ]] && return 0
    sleep 0.2
  done
  fail "n8n did not answer on $url within 180s"
}

up() {
  if is_up; then log "n8n already up ($dir)"; return 0; fi
  down >/dev/null 2>&1 || true
  install >/dev/null
  mkdir -p "$dir/data"
  [ -f "$dir/encryption-key" ] || { openssl rand -hex 24 > "$dir/encryption-key"; chmod 600 "$dir/encryption-key"; }
  [ -f "$dir/owner-password" ] || {
    # n8n wants 8+ characters with a digit and an upper-case letter.
    echo "Hp1-$(openssl rand -hex 12)" > "$dir/owner-password"; chmod 600 "$dir/owner-password"
  }
  local t0 attempt; t0=$(date +%s)
  for attempt in 1 2 3; do
    start && break
    log "n8n's port was taken while it started; trying another"
    [ "$attempt" -lt 3 ] || die "n8n found its port taken three times (log: $dir/n8n.log)"
  done

  # The owner and the API key; n8n answers before it is quite ready, so try a few times.
  local key="" tries
  for tries in $(seq 1 30); do
    key=$(access 2>>"$dir/access.log") && break
    key=""; sleep 1
  done
  [ -n "$key" ] || fail "creating n8n's owner and API key failed (see $dir/access.log)"
  { echo "export N8N_URL=$url"; echo "export N8N_API_KEY=$key"; } > "$dir/env"
  chmod 600 "$dir/env"
  log "n8n $(version) up on $url in $(( $(date +%s) - t0 ))s ($dir)"
}

version() { sed -n 's/^  "version": "\(.*\)",$/\1/p' "$app_dir/node_modules/n8n/package.json" | head -n 1; }

down() {
  [ -f "$dir/pid" ] || return 0
  local pid; pid=$(cat "$dir/pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/pid"
  log "n8n in $dir stopped"
}

cmd="${1:-}"; dir="${2:-}"
case "$cmd" in
  install) install ;;
  up|down)
    [ -n "$dir" ] || die "usage: $0 install | up DIR | down DIR"
    mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
    if [ "$cmd" = down ]; then down; exit 0; fi
    up
    # A test process that started its own n8n gets it stopped when it exits.
    if [ -n "${HOMEPLANE_N8N_OWNER_PID:-}" ]; then
      setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" down "$3"' _ \
        "$HOMEPLANE_N8N_OWNER_PID" "$0" "$dir" > /dev/null 2>&1 < /dev/null &
    fi
    ;;
  *) die "usage: $0 install | up DIR | down DIR" ;;
esac
