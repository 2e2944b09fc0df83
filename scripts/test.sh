#!/usr/bin/env bash
# `make test`: formatting and lints, then every test — unit tests, and the integration and
# end-to-end tests against a real control plane (started here and shared by the test binaries;
# each test uses its own namespace). Exits non-zero on any failure.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$HOMEPLANE_ROOT"
t0=$(date +%s)

"$HOMEPLANE_ROOT/scripts/setup.sh"
log "checking formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -q -- -D warnings

dir="$HOMEPLANE_ROOT/.homeplane/test/cluster"
pg="$HOMEPLANE_ROOT/.homeplane/test/postgres"
s3="$HOMEPLANE_ROOT/.homeplane/test/s3"
podman_dir="$HOMEPLANE_ROOT/.homeplane/test/podman"
n8n="$HOMEPLANE_ROOT/.homeplane/test/n8n"
stop_servers() {
  "$HOMEPLANE_ROOT/scripts/cluster.sh" down "$dir"
  "$HOMEPLANE_ROOT/scripts/postgres.sh" down "$pg"
  "$HOMEPLANE_ROOT/scripts/s3.sh" down "$s3"
  "$HOMEPLANE_ROOT/scripts/podman.sh" down "$podman_dir"
  "$HOMEPLANE_ROOT/scripts/n8n.sh" down "$n8n"
}
"$HOMEPLANE_ROOT/scripts/cluster.sh" up "$dir"
trap stop_servers EXIT
"$HOMEPLANE_ROOT/scripts/postgres.sh" up "$pg"
"$HOMEPLANE_ROOT/scripts/s3.sh" up "$s3"
"$HOMEPLANE_ROOT/scripts/podman.sh" up "$podman_dir"
export HOMEPLANE_TEST_PODMAN_DIR="$podman_dir"
# A fresh n8n each run (its owner and API key are created again).
"$HOMEPLANE_ROOT/scripts/n8n.sh" down "$n8n"; rm -rf "$n8n"
"$HOMEPLANE_ROOT/scripts/n8n.sh" up "$n8n"
export HOMEPLANE_TEST_KUBECONFIG="$dir/kubeconfig"
HOMEPLANE_TEST_DATABASE_URL="$(sed -n 's/^export DATABASE_URL=//p' "$pg/env")"
export HOMEPLANE_TEST_DATABASE_URL
HOMEPLANE_TEST_N8N_URL="$(sed -n 's/^export N8N_URL=//p' "$n8n/env")"
HOMEPLANE_TEST_N8N_API_KEY="$(sed -n 's/^export N8N_API_KEY=//p' "$n8n/env")"
export HOMEPLANE_TEST_N8N_URL HOMEPLANE_TEST_N8N_API_KEY
HOMEPLANE_CLUSTER_BIN="$("$HOMEPLANE_ROOT/scripts/build-cluster.sh")"
export HOMEPLANE_CLUSTER_BIN
# The S3 server's endpoint and root credentials (tests create their own buckets).
HOMEPLANE_TEST_S3_ENDPOINT="$(sed -n 's/^export AWS_ENDPOINT_URL=//p' "$s3/env")"
HOMEPLANE_TEST_S3_ACCESS_KEY_ID="$(sed -n 's/^export AWS_ACCESS_KEY_ID=//p' "$s3/env")"
HOMEPLANE_TEST_S3_SECRET_ACCESS_KEY="$(sed -n 's/^export AWS_SECRET_ACCESS_KEY=//p' "$s3/env")"
export HOMEPLANE_TEST_S3_ENDPOINT HOMEPLANE_TEST_S3_ACCESS_KEY_ID HOMEPLANE_TEST_S3_SECRET_ACCESS_KEY

log "running the tests"
results="$HOMEPLANE_ROOT/.homeplane/test/results.txt"
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e
passed=$(awk '/^test result:/ {p += $4} END {print p + 0}' "$results")
failed=$(awk '/^test result:/ {f += $6} END {print f + 0}' "$results")
# Stop the servers now, so that the summary is the last line printed.
trap - EXIT
stop_servers
if [ "$status" = 0 ]; then
  log "make test passed in $(( $(date +%s) - t0 ))s (control plane start-up: $(cat "$dir/startup-seconds")s)"
else
  log "make test failed"
fi
echo "${passed} passed, ${failed} failed"
exit "$status"
