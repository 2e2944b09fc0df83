#!/usr/bin/env bash
# Benchmark of backups (not a test), in one run on one generated database of at least 1 GB on
# disk and one S3 server (versitygw on loopback):
# 1. Full backups, each timed as a whole process tree (wall, CPU seconds, peak RSS), with the
#    bytes it left in the bucket and the time to restore until the data can be queried:
#    homeplane (`homeplane backup upload`: pg_dump -Fc -Z0 -> zstd -1 -> age -> S3 multipart,
#    the operator's pipeline), the shell pipeline `pg_dump -Fc -Z1 | age | aws s3 cp -`,
#    restic (`pg_dump -Fc -Z0 | restic backup --stdin`: its own compression and encryption;
#    the engine of k8up and Velero's file-system backups) and pgBackRest (a full physical
#    backup, zstd level 1, aes-256-cbc, to an S3 repository; over TLS, which is all pgBackRest
#    speaks: a second versitygw on the same storage).
# 2. homeplane's memory bound: a >= 2 GiB stream and a 2 GiB volume archive (what a PVC backup
#    Job runs) through the pipeline: peak RSS stays within the parts in flight plus the process.
# Encryption alone is bench/encrypt.sh. Prints the figures and writes them to
# bench/results/backup.txt. Run with `make bench`.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
source "$HOMEPLANE_ROOT/bench/lib.sh"
cd "$HOMEPLANE_ROOT"
"$HOMEPLANE_ROOT/scripts/setup.sh"
bench_packages restic pgbackrest
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

tls_pid=""
cleanup() {
  [ -n "$tls_pid" ] && kill "$tls_pid" 2>/dev/null
  "$HOMEPLANE_ROOT/scripts/postgres.sh" down "$work/restored-pgbackrest" >/dev/null 2>&1 || true
  "$HOMEPLANE_ROOT/scripts/postgres.sh" down "$work/postgres" || true
  "$HOMEPLANE_ROOT/scripts/s3.sh" down "$work/s3" || true
  rm -rf "$work/tmp" "$work/restored-pgbackrest"
}
trap cleanup EXIT
# A new server each run: the pgBackRest step changes its settings (archive_mode).
"$HOMEPLANE_ROOT/scripts/postgres.sh" down "$work/postgres" >/dev/null 2>&1 || true
rm -rf "$work/postgres"
"$HOMEPLANE_ROOT/scripts/postgres.sh" up "$work/postgres"
"$HOMEPLANE_ROOT/scripts/s3.sh" up "$work/s3"
source "$work/s3/env"
export AWS_DEFAULT_REGION=auto HOMEPLANE_BACKUP_BUCKET="bench-$(date +%s)"
"$aws" --endpoint-url "$AWS_ENDPOINT_URL" s3api create-bucket --bucket "$HOMEPLANE_BACKUP_BUCKET" >/dev/null
admin="$(sed -n 's/^export DATABASE_URL=//p' "$work/postgres/env")"
db_url="${admin%/postgres}/bench"
bucket_dir="$work/s3/data/$HOMEPLANE_BACKUP_BUCKET"
pg_password=$(cat "$work/postgres/password")
pg_port=$(python3 -c "import urllib.parse as u, sys; print(u.urlparse(sys.argv[1]).port)" "$admin")
bindir="$(pg_bindir)"
# 7,000,000 messages are about 1.05 GB on disk with the index.
rows=${BENCH_ROWS:-7000000}

log "generating a database of $rows messages"
psql -q -X "$admin" -c "DROP DATABASE IF EXISTS bench" -c "CREATE DATABASE bench"
generate_messages "$db_url" "$rows"
psql -q -X "$db_url" -c "CREATE INDEX ON messages (sent_at)" -c "VACUUM ANALYZE messages"
db_bytes=$(psql -X -t -A "$db_url" -c "SELECT pg_database_size('bench')")
db_size=$(psql -X -t -A "$db_url" -c "SELECT pg_size_pretty(pg_database_size('bench'))")
keyfile="$work/tmp/key.txt"
age-keygen -o "$keyfile" 2>/dev/null
recipient=$(age-keygen -y "$keyfile")
eval "$(pg_env "$db_url")"

prefix_bytes() { du -sb "$bucket_dir/$1" 2>/dev/null | awk '{print $1}'; }
restored_rows() { psql -X -t -A "${admin%/postgres}/$1" -c "SELECT count(*) FROM messages"; }
fresh_db() { psql -q -X "$admin" -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1"; }
plain=$(pg_dump -Fc -Z0 | wc -c)

runs=${BENCH_RUNS:-5}
# repeated SETUP CMD prints "wall_s cpu_s peak_rss_kib", each the median of $runs runs of CMD
# (each well under a minute), SETUP run untimed before each.
repeated() {
  local setup=$1 cmd=$2 i w c r walls=() cpus=() rsss=()
  for i in $(seq 1 "$runs"); do
    eval "$setup"
    read -r w c r < <(measure "$cmd")
    walls+=("$w"); cpus+=("$c"); rsss+=("$r")
  done
  echo "$(printf '%s\n' "${walls[@]}" | median) $(printf '%s\n' "${cpus[@]}" | median) $(printf '%s\n' "${rsss[@]}" | median)"
}

log "homeplane backup (zstd -1, 16 MiB parts, 2 in flight) and restore, $runs runs each"
# homeplane never overwrites an object: the last run's goes before the next.
hp_clear() { "$aws" --endpoint-url "$AWS_ENDPOINT_URL" s3 rm "s3://$HOMEPLANE_BACKUP_BUCKET/homeplane/" --recursive --only-show-errors; }
read -r hp_wall hp_cpu hp_rss < <(repeated hp_clear "'$homeplane' backup upload --database-url '$db_url' -r $recipient --zstd-level 1 --object homeplane/db.pgdump.zst.age > '$work/tmp/manifest.json'")
hp_bytes=$(prefix_bytes homeplane)
read -r hp_restore _ _ < <(repeated "fresh_db restored_hp" "'$homeplane' restore --object homeplane/db.pgdump.zst.age --identity '$keyfile' --into '${admin%/postgres}/restored_hp' > /dev/null")
[ "$(restored_rows restored_hp)" = "$rows" ] || die "homeplane's restore does not hold $rows rows"

log "pg_dump -Fc -Z1 | age | aws s3 cp - and back, $runs runs each"
read -r sh_wall sh_cpu sh_rss < <(repeated : "pg_dump -Fc -Z1 | age -r $recipient | '$aws' --endpoint-url '$AWS_ENDPOINT_URL' s3 cp - s3://$HOMEPLANE_BACKUP_BUCKET/shell/db.pgdump.age --only-show-errors")
sh_bytes=$(prefix_bytes shell)
read -r sh_restore _ _ < <(repeated "fresh_db restored_sh" "'$aws' --endpoint-url '$AWS_ENDPOINT_URL' s3 cp s3://$HOMEPLANE_BACKUP_BUCKET/shell/db.pgdump.age - | age -d -i '$keyfile' | pg_restore --single-transaction -d '${admin%/postgres}/restored_sh'")
[ "$(restored_rows restored_sh)" = "$rows" ] || die "the shell pipeline's restore does not hold $rows rows"

log "pg_dump -Fc -Z0 | restic backup --stdin, and restic dump | pg_restore, $runs runs each"
# A new repository before each backup: a second backup of the same dump into the same
# repository would upload nothing (restic deduplicates), which is not the cost of a first one.
export RESTIC_PASSWORD="bench-$(openssl rand -hex 8)" RESTIC_CACHE_DIR="$work/tmp/restic-cache"
rs_repo=0
restic_init() {
  rs_repo=$((rs_repo + 1))
  export RESTIC_REPOSITORY="s3:$AWS_ENDPOINT_URL/$HOMEPLANE_BACKUP_BUCKET/restic-$rs_repo"
  restic -q -o s3.region=auto init >/dev/null
}
read -r rs_wall rs_cpu rs_rss < <(repeated restic_init "pg_dump -Fc -Z0 | restic -q -o s3.region=auto backup --stdin --stdin-filename db.pgdump > /dev/null")
# (the runs are in a subshell: the last repository is named again here); what its backup
# uploaded: its data packs, index and snapshot, not the keys and config made by init.
export RESTIC_REPOSITORY="s3:$AWS_ENDPOINT_URL/$HOMEPLANE_BACKUP_BUCKET/restic-$runs"
rs_bytes=0
for part in data index snapshots; do rs_bytes=$(( rs_bytes + $(prefix_bytes "restic-$runs/$part") )); done
read -r rs_restore _ _ < <(repeated "fresh_db restored_restic" "restic -q -o s3.region=auto dump latest db.pgdump | pg_restore --single-transaction -d '${admin%/postgres}/restored_restic'")
[ "$(restored_rows restored_restic)" = "$rows" ] || die "restic's restore does not hold $rows rows"

log "pgBackRest: a full backup to an S3 repository over TLS (zstd 1, aes-256-cbc), and a restore"
read -r s3_access s3_secret < "$work/s3/credentials"
# pgBackRest speaks only TLS to S3 and checks the server's name against DNS names alone (not
# an IP address); on loopback its verification is turned off (repo1-storage-verify-tls=n).
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/tmp/tls.key" -out "$work/tmp/tls.crt" 2>/dev/null
tls_port=$(free_port)
ROOT_ACCESS_KEY_ID="$s3_access" ROOT_SECRET_ACCESS_KEY="$s3_secret" setsid "$("$HOMEPLANE_ROOT/scripts/s3.sh" bin)" --quiet \
  --port "127.0.0.1:$tls_port" --region auto --cert "$work/tmp/tls.crt" --key "$work/tmp/tls.key" \
  posix "$work/s3/data" > "$work/tmp/s3-tls.log" 2>&1 < /dev/null &
tls_pid=$!
for _ in $(seq 1 100); do curl -sk -o /dev/null "https://127.0.0.1:$tls_port/" && break; sleep 0.1; done
pgbr="$work/tmp/pgbackrest"; mkdir -p "$pgbr"/{log,lock,spool}
cat > "$pgbr/pgbackrest.conf" <<CONF
[global]
repo1-type=s3
repo1-path=/pgbackrest
repo1-s3-bucket=$HOMEPLANE_BACKUP_BUCKET
repo1-s3-endpoint=127.0.0.1
repo1-storage-verify-tls=n
repo1-storage-port=$tls_port
repo1-storage-ca-file=$work/tmp/tls.crt
repo1-s3-region=auto
repo1-s3-uri-style=path
repo1-s3-key=$s3_access
repo1-s3-key-secret=$s3_secret
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=$(openssl rand -hex 24)
repo1-retention-full=1
compress-type=zst
compress-level=1
start-fast=y
log-path=$pgbr/log
lock-path=$pgbr/lock
spool-path=$pgbr/spool
log-level-console=warn
log-level-file=off

[bench]
pg1-path=$work/postgres/data
pg1-port=$pg_port
pg1-socket-path=$work/postgres
pg1-user=postgres
CONF
chown -R postgres "$pgbr" "$work/tmp/tls.crt"; chmod 600 "$pgbr/pgbackrest.conf"; chmod 755 "$work/tmp"
pgbackrest_cmd="runuser -u postgres -- env PGPASSWORD=$pg_password pgbackrest --config=$pgbr/pgbackrest.conf --stanza=bench"
psql -q -X "$admin" -c "ALTER SYSTEM SET archive_mode = on" \
  -c "ALTER SYSTEM SET archive_command = 'pgbackrest --config=$pgbr/pgbackrest.conf --stanza=bench archive-push %p'"
runuser -u postgres -- "$bindir/pg_ctl" -D "$work/postgres/data" -m fast -w restart >/dev/null
$pgbackrest_cmd stanza-create >/dev/null
pb_init=$(prefix_bytes pgbackrest)
read -r pb_wall pb_cpu pb_rss < <(measure "$pgbackrest_cmd --type=full backup")
pb_bytes=$(( $(prefix_bytes pgbackrest) - pb_init ))
restore_dir="$work/restored-pgbackrest"
rm -rf "$restore_dir" && mkdir -p "$restore_dir/data" && chown -R postgres "$restore_dir" && chmod 700 "$restore_dir/data"
pb_port=$(free_port)
# Restored, started (archiving off, or it would push into the same repository) and recovered to
# the end of the archive: then it answers queries.
read -r pb_restore _ _ < <(measure "$pgbackrest_cmd --pg1-path=$restore_dir/data restore >/dev/null \
  && runuser -u postgres -- '$bindir/pg_ctl' -D '$restore_dir/data' -l '$restore_dir/postgres.log' -w -t 600 start \
     -o '-c port=$pb_port -c unix_socket_directories=$restore_dir -c archive_mode=off -c listen_addresses=127.0.0.1' >/dev/null \
  && until [ \"\$(PGPASSWORD=$pg_password psql -X -tA -h 127.0.0.1 -p $pb_port -U postgres -d bench -c 'SELECT NOT pg_is_in_recovery()' 2>/dev/null)\" = t ]; do sleep 0.1; done")
pb_rows=$(PGPASSWORD=$pg_password psql -X -tA -h 127.0.0.1 -p "$pb_port" -U postgres -d bench -c "SELECT count(*) FROM messages")
runuser -u postgres -- "$bindir/pg_ctl" -D "$restore_dir/data" -m fast -w stop >/dev/null
[ "$pb_rows" = "$rows" ] || die "pgBackRest's restore does not hold $rows rows"
psql -q -X "$admin" -c "ALTER SYSTEM RESET archive_mode" -c "ALTER SYSTEM RESET archive_command"
runuser -u postgres -- "$bindir/pg_ctl" -D "$work/postgres/data" -m fast -w restart >/dev/null

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
row() { printf '%-44s %7s %7s %9s %14s %10s\n' "$@"; }
result="bench/results/backup.txt"
{
  echo "# homeplane backup vs the tools people use instead — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(machine)"
  echo "# local PostgreSQL $(psql -X -t -A "$admin" -c 'SHOW server_version'), versitygw on loopback (pgBackRest through a second versitygw on the same storage, over TLS)"
  echo "database: $rows rows, $db_size on disk ($db_bytes bytes); plain pg_dump -Fc -Z0: $plain bytes"
  echo "whole process trees (the PostgreSQL server's own work not counted); restore: into an empty database (pg_restore),"
  echo "for pgBackRest a new data directory started and recovered; until the data can be queried."
  echo "homeplane, the shell pipeline and restic: medians of $runs runs each (restic into a new repository each time);"
  echo "pgBackRest: one run (a backup and a restore take over a minute each)."
  echo
  row "full backup" "wall_s" "cpu_s" "peak_MiB" "bytes_in_bucket" "restore_s"
  row "homeplane (pg_dump -Z0 | zstd -1 | age | S3)" "$hp_wall" "$hp_cpu" "$(mib "$hp_rss")" "$hp_bytes" "$hp_restore"
  row "pg_dump -Fc -Z1 | age | aws s3 cp -" "$sh_wall" "$sh_cpu" "$(mib "$sh_rss")" "$sh_bytes" "$sh_restore"
  row "pg_dump -Fc -Z0 | restic backup --stdin" "$rs_wall" "$rs_cpu" "$(mib "$rs_rss")" "$rs_bytes" "$rs_restore"
  row "pgBackRest full (zst 1, aes-256-cbc, S3)" "$pb_wall" "$pb_cpu" "$(mib "$pb_rss")" "$pb_bytes" "$pb_restore"
  echo
  echo "ratios homeplane/it            wall   cpu   peak  bytes  restore"
  for t in sh rs pb; do
    case $t in sh) name="shell pipeline";; rs) name="restic";; pb) name="pgBackRest";; esac
    w=${t}_wall c=${t}_cpu r=${t}_rss b=${t}_bytes r2=${t}_restore
    printf '%-30s %5s %5s %6s %6s %8s\n' "$name" "$(ratio "$hp_wall" "${!w}")" "$(ratio "$hp_cpu" "${!c}")" \
      "$(ratio "$hp_rss" "${!r}")" "$(ratio "$hp_bytes" "${!b}")" "$(ratio "$hp_restore" "${!r2}")"
  done
  echo "(restic $(restic version | awk '{print $2}'), repository v2 with its default compression; pgBackRest $(pgbackrest version | awk '{print $2}'), one process;"
  echo " pgBackRest's bytes include the WAL archived during the backup, which a physical backup needs)"
  echo
  echo "bounded memory: $stream_mib MiB of random bytes streamed (16 MiB parts, 2 in flight: parts hold at most 32 MiB)"
  echo "  peak RSS $(mib "$st_rss") MiB for $stream_mib MiB in ${st_wall}s; the same command on 1 MiB peaks at $(mib "$idle_rss") MiB"
  echo "volume (PVC) archive: $vol_mib MiB in $pv_files files through tar and the same pipeline (homeplane backup pvc)"
  echo "  peak RSS $(mib "$pv_rss") MiB in ${pv_wall}s wall, ${pv_cpu}s CPU"
} | tee "$result"
