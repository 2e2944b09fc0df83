#!/usr/bin/env bash
# Builds the real node's programs into a cache outside the clone and prints the bin dir:
#   kubelet, kube-proxy  from k8s.io/kubernetes v1.37.2, the control plane's module (tests/cluster)
#   coredns              CoreDNS v1.15.0 with only the plugins the node uses (tests/realnode)
#   forward              the TCP forwarder that lets pods reach servers on the host's loopback
#   pause                the pod sandbox's program, compiled statically from the kubernetes
#                        module's build/pause/linux/pause.c (no image can be pulled here)
# Keyed by the modules' lock files and sources: a second run builds nothing.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

K8S_VERSION=v1.37.2
PAUSE_VERSION=3.10.2
cluster="$HOMEPLANE_ROOT/tests/cluster"
node="$HOMEPLANE_ROOT/tests/realnode"
key=$(cache_key "$cluster/go.mod" "$cluster/go.sum" "$node/go.mod" "$node/go.sum" \
  "$node/coredns/main.go" "$node/forward/main.go" "$0")
bin="$HOMEPLANE_CACHE/realnode/$key/bin"
tools=(kubelet kube-proxy coredns forward pause)

missing=0
for t in "${tools[@]}"; do [ -x "$bin/$t" ] || missing=1; done
if [ "$missing" = 0 ]; then echo "$bin"; exit 0; fi

command -v go >/dev/null || die "go is not installed (the polyglot machine ships Go 1.26)"
command -v gcc >/dev/null || die "gcc is missing (it compiles the pause program)"
rm -rf "$bin.partial" && mkdir -p "$bin.partial"
start=$(date +%s)
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=37"
  ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=2026-01-01T00:00:00Z"
done
log "building kubelet and kube-proxy $K8S_VERSION (about a CPU minute on a warm cache)"
(cd "$cluster" && go build -ldflags "$ldflags" -o "$bin.partial/" \
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
log "building CoreDNS and the forwarder (about two CPU minutes the first time)"
(cd "$node" && go build -ldflags "-s -w" -o "$bin.partial/" ./coredns ./forward)
pause_c="$(cd "$cluster" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
gcc -Os -static -DVERSION="v$PAUSE_VERSION" -o "$bin.partial/pause" "$pause_c"
strip "$bin.partial/pause"
rm -rf "$bin" && mv "$bin.partial" "$bin"
log "real node programs built in $(( $(date +%s) - start ))s into $bin"
echo "$bin"
