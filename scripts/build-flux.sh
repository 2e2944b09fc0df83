#!/usr/bin/env bash
# Builds Flux's source-controller and kustomize-controller (v1.9.6, from their Go modules) and
# the local Git server (tests/cluster/flux/gitserver) into a cache outside the clone, keyed by
# the module's go.mod/go.sum, the server's source and this script, and copies the controllers'
# CRDs out of the module zips. Prints the cache folder (bin/ and crds/ inside). A second run
# with the same files builds nothing; the first on a machine takes 10-15 min of both cores.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

FLUX_CONTROLLERS_VERSION=v1.9.6
mod="$HOMEPLANE_ROOT/tests/cluster/flux"
key=$(cache_key "$mod/go.mod" "$mod/go.sum" "$mod/gitserver/main.go" "$0")
out="$HOMEPLANE_CACHE/flux/$key"
tools=(source-controller kustomize-controller gitserver)

missing=0
for t in "${tools[@]}"; do [ -x "$out/bin/$t" ] || missing=1; done
[ -s "$out/crds/kustomize.toolkit.fluxcd.io_kustomizations.yaml" ] || missing=1
if [ "$missing" = 0 ]; then echo "$out"; exit 0; fi

command -v go >/dev/null || die "go is not installed (the polyglot machine ships Go 1.26)"
command -v git >/dev/null || die "git is not installed (the Git server runs git http-backend)"
rm -rf "$out.partial" && mkdir -p "$out.partial/bin" "$out.partial/crds"
start=$(date +%s)
log "building Flux's source-controller and kustomize-controller $FLUX_CONTROLLERS_VERSION (first run on a machine: 10-15 min)"
# GOFLAGS=-mod=mod (lib.sh): the wrapper module lists only the controllers; their own
# requirements resolve from go.sum. No `go mod tidy` (see go.mod).
(cd "$mod" && go build -ldflags "-s -w" -o "$out.partial/bin/" \
  github.com/fluxcd/source-controller \
  github.com/fluxcd/kustomize-controller \
  ./gitserver)
for m in source-controller kustomize-controller; do
  dir=$(cd "$mod" && go list -m -f '{{.Dir}}' "github.com/fluxcd/$m")
  cp "$dir"/config/crd/bases/*.yaml "$out.partial/crds/"
done
chmod -R u+w "$out.partial/crds"
rm -rf "$out" && mv "$out.partial" "$out"
log "Flux built in $(( $(date +%s) - start ))s into $out"
echo "$out"
