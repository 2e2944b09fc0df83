#!/usr/bin/env bash
# Regenerates the committed CRD YAML (crds/generated/, the Helm chart's crds/ and
# manifests/base/crds/) from the Rust
# API types with `homeplane crd`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$HOMEPLANE_ROOT"
cargo build -q -p homeplane-operator
rm -f {crds/generated,charts/homeplane/crds,manifests/base/crds}/*.homeplane.dev.yaml
"$CARGO_TARGET_DIR/debug/homeplane" crd --out crds/generated
cp crds/generated/*.homeplane.dev.yaml charts/homeplane/crds/
cp crds/generated/*.homeplane.dev.yaml manifests/base/crds/
log "CRDs written to crds/generated/, charts/homeplane/crds/ and manifests/base/crds/"
