#!/usr/bin/env bash
# Benchmark of the encryption stage alone (not a test), in one run on one input: the plain dump
# (pg_dump -Fc -Z0) of the generated database bench/backup.sh uses (2,000,000 messages, about
# 337 MB). `homeplane backup encrypt` against the `age` CLI (Debian's, Go) and rage (the Rust
# CLI, on the age crate), pinned to one core and to two, medians of BENCH_RUNS (5) runs; the
# machine's single-core ChaCha20-Poly1305 limit (`openssl speed`); and where homeplane's CPU
# goes on one core (perf, a release build with symbols; BENCH_PROFILE=0 skips it). Writes bench/results/encrypt.txt and
# bench/results/encrypt-profile.txt. Run with `make bench`.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
source "$HOMEPLANE_ROOT/bench/lib.sh"
cd "$HOMEPLANE_ROOT"
"$HOMEPLANE_ROOT/scripts/setup.sh"
bench_packages linux-perf
if [ -z "${HOMEPLANE_BIN:-}" ]; then cargo build --release --locked -q -p homeplane-operator; fi
homeplane="${HOMEPLANE_BIN:-$CARGO_TARGET_DIR/release/homeplane}"
rage="$("$HOMEPLANE_ROOT/bench/install-rage.sh")"
runs=${BENCH_RUNS:-5}
rows=${BENCH_ROWS:-2000000}
work="$HOMEPLANE_ROOT/.homeplane/bench/encrypt"
rm -rf "$work/tmp" && mkdir -p "$work/tmp"
measure() { python3 "$HOMEPLANE_ROOT/bench/measure.py" "$1"; }
cleanup() { "$HOMEPLANE_ROOT/scripts/postgres.sh" down "$work/postgres"; rm -rf "$work/tmp"; }
trap cleanup EXIT

input="$work/tmp/plain.dump"
"$HOMEPLANE_ROOT/scripts/postgres.sh" up "$work/postgres"
admin="$(sed -n 's/^export DATABASE_URL=//p' "$work/postgres/env")"
log "generating a database of $rows messages and its plain dump"
psql -q -X "$admin" -c "DROP DATABASE IF EXISTS bench" -c "CREATE DATABASE bench"
# The table of bench/backup.sh, so the input is the dump that benchmark encrypts.
generate_messages "${admin%/postgres}/bench" "$rows"
eval "$(pg_env "${admin%/postgres}/bench")"
pg_dump -Fc -Z0 -f "$input"
"$HOMEPLANE_ROOT/scripts/postgres.sh" down "$work/postgres"
plain=$(stat -c %s "$input")

keyfile="$work/tmp/key.txt"
age-keygen -o "$keyfile" 2>/dev/null
recipient=$(age-keygen -y "$keyfile")
"$homeplane" backup encrypt -r "$recipient" < "$input" | age -d -i "$keyfile" | cmp -s - "$input" \
  || die "age -d did not give back what homeplane encrypted"

encrypt_cmd() { # encrypt_cmd TOOL
  case $1 in
    homeplane) echo "'$homeplane' backup encrypt -r $recipient" ;;
    age) echo "age -r $recipient" ;;
    rage) echo "'$rage' -r $recipient" ;;
  esac
}
log "encrypting $plain bytes with homeplane, age and rage, on one core and on two, $runs runs each"
declare -A wall cpu rss
for cores in 1 2; do
  pin=$([ "$cores" = 1 ] && echo "taskset -c 0" || echo "taskset -c 0,1")
  for tool in homeplane age rage; do
    walls=() cpus=() rsss=()
    for _ in $(seq 1 "$runs"); do
      read -r w c r < <(measure "$pin $(encrypt_cmd "$tool") < '$input' > /dev/null")
      walls+=("$w") cpus+=("$c") rsss+=("$r")
    done
    wall[$tool$cores]=$(printf '%s\n' "${walls[@]}" | median)
    cpu[$tool$cores]=$(printf '%s\n' "${cpus[@]}" | median)
    rss[$tool$cores]=$(printf '%s\n' "${rsss[@]}" | median)
  done
done
limit_kbs=$(taskset -c 0 openssl speed -evp chacha20-poly1305 -bytes 65536 -seconds 3 2>/dev/null \
  | awk '/^ChaCha20-Poly1305/ {sub(/k$/, "", $2); print $2}')
limit_mbs=$(python3 -c "print(f'{$limit_kbs * 1000 / 1e6:.0f}')")
mbs() { python3 -c "print(f'{$plain / $1 / 1e6:.0f}')"; }
mib() { python3 -c "print(f'{$1 / 1024:.1f}')"; }

profile=${BENCH_PROFILE:-1}
if [ "$profile" = 1 ]; then
  log "a CPU profile of homeplane's encryption on one core"
  cargo build --profile profiling --locked -q -p homeplane-operator
  perf record -q -F 999 -g -o "$work/tmp/perf.data" -- taskset -c 0 "$CARGO_TARGET_DIR/profiling/homeplane" \
    backup encrypt -r "$recipient" < "$input" > /dev/null 2> "$work/tmp/perf.log"
fi

mkdir -p bench/results
{
  echo "# homeplane backup encrypt vs the age CLI and rage — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(machine)"
  echo "# input: a plain dump (pg_dump -Fc -Z0) of $rows generated messages, $plain bytes, from the page cache;"
  echo "# output to /dev/null; median of $runs runs; whole process (start-up included); pinned with taskset."
  echo "# age $(age --version), rage $("$rage" --version | awk '{print $2}')"
  printf '%-24s %8s %8s %8s %9s %14s\n' "" "wall_s" "cpu_s" "MB/s" "peak_MiB" "it/homeplane"
  for cores in 1 2; do
    for tool in homeplane age rage; do
      w=${wall[$tool$cores]}
      vs=$([ "$tool" = homeplane ] && echo "-" || ratio "$w" "${wall[homeplane$cores]}")
      printf '%-24s %8s %8s %8s %9s %14s\n' "$tool, $cores core(s)" "$w" "${cpu[$tool$cores]}" \
        "$(mbs "$w")" "$(mib "${rss[$tool$cores]}")" "$vs"
    done
  done
  echo "single-core ChaCha20-Poly1305 limit (openssl speed -evp chacha20-poly1305, 64 KiB blocks): $limit_mbs MB/s"
  echo "homeplane on one core: $(python3 -c "print(f'{$plain / ${wall[homeplane1]} / 1e6 / $limit_mbs * 100:.0f}')")% of that limit (wall: start-up, reading and writing included)"
  echo "goals (throughput, homeplane/age): >= 1.0x on one core: $(ratio "${wall[age1]}" "${wall[homeplane1]}")x; >= 1.8x on two: $(ratio "${wall[age2]}" "${wall[homeplane2]}")x"
} | tee bench/results/encrypt.txt
if [ "$profile" = 1 ]; then {
  echo "# where homeplane's encryption spends its CPU: one core, $plain bytes, $(date -u +%Y-%m-%d) (perf, self time by symbol)"
  perf report -i "$work/tmp/perf.data" --stdio --no-children --sort symbol --percent-limit 0.5 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | grep '%' | head -n 25
} | tee bench/results/encrypt-profile.txt; fi
