#!/usr/bin/env bash
# Benchmark of backups (not a test). On one generated database, homeplane's backup
# (`homeplane backup upload`: pg_dump -Fc -Z0 → zstd -1 → age → S3 multipart, the operator's
# pipeline) against `pg_dump -Fc -Z1 | age -r … | aws s3 cp - s3://…` (awscli from PyPI) for
# wall time, CPU seconds and peak RSS of the whole process tree; the encryption stage alone
# against the `age` CLI on the same input; and a ≥2 GiB stream through homeplane's pipeline to
# show its peak RSS stays within part size × concurrency plus the process's own baseline; and a
# 2 GiB volume archived by `homeplane backup pvc` (what a PVC backup Job runs), same bound.
# Prints the figures and writes them to bench/results/backup.txt. Run with `make bench`.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
source "$HOMEPLANE_ROOT/bench/lib.sh"
cd "$HOMEPLANE_ROOT"
"$HOMEPLANE_ROOT/scripts/setup.sh"
if [ -z "${HOMEPLANE_BIN:-}" ]; then cargo build --release --locked -q -p homeplane-operator; fi
homeplane="${HOMEPLANE_BIN:-$CARGO_TARGET_DIR/release/homeplane}"
work="$HOMEPLANE_ROOT/.homeplane/bench/backup"
rm -rf "$work/tmp" && mkdir -p "$work/tmp"
measure() { python3 "$HOMEPLANE_ROOT/bench/measure.py" "$1"; }

# awscli in a cached venv keyed by the pinned requirements.
venv="$HOMEPLANE_CACHE/venv/awscli-$(cache_key bench/requirements.txt)"
if [ ! -f "$venv/.complete" ]; then
  log "installing awscli into $venv"
  rm -rf "$venv" && python3 -m venv "$venv" # scripts in a venv name its path: build it in place
  "$venv/bin/pip" install -q -r bench/requirements.txt
  touch "$venv/.complete"
fi
aws="$venv/bin/aws"

"$HOMEPLANE_ROOT/scripts/postgres.sh" up "$work/postgres"
"$HOMEPLANE_ROOT/scripts/s3.sh" up "$work/s3"
trap '"$HOMEPLANE_ROOT/scripts/postgres.sh" down "$work/postgres"; "$HOMEPLANE_ROOT/scripts/s3.sh" down "$work/s3"; rm -rf "$work/tmp"' EXIT
source "$work/s3/env"
export AWS_DEFAULT_REGION=auto HOMEPLANE_BACKUP_BUCKET="bench-$(date +%s)"
"$aws" --endpoint-url "$AWS_ENDPOINT_URL" s3api create-bucket --bucket "$HOMEPLANE_BACKUP_BUCKET" >/dev/null
admin="$(sed -n 's/^export DATABASE_URL=//p' "$work/postgres/env")"
db_url="${admin%/postgres}/bench"
rows=${BENCH_ROWS:-3000000}

log "generating a database of $rows messages"
psql -q -X "$admin" -c "DROP DATABASE IF EXISTS bench" -c "CREATE DATABASE bench"
generate_messages "$db_url" "$rows"
psql -q -X "$db_url" -c "CREATE INDEX ON messages (sent_at)"
db_size=$(psql -X -t -A "$db_url" -c "SELECT pg_size_pretty(pg_database_size('bench'))")
keyfile="$work/tmp/key.txt"
age-keygen -o "$keyfile" 2>/dev/null
recipient=$(age-keygen -y "$keyfile")
eval "$(pg_env "$db_url")"

log "homeplane backup (zstd -1, 16 MiB parts, 2 in flight)"
read -r hp_wall hp_cpu hp_rss < <(measure "'$homeplane' backup upload --database-url '$db_url' -r $recipient --zstd-level 1 --object homeplane.pgdump.zst.age > '$work/tmp/manifest.json'")
hp_bytes=$(python3 -c "import json; print(json.load(open('$work/tmp/manifest.json'))['encryptedBytes'])")

log "pg_dump -Fc -Z1 | age | aws s3 cp -"
read -r sh_wall sh_cpu sh_rss < <(measure "pg_dump -Fc -Z1 | age -r $recipient | '$aws' --endpoint-url '$AWS_ENDPOINT_URL' s3 cp - s3://$HOMEPLANE_BACKUP_BUCKET/shell.pgdump.age --only-show-errors")
sh_bytes=$("$aws" --endpoint-url "$AWS_ENDPOINT_URL" s3api head-object --bucket "$HOMEPLANE_BACKUP_BUCKET" --key shell.pgdump.age --query ContentLength --output text)

log "encryption alone on the same input (the plain dump)"
pg_dump -Fc -Z0 > "$work/tmp/plain.dump"
plain_size=$(stat -c %s "$work/tmp/plain.dump")
read -r he_wall he_cpu he_rss < <(measure "'$homeplane' backup encrypt -r $recipient < '$work/tmp/plain.dump' > /dev/null")
read -r ae_wall ae_cpu ae_rss < <(measure "age -r $recipient < '$work/tmp/plain.dump' > /dev/null")
rm -f "$work/tmp/plain.dump"

stream_mib=${BENCH_STREAM_MIB:-2100}
log "streaming $stream_mib MiB of random bytes through homeplane's pipeline"
read -r st_wall st_cpu st_rss < <(measure "head -c ${stream_mib}M /dev/urandom | '$homeplane' backup upload --file - -r $recipient --zstd-level 1 --part-size-mib 16 --concurrency 2 --object stream.age > /dev/null")
"$aws" --endpoint-url "$AWS_ENDPOINT_URL" s3 rm "s3://$HOMEPLANE_BACKUP_BUCKET/stream.age" --only-show-errors
read -r idle_wall idle_cpu idle_rss < <(measure "head -c 1M /dev/urandom | '$homeplane' backup upload --file - -r $recipient --zstd-level 1 --part-size-mib 16 --concurrency 2 --object small.age > /dev/null")

vol_mib=${BENCH_VOLUME_MIB:-2048}
log "archiving a $vol_mib MiB volume (8 files of random bytes) with homeplane backup pvc"
vol="$work/tmp/volume"
mkdir -p "$vol/data/objects"
for i in 1 2 3 4 5 6 7 8; do head -c "$((vol_mib / 8))M" /dev/urandom > "$vol/data/objects/blob-$i"; done
read -r pv_wall pv_cpu pv_rss < <(measure "'$homeplane' backup pvc --path '$vol' --claim bench -r $recipient --zstd-level 1 --part-size-mib 16 --concurrency 2 --object volume.tar.zst.age > '$work/tmp/volume.json'")
pv_files=$(python3 -c "import json; print(json.load(open('$work/tmp/volume.json'))['archive']['files'])")
rm -rf "$vol"
"$aws" --endpoint-url "$AWS_ENDPOINT_URL" s3 rm "s3://$HOMEPLANE_BACKUP_BUCKET/volume.tar.zst.age" --only-show-errors

mib() { python3 -c "print(f'{$1 / 1024:.1f}')"; }
result="bench/results/backup.txt"
{
  echo "# homeplane backup benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores; local PostgreSQL $(psql -X -t -A "$admin" -c 'SHOW server_version') and versitygw on loopback)"
  echo "database: $rows rows, $db_size on disk; plain pg_dump -Fc -Z0: $plain_size bytes"
  echo
  echo "full backup                          wall_s  cpu_s  peak_rss_MiB  uploaded_bytes"
  printf "homeplane (pg_dump -Z0|zstd-1|age|S3) %6s %6s %13s  %s\n" "$hp_wall" "$hp_cpu" "$(mib "$hp_rss")" "$hp_bytes"
  printf "pg_dump -Fc -Z1 | age | aws s3 cp -   %6s %6s %13s  %s\n" "$sh_wall" "$sh_cpu" "$(mib "$sh_rss")" "$sh_bytes"
  echo "ratio homeplane/shell: wall $(ratio "$hp_wall" "$sh_wall"), cpu $(ratio "$hp_cpu" "$sh_cpu"), peak RSS $(ratio "$hp_rss" "$sh_rss"), size $(ratio "$hp_bytes" "$sh_bytes")"
  echo
  echo "encryption alone ($plain_size bytes)  wall_s  cpu_s  peak_rss_MiB"
  printf "homeplane backup encrypt              %6s %6s %13s\n" "$he_wall" "$he_cpu" "$(mib "$he_rss")"
  printf "age -r                                %6s %6s %13s\n" "$ae_wall" "$ae_cpu" "$(mib "$ae_rss")"
  echo "ratio homeplane/age: wall $(ratio "$he_wall" "$ae_wall"), cpu $(ratio "$he_cpu" "$ae_cpu")"
  echo
  echo "bounded memory: $stream_mib MiB of random bytes streamed (16 MiB parts, 2 in flight: parts hold at most 32 MiB)"
  echo "  peak RSS $(mib "$st_rss") MiB for $stream_mib MiB in ${st_wall}s; the same command on 1 MiB peaks at $(mib "$idle_rss") MiB"
  echo "volume (PVC) archive: $vol_mib MiB in $pv_files files through tar and the same pipeline (homeplane backup pvc)"
  echo "  peak RSS $(mib "$pv_rss") MiB in ${pv_wall}s wall, ${pv_cpu}s CPU"
} | tee "$result"
