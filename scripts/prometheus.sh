#!/usr/bin/env bash
# Installs, starts and stops a real Prometheus and Alertmanager (Debian's) that scrape the
# homeplane operator with its alert rules (alerts/homeplane.rules.yaml) loaded and send the
# notifications to webhooks — the n8n Workflow of manifests/homelab/alerting.yaml, or a test's
# own receiver. Used by `make demo` and by the alerting test.
#
#   scripts/prometheus.sh install   install Debian's prometheus (with promtool) and
#                                   prometheus-alertmanager (with amtool) when missing
#   scripts/prometheus.sh crds      print the folder of the Prometheus Operator's CRDs
#                                   (monitoring.coreos.com), from its Go module, fetched once
#   scripts/prometheus.sh up DIR    start both on free loopback ports with their state in DIR;
#                                   DIR/env exports PROMETHEUS_URL and ALERTMANAGER_URL
#   scripts/prometheus.sh down DIR  stop them (DIR is kept)
#
# Settings of `up`, from the environment:
#   PROMETHEUS_TARGETS     the operator replicas' /metrics addresses (host:port, comma-separated),
#                          scraped as job="homeplane"
#   PROMETHEUS_INTERVAL    scrape and rule evaluation interval (default 15s)
#   PROMETHEUS_RULES_FOR   when set, every rule's `for:` is cut to this duration (tests, demo)
#   ALERTMANAGER_WEBHOOKS  the URLs notifications are posted to (comma-separated)
#   ALERTMANAGER_GROUP_WAIT, ALERTMANAGER_GROUP_INTERVAL  (defaults 30s and 5m)
# With HOMEPLANE_PROMETHEUS_OWNER_PID set, both stop when that process exits.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# The Prometheus Operator release whose CRDs the chart test installs (its Go module ships them).
PROMETHEUS_OPERATOR_VERSION=v0.85.0

install() {
  local need=()
  command -v prometheus >/dev/null && command -v promtool >/dev/null || need+=(prometheus)
  command -v prometheus-alertmanager >/dev/null && command -v amtool >/dev/null || need+=(prometheus-alertmanager)
  [ ${#need[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # No recommends: node-exporter and friends are not needed.
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

crds() {
  local dir
  dir=$(cd /tmp && go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  [ -f "$dir/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml" ] \
    || die "the prometheus-operator module has no CRDs in $dir/example/prometheus-operator-crd"
  echo "$dir/example/prometheus-operator-crd"
}

running() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

# wait_ready URL NAME: until URL answers, or fail with NAME's log.
wait_ready() {
  for _ in $(seq 1 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.2; done
  tail -n 20 "$dir/$2.log" >&2
  down
  die "$2 did not start (log: $dir/$2.log)"
}

up() {
  if running prometheus && running alertmanager && [ -f "$dir/env" ]; then
    log "Prometheus and Alertmanager already up ($dir)"; return 0
  fi
  down >/dev/null 2>&1 || true
  command -v prometheus >/dev/null || die "Prometheus is not installed; run scripts/setup.sh"
  local interval="${PROMETHEUS_INTERVAL:-15s}" prom_port am_port
  prom_port=$(free_port); am_port=$(free_port)
  # New ones remember nothing of the last: Alertmanager's notification log would keep it from
  # telling the new n8n about an alert it told the last one about (for repeat_interval, 4 h),
  # and its silences and Prometheus's series belong to the homelab they watched before.
  rm -rf "$dir/prometheus-data" "$dir/alertmanager-data"
  mkdir -p "$dir/prometheus-data" "$dir/alertmanager-data"

  # The rules as committed, or with every `for:` cut for a short test or demo.
  if [ -n "${PROMETHEUS_RULES_FOR:-}" ]; then
    sed -E "s/^( *)for: .*/\1for: $PROMETHEUS_RULES_FOR/" "$HOMEPLANE_ROOT/alerts/homeplane.rules.yaml" > "$dir/rules.yaml"
  else
    cp "$HOMEPLANE_ROOT/alerts/homeplane.rules.yaml" "$dir/rules.yaml"
  fi
  # Both configurations are written as JSON, which their YAML readers accept.
  python3 - "$dir" "$interval" "$am_port" "${PROMETHEUS_TARGETS:-}" "${ALERTMANAGER_WEBHOOKS:-}" \
    "${ALERTMANAGER_GROUP_WAIT:-30s}" "${ALERTMANAGER_GROUP_INTERVAL:-5m}" <<'PY'
import json, sys
d, interval, am_port, targets, webhooks, group_wait, group_interval = sys.argv[1:]
split = lambda s: [x for x in s.split(",") if x]
prometheus = {
    "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
    "rule_files": [f"{d}/rules.yaml"],
    "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
    "scrape_configs": [{"job_name": "homeplane", "static_configs": [{"targets": split(targets)}]}],
}
# The routing of alerts/alertmanager.yml, with the webhooks and waits of this run.
alertmanager = {
    "route": {"receiver": "webhooks", "group_by": ["alertname", "namespace"],
              "group_wait": group_wait, "group_interval": group_interval, "repeat_interval": "4h"},
    "receivers": [{"name": "webhooks", "webhook_configs": [
        {"url": url, "send_resolved": True} for url in split(webhooks)]}],
    "inhibit_rules": [{"source_matchers": ['alertname="HomeplaneOperatorDown"'],
                       "target_matchers": ['alertname=~"HomeplaneNoLeader|HomeplaneReconcileErrors"']}],
}
json.dump(prometheus, open(f"{d}/prometheus.yml", "w"), indent=2)
json.dump(alertmanager, open(f"{d}/alertmanager.yml", "w"), indent=2)
PY
  promtool check config "$dir/prometheus.yml" >/dev/null || die "promtool refused $dir/prometheus.yml"
  amtool check-config "$dir/alertmanager.yml" >/dev/null || die "amtool refused $dir/alertmanager.yml"

  # Clustering off: a single Alertmanager that listens on loopback only.
  setsid prometheus-alertmanager --config.file="$dir/alertmanager.yml" \
    --storage.path="$dir/alertmanager-data" --web.listen-address="127.0.0.1:$am_port" \
    --web.external-url="http://127.0.0.1:$am_port" --cluster.listen-address= \
    > "$dir/alertmanager.log" 2>&1 < /dev/null &
  echo $! > "$dir/alertmanager.pid"
  setsid prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/prometheus-data" \
    --web.listen-address="127.0.0.1:$prom_port" --web.external-url="http://127.0.0.1:$prom_port" \
    --web.enable-lifecycle --rules.alert.resend-delay="$interval" \
    > "$dir/prometheus.log" 2>&1 < /dev/null &
  echo $! > "$dir/prometheus.pid"
  wait_ready "http://127.0.0.1:$am_port/-/ready" alertmanager
  wait_ready "http://127.0.0.1:$prom_port/-/ready" prometheus
  {
    echo "export PROMETHEUS_URL=http://127.0.0.1:$prom_port"
    echo "export ALERTMANAGER_URL=http://127.0.0.1:$am_port"
  } > "$dir/env"
  if [ -n "${HOMEPLANE_PROMETHEUS_OWNER_PID:-}" ]; then
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" down "$3"' _ \
      "$HOMEPLANE_PROMETHEUS_OWNER_PID" "$0" "$dir" > /dev/null 2>&1 < /dev/null &
  fi
  log "Prometheus up on 127.0.0.1:$prom_port, Alertmanager on 127.0.0.1:$am_port ($dir)"
}

down() {
  local name pid
  for name in prometheus alertmanager; do
    running "$name" || { rm -f "$dir/$name.pid"; continue; }
    pid=$(cat "$dir/$name.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$dir/$name.pid"
  done
  log "Prometheus and Alertmanager in $dir stopped"
}

cmd="${1:-}"
case "$cmd" in
  install) install ;;
  crds) crds ;;
  up|down)
    dir="${2:-}"; [ -n "$dir" ] || die "usage: $0 up|down DIR"
    mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
    "$cmd" ;;
  *) die "usage: $0 install | crds | up DIR | down DIR" ;;
esac
