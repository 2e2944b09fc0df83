#!/usr/bin/env bash
# Installs what homeplane's demo and tests need and a fresh machine of this kind lacks:
# Debian packages (openssl, curl, git, PostgreSQL, age, zstd, podman, npm, g++, Chromium, containerd,
# mmdebstrap), the Go-built control plane, Flux's controllers and Git server, the real node's
# programs and images, the local S3 server (versitygw), n8n on Node 22 (from npm), and Prometheus
# and Alertmanager (Debian's). Idempotent and quiet when everything is there.
#
#   scripts/setup.sh        everything (make test, the benchmarks)
#   scripts/setup.sh demo   what `make demo` runs on: not the real node, the fuzzers' compiler,
#                           Chromium or the fault proxy (on a fresh machine that was ~5 of its 37
#                           minutes); `make test` installs them later
set -euo pipefail
source "$(dirname "$0")/lib.sh"
only_demo=no
[ "${1:-}" = demo ] && only_demo=yes

need=()
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v git >/dev/null || need+=(git)
command -v python3 >/dev/null || need+=(python3)
command -v npm >/dev/null || need+=(npm)
[ -x "$(pg_bindir 2>/dev/null)/initdb" ] || need+=(postgresql postgresql-contrib)
command -v age >/dev/null || need+=(age)
command -v zstd >/dev/null || need+=(zstd)
# Podman's Docker-compatible API (the state registry's docker observer), runc (crun refuses
# hybrid cgroups) and a static busybox for the test image built with `podman import`.
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
if [ "$only_demo" = no ]; then
  # libFuzzer (compiled by libfuzzer-sys for scripts/fuzz.sh) is C++.
  command -v c++ >/dev/null || need+=(g++)
  # The real node (scripts/realnode.sh): Debian's containerd, and mmdebstrap for its images.
  command -v containerd >/dev/null || need+=(containerd)
  command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
  command -v iptables >/dev/null || need+=(iptables)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
fi
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian's Chromium and its WebDriver (one source package, so their versions match) and a font,
# for the dashboard's browser tests; without recommends (about 230 MB).
browser=()
[ "$only_demo" = yes ] || {
command -v chromium >/dev/null || browser+=(chromium)
command -v chromedriver >/dev/null || browser+=(chromium-driver)
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || browser+=(fonts-dejavu-core)
}
if [ ${#browser[@]} -gt 0 ]; then
  log "installing Debian packages: ${browser[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${browser[@]}" >/dev/null
fi
command -v go >/dev/null || die "Go is missing (the machine should ship Go 1.26)"
command -v cargo >/dev/null || die "Rust is missing (the machine should ship cargo)"
# n8n comes from npm: mostly downloading and unpacking, so it goes on while the Go programs
# build (on a fresh machine, about 3 minutes of the builds' time).
n8n_log="$HOMEPLANE_CACHE/n8n-install.log"
mkdir -p "$HOMEPLANE_CACHE"
"$HOMEPLANE_ROOT/scripts/n8n.sh" install > /dev/null 2> "$n8n_log" &
n8n_pid=$!
"$HOMEPLANE_ROOT/scripts/build-cluster.sh" >/dev/null
"$HOMEPLANE_ROOT/scripts/build-flux.sh" >/dev/null
if [ "$only_demo" = no ]; then
  "$HOMEPLANE_ROOT/scripts/build-realnode.sh" >/dev/null
  "$HOMEPLANE_ROOT/scripts/realnode-images.sh" build >/dev/null
  "$HOMEPLANE_ROOT/scripts/toxiproxy.sh" bin >/dev/null
fi
"$HOMEPLANE_ROOT/scripts/s3.sh" bin >/dev/null
wait "$n8n_pid" || { cat "$n8n_log" >&2; die "installing n8n failed (log above, also in $n8n_log)"; }
cat "$n8n_log" >&2
# Prometheus and Alertmanager (Debian's; promtool and amtool with them) for the alert rules'
# tests and the demo, and the Prometheus Operator's CRDs for the chart test.
"$HOMEPLANE_ROOT/scripts/prometheus.sh" install
[ "$only_demo" = yes ] || "$HOMEPLANE_ROOT/scripts/prometheus.sh" crds >/dev/null
