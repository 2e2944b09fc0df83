# Shared by the benchmarks (sourced after scripts/lib.sh): the machine's description, medians,
# a precise clock and Debian packages only the benchmarks need.

# machine prints "N cores, MODEL" for the results' headers.
machine() {
  printf '%s cores, %s' "$(nproc)" "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
}

# now_ms prints the wall clock in milliseconds (bash's own clock: no process is started).
now_ms() { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }

# median reads numbers, one a line, and prints their median.
median() { sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# ratio A B prints A/B with two decimals.
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

# bench_packages PACKAGE... installs the Debian packages that are missing, quietly.
bench_packages() {
  local need=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  [ ${#need[@]} -eq 0 ] && return 0
  log "installing Debian packages for the benchmarks: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
}

# generate_messages URL ROWS fills the database at URL with the benchmarks' table: ROWS
# messages of six platforms, 900 senders and bodies of 50 to 130 characters.
generate_messages() {
  psql -q -X "$1" -v ON_ERROR_STOP=1 <<SQL
CREATE TABLE messages (id bigserial PRIMARY KEY, platform text NOT NULL, sender text NOT NULL,
  body text NOT NULL, sent_at timestamptz NOT NULL);
INSERT INTO messages (platform, sender, body, sent_at)
SELECT (ARRAY['signal','whatsapp','telegram','imessage','email','sms'])[1 + g % 6],
       'contact-' || (g % 900), repeat(md5(g::text), 1 + g % 4) || ' ' || md5((g * 7)::text),
       timestamptz '2020-01-01' + g * interval '37 seconds'
FROM generate_series(1, $2) g;
SQL
}

# pg_env URL prints `export PG…=` lines for libpq from a postgres:// URL, so that no password is
# on a command line: eval "$(pg_env URL)".
pg_env() {
  python3 - "$1" <<'PY'
import sys, urllib.parse as u
p = u.urlparse(sys.argv[1])
print(f"export PGHOST={p.hostname} PGPORT={p.port} PGUSER={p.username} PGPASSWORD={p.password} PGDATABASE={p.path[1:]}")
PY
}

# apply_homelab KUBECTL applies the example homelab with its Database pointed at the PostgreSQL
# of $DATABASE_URL (its admin in Secret pg-admin), and waits until that Database is Ready.
apply_homelab() {
  local kubectl=$1 pg_user pg_password pg_port
  "$kubectl" apply --server-side -k manifests/homelab >/dev/null
  read -r pg_user pg_password pg_port < <(python3 -c "import urllib.parse,os; u=urllib.parse.urlparse(os.environ['DATABASE_URL']); print(u.username, u.password, u.port)")
  "$kubectl" create secret generic pg-admin -n data --from-literal=username="$pg_user" \
    --from-literal=password="$pg_password" >/dev/null
  "$kubectl" patch database homelab -n data --type merge \
    -p "{\"spec\":{\"server\":{\"external\":{\"host\":\"127.0.0.1\",\"port\":$pg_port,\"sslMode\":\"disable\"}}}}" >/dev/null
  "$kubectl" wait --for=condition=Ready --timeout=120s database/homelab -n data >/dev/null
}
