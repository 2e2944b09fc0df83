#!/usr/bin/env bash
# Benchmark: `homeplane migrate` against `sqlx migrate run` (sqlx-cli 0.9.0) on the same 227
# generated migrations, on Debian's PostgreSQL: applying all of them to an empty database, and
# a no-op re-run. Prints the figures and writes them to bench/results/migrate-vs-sqlx.txt.
# Not part of `make test`: run it with `make bench`.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$HOMEPLANE_ROOT"
runs="${RUNS:-5}"
export PGOPTIONS="-c client_min_messages=warning"
"$HOMEPLANE_ROOT/scripts/setup.sh"
cargo build --release --locked -q -p homeplane-operator
homeplane="$CARGO_TARGET_DIR/release/homeplane"
sqlx="$("$HOMEPLANE_ROOT/bench/install-sqlx-cli.sh")"
pg="$HOMEPLANE_ROOT/.homeplane/bench/postgres"
"$HOMEPLANE_ROOT/scripts/postgres.sh" up "$pg"
trap '"$HOMEPLANE_ROOT/scripts/postgres.sh" down "$pg"' EXIT
url="$(sed -n 's/^export DATABASE_URL=//p' "$pg/env")"
base="${url%/postgres}"

dir="$HOMEPLANE_ROOT/.homeplane/bench/migrations"
rm -rf "$dir"; mkdir -p "$dir"
for n in $(seq 1 227); do
  printf 'CREATE TABLE t%04d (id bigserial PRIMARY KEY, body text NOT NULL);\nINSERT INTO t%04d (body) VALUES (%s);\n' \
    "$n" "$n" "'row $n'" > "$dir/$(printf '%04d' "$n")_step_$n.sql"
done

ms() { python3 -c 'import time; print(int(time.time() * 1000))'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

measure() { # measure NAME COMMAND... ; prints "fresh_ms noop_ms" medians over $runs databases
  local name=$1; shift
  local fresh=() noop=()
  for i in $(seq 1 "$runs"); do
    local db="bench_${name}_$i"
    psql -q "$url" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
    local t0 t1 t2
    t0=$(ms); DATABASE_URL="$base/$db" "$@" >/dev/null; t1=$(ms)
    DATABASE_URL="$base/$db" "$@" >/dev/null; t2=$(ms)
    fresh+=($((t1 - t0))); noop+=($((t2 - t1)))
    local count; count=$(psql -tA "$base/$db" -c "SELECT count(*) FROM pg_tables WHERE tablename LIKE 't%'")
    [ "$count" = 227 ] || die "$name left $count tables, not 227"
  done
  echo "$(printf '%s\n' "${fresh[@]}" | median) $(printf '%s\n' "${noop[@]}" | median)"
}

read -r hp_fresh hp_noop < <(measure homeplane "$homeplane" migrate --dir "$dir")
read -r sx_fresh sx_noop < <(measure sqlx "$sqlx" migrate run --source "$dir")
mkdir -p bench/results
{
  echo "# homeplane migrate vs sqlx migrate run — 227 migrations, median of $runs runs"
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, PostgreSQL $(psql -tA "$url" -c 'SHOW server_version')"
  printf '%-22s %12s %12s\n' "tool" "empty (ms)" "no-op (ms)"
  printf '%-22s %12s %12s\n' "homeplane migrate" "$hp_fresh" "$hp_noop"
  printf '%-22s %12s %12s\n' "sqlx migrate run" "$sx_fresh" "$sx_noop"
  python3 -c "print(f'ratio homeplane/sqlx: empty {$hp_fresh/$sx_fresh:.2f}, no-op {$hp_noop/$sx_noop:.2f}')"
} | tee bench/results/migrate-vs-sqlx.txt
