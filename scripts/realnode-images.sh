#!/usr/bin/env bash
# Builds the images the real node runs, from Debian packages and the project's own files, as
# OCI archives that `ctr images import` loads (no registry can be reached and no container
# engine runs here). Root file systems come from mmdebstrap (Debian trixie, minbase, without
# documentation, as Debian's slim images); everything is cached outside the clone.
#
#   scripts/realnode-images.sh build           the node's images (below), cached by this
#                                              script's content; prints the archive's path
#   scripts/realnode-images.sh operator BINARY the operator's image with BINARY (the one the
#                                              tests build); prints "REFERENCE ARCHIVE"
#
# The node's images (one archive; postgres, redis, toolbox and example-agent share one base
# layer, stored and unpacked once):
#   localhost/homeplane/pause:3.10.2          the pod sandbox (pause.c of the kubernetes module)
#   localhost/homeplane/busybox:1             Debian's busybox-static
#   localhost/homeplane/postgres:17           PostgreSQL 17 + pgvector, the official image's
#                                             POSTGRES_* / PGDATA contract
#   localhost/homeplane/redis:8               redis-server, as the official image runs it
#   localhost/homeplane/toolbox:1             psql, redis-cli, curl, tar, sha256sum; sleeps
#   localhost/homeplane/example-agent:0.1     examples/agent/agent.sh on curl
# The operator's image is the Containerfile's runtime stage: ca-certificates and the
# PostgreSQL 17 client tools on trixie, /usr/local/bin/homeplane, user 65532.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

images="$HOMEPLANE_ROOT/tests/realnode/images"
cache="$HOMEPLANE_CACHE/realnode/images"
SUITE=trixie
# Debian's slim images leave out documentation, manual pages and translations.
SLIM=(--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*')
OPERATOR_PACKAGES=ca-certificates,postgresql-client-17
SERVICE_PACKAGES=ca-certificates,curl,postgresql-17,postgresql-17-pgvector,redis-server,redis-tools
PG_PATH=/usr/lib/postgresql/17/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# rootfs NAME PACKAGES prints the path of a cached minbase root file system (a tar) with
# PACKAGES, making it with mmdebstrap the first time.
rootfs() {
  local out="$cache/rootfs/$1-$(printf '%s %s' "$2" "${SLIM[*]}" | sha256sum | cut -c1-16).tar"
  if [ ! -s "$out" ]; then
    command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: run scripts/setup.sh"
    mkdir -p "$(dirname "$out")"
    log "building the $1 root file system from Debian $SUITE packages (about a minute)"
    mmdebstrap --quiet --mode=unshare --format=tar --variant=minbase --include="$2" "${SLIM[@]}" \
      "$SUITE" "$out.partial" >&2
    mv "$out.partial" "$out"
  fi
  echo "$out"
}

build() {
  local key out
  key=$(cache_key "$0" "$images/oci.py" "$images/postgres-entrypoint.sh" \
    "$images/redis-entrypoint.sh" "$HOMEPLANE_ROOT/examples/agent/agent.sh")
  out="$cache/node-$key.tar"
  if [ -s "$out" ]; then echo "$out"; return 0; fi
  local bin services busybox_files
  bin="$("$HOMEPLANE_ROOT/scripts/build-realnode.sh")"
  services="$(rootfs services "$SERVICE_PACKAGES")"
  [ -x /usr/bin/busybox ] || die "busybox-static is missing: run scripts/setup.sh"
  busybox_files=$(/usr/bin/busybox --list | grep -vx busybox | python3 -c '
import json, sys
files = [{"path": "/bin/busybox", "src": "/usr/bin/busybox", "mode": 0o755},
         {"path": "/tmp", "dir": True, "mode": 0o1777}]
files += [{"path": "/bin/" + a.strip(), "link": "busybox"} for a in sys.stdin if a.strip()]
print(json.dumps(files))')
  log "writing the real node's images"
  python3 "$images/oci.py" >&2 <<JSON
{"out": "$out", "images": [
  {"name": "localhost/homeplane/pause:3.10.2",
   "layers": [{"files": [{"path": "/pause", "src": "$bin/pause", "mode": 493}]}],
   "config": {"Entrypoint": ["/pause"], "User": "65535:65535"}},
  {"name": "localhost/homeplane/busybox:1",
   "layers": [{"files": $busybox_files}],
   "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]}},
  {"name": "localhost/homeplane/postgres:17",
   "layers": ["$services", {"files": [{"path": "/usr/local/bin/docker-entrypoint.sh",
      "src": "$images/postgres-entrypoint.sh", "mode": 493},
      {"path": "/docker-entrypoint-initdb.d", "dir": true}]}],
   "config": {"Entrypoint": ["docker-entrypoint.sh"], "Cmd": ["postgres"],
              "Env": ["PATH=$PG_PATH", "PGDATA=/var/lib/postgresql/data", "LANG=C.UTF-8"],
              "ExposedPorts": {"5432/tcp": {}}, "StopSignal": "SIGINT"}},
  {"name": "localhost/homeplane/redis:8",
   "layers": ["$services", {"files": [{"path": "/usr/local/bin/docker-entrypoint.sh",
      "src": "$images/redis-entrypoint.sh", "mode": 493}]}],
   "config": {"Entrypoint": ["docker-entrypoint.sh"], "Cmd": ["redis-server"],
              "ExposedPorts": {"6379/tcp": {}}}},
  {"name": "localhost/homeplane/toolbox:1",
   "layers": ["$services"],
   "config": {"Cmd": ["sleep", "infinity"], "Env": ["PATH=$PG_PATH", "LANG=C.UTF-8"]}},
  {"name": "localhost/homeplane/example-agent:0.1",
   "layers": ["$services", {"files": [{"path": "/agent/run.sh",
      "src": "$HOMEPLANE_ROOT/examples/agent/agent.sh", "mode": 493}]}],
   "config": {"Entrypoint": ["/agent/run.sh"]}}
]}
JSON
  # Keep only this version of the archive.
  find "$cache" -maxdepth 1 -name 'node-*.tar' ! -name "node-$key.tar" -delete
  echo "$out"
}

operator() {
  local binary="$1" sum ref out
  [ -x "$binary" ] || die "no operator binary at $binary"
  sum=$(sha256sum "$binary" | cut -c1-12)
  ref="localhost/homeplane/homeplane:test-$sum"
  out="$cache/operator/$sum.tar"
  if [ ! -s "$out" ]; then
    local base tmp
    base="$(rootfs operator "$OPERATOR_PACKAGES")"
    mkdir -p "$cache/operator"
    tmp=$(mktemp -d "$cache/operator/build.XXXXXX")
    # The debug information is not needed to run it, and is most of the file.
    strip --strip-debug -o "$tmp/homeplane" "$binary"
    python3 "$images/oci.py" >/dev/null <<JSON
{"out": "$out", "images": [
  {"name": "$ref",
   "layers": ["$base", {"files": [{"path": "/usr/local/bin/homeplane", "src": "$tmp/homeplane", "mode": 493}]}],
   "config": {"Entrypoint": ["/usr/local/bin/homeplane"], "Cmd": ["run"], "User": "65532:65532",
              "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}}
]}
JSON
    rm -rf "$tmp"
    # The archives of the three newest binaries are kept.
    ls -t "$cache/operator"/*.tar | tail -n +4 | xargs -r rm -f
  fi
  echo "$ref $out"
}

case "${1:-}" in
  build) build ;;
  operator) [ -n "${2:-}" ] || die "usage: $0 operator BINARY"; operator "$2" ;;
  *) die "usage: $0 build | operator BINARY" ;;
esac
