#!/usr/bin/env bash
# Starts and stops the real servers the integration tests run against — the control plane
# (with the simulated nodes and the real node), Flux and its Git server, PostgreSQL, the S3
# server, Podman's Docker API and n8n — the way `make test` does, so that one test binary can be
# run against them by hand:
#
#   scripts/test-servers.sh up DIR     start them with their state in DIR; DIR/env exports
#                                      every HOMEPLANE_TEST_* variable the tests read
#   source DIR/env && cargo test -p homeplane-operator --test database
#   scripts/test-servers.sh down DIR   stop them
set -euo pipefail
source "$(dirname "$0")/lib.sh"

cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 up|down DIR"
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"

down() {
  "$HOMEPLANE_ROOT/scripts/flux.sh" down "$dir/flux"
  "$HOMEPLANE_ROOT/scripts/cluster.sh" down "$dir/cluster"
  "$HOMEPLANE_ROOT/scripts/postgres.sh" down "$dir/postgres"
  "$HOMEPLANE_ROOT/scripts/s3.sh" down "$dir/s3"
  "$HOMEPLANE_ROOT/scripts/podman.sh" down "$dir/podman"
  "$HOMEPLANE_ROOT/scripts/n8n.sh" down "$dir/n8n"
}

# value FILE NAME prints the value of `export NAME=...` in FILE.
value() { sed -n "s/^export $2=//p" "$1"; }

up() {
  # With the real node (scripts/realnode.sh) unless HOMEPLANE_REAL_NODE=0.
  HOMEPLANE_REAL_NODE="${HOMEPLANE_REAL_NODE:-1}" "$HOMEPLANE_ROOT/scripts/cluster.sh" up "$dir/cluster"
  trap 'down' ERR
  "$HOMEPLANE_ROOT/scripts/flux.sh" up "$dir/flux" "$dir/cluster/kubeconfig"
  "$HOMEPLANE_ROOT/scripts/postgres.sh" up "$dir/postgres"
  "$HOMEPLANE_ROOT/scripts/s3.sh" up "$dir/s3"
  "$HOMEPLANE_ROOT/scripts/podman.sh" up "$dir/podman"
  # A fresh n8n each time (its owner and API key are created again).
  "$HOMEPLANE_ROOT/scripts/n8n.sh" down "$dir/n8n"; rm -rf "$dir/n8n"
  "$HOMEPLANE_ROOT/scripts/n8n.sh" up "$dir/n8n"
  trap - ERR
  {
    echo "export HOMEPLANE_TEST_PODMAN_DIR=$dir/podman"
    echo "export HOMEPLANE_TEST_KUBECONFIG=$dir/cluster/kubeconfig"
    echo "export HOMEPLANE_CLUSTER_BIN=$("$HOMEPLANE_ROOT/scripts/build-cluster.sh")"
    # Flux's Git server: repositories are URL/NAME.git, made with `git init --bare` in ROOT.
    echo "export HOMEPLANE_TEST_GIT_URL=$(value "$dir/flux/env" FLUX_GIT_URL)"
    echo "export HOMEPLANE_TEST_GIT_ROOT=$(value "$dir/flux/env" FLUX_GIT_ROOT)"
    echo "export HOMEPLANE_TEST_DATABASE_URL=$(value "$dir/postgres/env" DATABASE_URL)"
    echo "export HOMEPLANE_TEST_N8N_URL=$(value "$dir/n8n/env" N8N_URL)"
    echo "export HOMEPLANE_TEST_N8N_API_KEY=$(value "$dir/n8n/env" N8N_API_KEY)"
    # The S3 server's endpoint and root credentials (tests create their own buckets).
    echo "export HOMEPLANE_TEST_S3_ENDPOINT=$(value "$dir/s3/env" AWS_ENDPOINT_URL)"
    echo "export HOMEPLANE_TEST_S3_ACCESS_KEY_ID=$(value "$dir/s3/env" AWS_ACCESS_KEY_ID)"
    echo "export HOMEPLANE_TEST_S3_SECRET_ACCESS_KEY=$(value "$dir/s3/env" AWS_SECRET_ACCESS_KEY)"
  } > "$dir/env"
  log "test servers up: source $dir/env"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  *) die "usage: $0 up|down DIR" ;;
esac
