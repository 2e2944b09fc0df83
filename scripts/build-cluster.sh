#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok) and helm from the official Go modules into a cache
# outside the clone, keyed by the go.mod/go.sum files, and prints the bin dir.
# A second run with the same lock files builds nothing.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

K8S_VERSION=v1.37.2
mod="$HOMEPLANE_ROOT/tests/cluster"
key=$(cache_key "$mod/go.mod" "$mod/go.sum" "$mod/kwok/go.mod" "$mod/kwok/go.sum" \
  "$mod/kwok/stages/main.go" "$mod/helm/go.mod" "$mod/helm/go.sum" "$0")
bin="$HOMEPLANE_CACHE/cluster/$key/bin"
tools=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)

missing=0
for t in "${tools[@]}"; do [ -x "$bin/$t" ] || missing=1; done
[ -s "$bin/kwok-stages.yaml" ] || missing=1
if [ "$missing" = 0 ]; then echo "$bin"; exit 0; fi

command -v go >/dev/null || die "go is not installed (the polyglot machine ships Go 1.26)"
mkdir -p "$bin.partial"
start=$(date +%s)
ver=k8s.io/component-base/version
cgo=k8s.io/client-go/pkg/version
ldflags="-s -w"
for p in "$ver" "$cgo"; do
  ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=37"
  ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=2026-01-01T00:00:00Z"
done
log "building the Kubernetes $K8S_VERSION control plane and etcd (first run on a machine: 10-20 min)"
(cd "$mod" && go build -ldflags "$ldflags" -o "$bin.partial/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubectl)
(cd "$mod" && go build -ldflags "-s -w" -o "$bin.partial/etcd" go.etcd.io/etcd/server/v3)
log "building kwok"
(cd "$mod/kwok" && go build -ldflags "-s -w" -o "$bin.partial/" sigs.k8s.io/kwok/cmd/kwok \
  && go run ./stages > "$bin.partial/kwok-stages.yaml")
log "building helm"
(cd "$mod/helm" && go build -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v3.22.0" \
  -o "$bin.partial/" helm.sh/helm/v3/cmd/helm)
rm -rf "$bin" && mv "$bin.partial" "$bin"
log "control plane built in $(( $(date +%s) - start ))s into $bin"
echo "$bin"
