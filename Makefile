# The two commands of README.md, and a few helpers. Build caches live in ~/.cache/homeplane.
.PHONY: demo demo-down test crds lint fmt bench fuzz

## Start the local homelab: control plane, simulated Pi + GPU node, PostgreSQL, the operator.
demo:
	@bash scripts/demo.sh up

## Stop everything `make demo` started.
demo-down:
	@bash scripts/demo.sh down

## Run the whole test suite (lints, unit, integration and end-to-end tests).
test:
	@bash scripts/test.sh

## Regenerate the committed CRD YAML from the Rust API types.
crds:
	@bash scripts/crds.sh

lint:
	@bash -c 'source scripts/lib.sh && cargo fmt --all -- --check && cargo clippy --workspace --all-targets -- -D warnings'

fmt:
	@bash -c 'source scripts/lib.sh && cargo fmt --all'

## Benchmarks (not tests): print figures and write them to bench/results/.
bench:
	@bash bench/foundation.sh
	@bash bench/memory.sh
	@bash bench/migrate.sh
	@bash bench/placement.sh
	@bash bench/state.sh
	@bash bench/backup.sh
	@bash bench/encrypt.sh
	@bash bench/faults.sh
	@bash bench/realnode.sh
	@bash bench/dashboard.sh
	@bash bench/reconcile.sh

## Fuzz every parser of untrusted input: 1,000,000 executions per target (or 15 minutes).
fuzz:
	@bash scripts/fuzz.sh long
