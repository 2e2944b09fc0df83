#!/bin/sh
# A tiny homeplane agent: it reads its task from HOMEPLANE_TASK, does its (here: trivial) work,
# and ends by writing its result contract as JSON to HOMEPLANE_RESULT_PATH — the container's
# termination message, /dev/termination-log — where homeplane reads it into the AgentRun's
# status. A run that ends without a valid contract is marked NoContract.
#
# The work here: count the ConfigMaps the agent's ServiceAccount may list in its namespace
# (an observer's right), using the API server the pod runs against.
set -eu

task="${HOMEPLANE_TASK:?HOMEPLANE_TASK is not set}"
result="${HOMEPLANE_RESULT_PATH:-/dev/termination-log}"

# json_string TEXT: TEXT as a JSON string: backslashes, quotes, tabs and newlines escaped, other
# control characters dropped.
json_string() {
  escaped=$(printf '%s' "$1" | tr -d '\000-\010\013-\037' \
    | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e "s/$(printf '\t')/\\\\t/g" \
    | awk '{ if (NR > 1) printf "%s", "\\n"; printf "%s", $0 }')
  printf '"%s"' "$escaped"
}

# contract STATUS SUMMARY [TEST...]: writes the result contract and exits.
contract() {
  status="$1"; summary="$2"; shift 2
  tests=""
  for t in "$@"; do tests="${tests:+$tests,}$(json_string "$t")"; done
  printf '{"status":"%s","summary":%s,"filesChanged":[],"commits":[],"testsRun":[%s],"deviations":[],"followUps":[]}\n' \
    "$status" "$(json_string "$summary")" "$tests" > "$result"
  case "$status" in DONE|PARTIAL) exit 0 ;; *) exit 1 ;; esac
}

sa="${HOMEPLANE_SA_DIR:-/var/run/secrets/kubernetes.io/serviceaccount}"
token="$sa/token"
if [ ! -r "$token" ]; then
  contract BLOCKED "no ServiceAccount token mounted, so the task \"$task\" could not start"
fi
ns=$(cat "$sa/namespace")
api="https://${KUBERNETES_SERVICE_HOST:-kubernetes.default.svc}:${KUBERNETES_SERVICE_PORT:-443}"
if ! body=$(curl -sf --max-time 20 --cacert "$sa/ca.crt" \
    -H "Authorization: Bearer $(cat "$token")" "$api/api/v1/namespaces/$ns/configmaps"); then
  contract FAILED "listing ConfigMaps in $ns was refused or failed (task: $task)" "list configmaps"
fi
count=$(printf '%s' "$body" | grep -o '"kind": *"ConfigMap"' | wc -l | tr -d ' ')
contract DONE "task \"$task\": $count ConfigMap(s) in $ns" "list configmaps"
