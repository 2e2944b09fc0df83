#!/bin/sh
# A tiny homeplane agent: it reads its task from HOMEPLANE_TASK, does its (here: trivial) work,
# and ends by writing its result contract as JSON to HOMEPLANE_RESULT_PATH — the container's
# termination message, /dev/termination-log — where homeplane reads it into the AgentRun's
# status. A run that ends without a valid contract is marked NoContract.
#
# The work here: count the ConfigMaps the agent's ServiceAccount may list in its namespace
# (an observer's right), using the API server the pod runs against, and write the count to a
# ConfigMap `<run>-report` (a builder's right; an observer ends PARTIAL, saying it was refused).
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

# contract STATUS SUMMARY [TEST...]: writes the result contract (with $deviation, when set, as
# its one deviation) and exits.
deviation=""
contract() {
  status="$1"; summary="$2"; shift 2
  tests=""
  for t in "$@"; do tests="${tests:+$tests,}$(json_string "$t")"; done
  deviations=""
  [ -n "$deviation" ] && deviations=$(json_string "$deviation")
  printf '{"status":"%s","summary":%s,"filesChanged":[],"commits":[],"testsRun":[%s],"deviations":[%s],"followUps":[]}\n' \
    "$status" "$(json_string "$summary")" "$tests" "$deviations" > "$result"
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
# A list's items carry no `kind`; each has one `uid` (the list itself has none).
count=$(printf '%s' "$body" | grep -o '"uid": *"' | wc -l | tr -d ' ')
found="task \"$task\": $count ConfigMap(s) in $ns"

# Leave the finding where its owner reads it: a ConfigMap named after the run. A builder may
# write one; an observer's tier is read-only, the API server refuses it, and the contract says
# so instead of pretending.
report="${HOMEPLANE_RUN:-agent}-report"
code=$(printf '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"%s"},"data":{"summary":%s}}' \
    "$report" "$(json_string "$found")" \
  | curl -s -o /dev/null -w '%{http_code}' --max-time 20 --cacert "$sa/ca.crt" -X POST \
    -H "Authorization: Bearer $(cat "$token")" -H 'Content-Type: application/json' --data-binary @- \
    "$api/api/v1/namespaces/$ns/configmaps") || code=000
case "$code" in
  201) contract DONE "$found; wrote ConfigMap $report" "list configmaps" "write report" ;;
  403) deviation="the report was not written: the API server refused ConfigMap $report (HTTP 403)"
       contract PARTIAL "$found" "list configmaps" "write report" ;;
  *) contract FAILED "$found; writing ConfigMap $report failed (HTTP $code)" "list configmaps" "write report" ;;
esac
