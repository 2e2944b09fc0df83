# Shared settings for homeplane's scripts: where the build caches live.
# Sourced, not run.
HOMEPLANE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOMEPLANE_CACHE="${HOMEPLANE_CACHE:-$HOME/.cache/homeplane}"
export GOMODCACHE="${GOMODCACHE_OVERRIDE:-$HOMEPLANE_CACHE/go/mod}"
export GOCACHE="${GOCACHE_OVERRIDE:-$HOMEPLANE_CACHE/go/build}"
export GOFLAGS="-mod=mod -buildvcs=false"
# Cargo's intermediate artifacts are shared by every checkout (a second clone rebuilds
# nothing it already built); the final artifacts (the `homeplane` binary the tests start) are
# per checkout, so that two checkouts building side by side never run each other's binary.
export CARGO_BUILD_BUILD_DIR="${CARGO_BUILD_BUILD_DIR:-$HOMEPLANE_CACHE/target}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOMEPLANE_CACHE/out/$(printf '%s' "$HOMEPLANE_ROOT" | sha256sum | cut -c1-12)}"
# No incremental compilation: every checkout (and every change of features) kept its own
# incremental state of the workspace crates in the shared build directory, which grew to 27 GB
# and filled the disk; a fresh checkout rebuilds its own crates once anyway (below).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# The workspace's own crates get the same artifact names in every checkout, and cargo judges
# them fresh by the files of the checkout that built them last. So when the build directory
# was last used by another checkout, this checkout's sources are touched: its own crates are
# rebuilt once, and the dependencies stay shared.
claim_build_dir() {
  local mark="$CARGO_BUILD_BUILD_DIR/.homeplane-checkout"
  mkdir -p "$CARGO_BUILD_BUILD_DIR"
  if [ "$(cat "$mark" 2>/dev/null)" != "$HOMEPLANE_ROOT" ]; then
    find "$HOMEPLANE_ROOT"/{crds,state,backups,operator,tests/support} -name '*.rs' \
      -not -path '*/target/*' -exec touch {} + 2>/dev/null || true
    printf '%s\n' "$HOMEPLANE_ROOT" > "$mark"
  fi
}
claim_build_dir
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# free_port prints a TCP port that is free on 127.0.0.1, chosen at random below the kernel's
# ephemeral range. A port the kernel hands out (to a bind to port 0, or to an outgoing
# connection) could be handed out again before a slow server binds the one printed here: an n8n
# that took ten seconds to start found its port taken by another test's listener.
free_port() {
  python3 - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(100):
    port = random.randint(max(1024, low - 12000), low - 1)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])
PY
}

# cache_key FILE... prints a short hash of the files' contents.
cache_key() { cat "$@" | sha256sum | cut -c1-16; }

# pg_bindir prints the folder of the newest installed PostgreSQL server binaries.
pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && echo "$d"
}

# go_binary OUT PKG@VERSION NAME: builds the Go command PKG at VERSION once into OUT (a folder
# of the cache) as NAME, and prints its path.
go_binary() {
  local out="$1" pkg="$2" name="$3" built
  if [ ! -x "$out/$name" ]; then
    command -v go >/dev/null || die "go is not installed (the polyglot machine ships Go 1.26)"
    log "building $pkg (first run on a machine: a minute or a few)"
    rm -rf "$out.partial" && mkdir -p "$out.partial"
    GOBIN="$out.partial" go install -ldflags "-s -w" "$pkg" >&2
    built="$(basename "${pkg%@*}")"
    [ "$built" = "$name" ] || mv "$out.partial/$built" "$out.partial/$name"
    rm -rf "$out" && mv "$out.partial" "$out"
  fi
  echo "$out/$name"
}
