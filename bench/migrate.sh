#!/usr/bin/env bash
# Benchmark of migration runners on the same 227 generated migrations (the seed system's count)
# and Debian's PostgreSQL, in one run: `homeplane migrate` against `sqlx migrate run`
# (sqlx-cli), Flyway 13.12.1 (flyway-core + flyway-database-postgresql, driven by bench/flyway)
# and `refinery migrate` (refinery_cli). Each applies all of them to an empty database, then
# runs again with nothing to do; every tool runs each migration in its own transaction (their
# default). Medians of RUNS (default 5) fresh databases. The whole process is timed (start-up,
# reading the files, connecting); Flyway's own figure without the JVM's start is shown beside.
# Prints the figures and writes them to bench/results/migrate.txt. Not part of `make test`:
# run it with `make bench`.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
source "$HOMEPLANE_ROOT/bench/lib.sh"
cd "$HOMEPLANE_ROOT"
runs="${RUNS:-5}"
count=227
export PGOPTIONS="-c client_min_messages=warning"
"$HOMEPLANE_ROOT/scripts/setup.sh"
bench_packages maven openjdk-17-jdk-headless
cargo build --release --locked -q -p homeplane-operator
homeplane="$CARGO_TARGET_DIR/release/homeplane"
sqlx="$("$HOMEPLANE_ROOT/bench/install-sqlx-cli.sh")"
refinery="$("$HOMEPLANE_ROOT/bench/install-refinery.sh")"
flyway_cp="$("$HOMEPLANE_ROOT/bench/install-flyway.sh")"
work="$HOMEPLANE_ROOT/.homeplane/bench/migrate"
pg="$work/postgres"
"$HOMEPLANE_ROOT/scripts/postgres.sh" up "$pg"
trap '"$HOMEPLANE_ROOT/scripts/postgres.sh" down "$pg"' EXIT
url="$(sed -n 's/^export DATABASE_URL=//p' "$pg/env")"
base="${url%/postgres}"
read -r user password hostport < <(python3 -c "
import urllib.parse as u; p = u.urlparse('$url'); print(p.username, p.password, f'{p.hostname}:{p.port}')")

# The same SQL under each tool's file names: NNNN_name.sql (homeplane, sqlx), VN__name.sql
# (Flyway, refinery).
dir="$work/migrations"; versioned="$work/versioned"
rm -rf "$dir" "$versioned"; mkdir -p "$dir" "$versioned"
for n in $(seq 1 "$count"); do
  sql=$(printf 'CREATE TABLE t%04d (id bigserial PRIMARY KEY, body text NOT NULL);\nINSERT INTO t%04d (body) VALUES (%s);\n' "$n" "$n" "'row $n'")
  printf '%s\n' "$sql" > "$dir/$(printf '%04d' "$n")_step_$n.sql"
  printf '%s\n' "$sql" > "$versioned/V${n}__step_$n.sql"
done

flyway_ms=()
run_tool() { # run_tool NAME DB -> runs the tool once against DB
  local db_url="$base/$2?sslmode=disable"
  case "$1" in
    homeplane) DATABASE_URL="$db_url" "$homeplane" migrate --dir "$dir" ;;
    sqlx) DATABASE_URL="$db_url" "$sqlx" migrate run --source "$dir" ;;
    refinery) DATABASE_URL="$db_url" "$refinery" migrate -e DATABASE_URL -p "$versioned" ;;
    flyway)
      local out
      out=$(java -cp "$flyway_cp" Migrate "jdbc:postgresql://$hostport/$2?sslmode=disable" "$user" "$password" "$versioned")
      flyway_ms+=("$(sed -n 's/.* applied in \([0-9]*\) ms/\1/p' <<< "$out")")
      ;;
  esac
}

measure() { # measure NAME -> "empty_ms noop_ms" medians over $runs fresh databases
  local name=$1 fresh=() noop=() i db t0 t1 t2 tables
  for i in $(seq 1 "$runs"); do
    db="bench_${name//-/_}_$i"
    psql -q "$url" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
    t0=$(now_ms); run_tool "$name" "$db" >/dev/null; t1=$(now_ms)
    run_tool "$name" "$db" >/dev/null; t2=$(now_ms)
    fresh+=($((t1 - t0))); noop+=($((t2 - t1)))
    tables=$(psql -tA "$base/$db" -c "SELECT count(*) FROM pg_tables WHERE tablename ~ '^t[0-9]{4}$'")
    [ "$tables" = "$count" ] || die "$name left $tables tables, not $count"
    psql -q "$url" -c "DROP DATABASE $db" >/dev/null
  done
  echo "$(printf '%s\n' "${fresh[@]}" | median) $(printf '%s\n' "${noop[@]}" | median)"
}

log "timing $count migrations with each tool, $runs runs each"
read -r hp_fresh hp_noop < <(measure homeplane)
read -r sx_fresh sx_noop < <(measure sqlx)
read -r rf_fresh rf_noop < <(measure refinery)
flyway_ms=()
measure flyway > "$work/flyway.txt"
read -r fw_fresh fw_noop < "$work/flyway.txt"
# Flyway's own figures alternate: applying, then the no-op run.
fw_in_fresh=$(for i in $(seq 0 2 $(( ${#flyway_ms[@]} - 1 ))); do echo "${flyway_ms[$i]}"; done | median)
fw_in_noop=$(for i in $(seq 1 2 $(( ${#flyway_ms[@]} - 1 ))); do echo "${flyway_ms[$i]}"; done | median)

mkdir -p bench/results
rm -f bench/results/migrate-vs-sqlx.txt
row() { printf '%-44s %11s %11s %14s %14s\n' "$@"; }
{
  echo "# homeplane migrate vs sqlx, Flyway and refinery — $count migrations, median of $runs runs"
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), $(machine), PostgreSQL $(psql -tA "$url" -c 'SHOW server_version') on loopback (fsync off, sslmode=disable)"
  echo "# whole process timed; each migration in its own transaction unless said"
  row "tool" "empty (ms)" "no-op (ms)" "homeplane/it" "homeplane/it"
  row "" "" "" "empty" "no-op"
  row "homeplane migrate" "$hp_fresh" "$hp_noop" "" ""
  row "sqlx migrate run (sqlx-cli 0.9.0)" "$sx_fresh" "$sx_noop" "$(ratio "$hp_fresh" "$sx_fresh")" "$(ratio "$hp_noop" "$sx_noop")"
  row "refinery migrate (refinery_cli 0.10.0)" "$rf_fresh" "$rf_noop" "$(ratio "$hp_fresh" "$rf_fresh")" "$(ratio "$hp_noop" "$rf_noop")"
  row "Flyway 13.12.1 (JVM included)" "$fw_fresh" "$fw_noop" "$(ratio "$hp_fresh" "$fw_fresh")" "$(ratio "$hp_noop" "$fw_noop")"
  row "Flyway 13.12.1 (its migrate() alone)" "$fw_in_fresh" "$fw_in_noop" "$(ratio "$hp_fresh" "$fw_in_fresh")" "$(ratio "$hp_noop" "$fw_in_noop")"
} | tee bench/results/migrate.txt
