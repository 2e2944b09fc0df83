#!/usr/bin/env bash
# `make demo`: a local homelab, applied from Git by Flux. Starts the real control plane with a
# simulated Pi (pi-1) and GPU node (gpu-1), PostgreSQL, a local S3 server and n8n (with an owner
# and an API key), Flux's source- and kustomize-controller with a Git server on loopback, and the
# operator. The example homelab becomes a Git repository (.homeplane/demo/homelab, served as
# homelab.git) that Flux applies: homeplane's CRDs and RBAC first, then the homelab (dependsOn),
# with this run's endpoints as a kustomize overlay in the repository itself (demo/). Then it takes
# one encrypted backup of the database and one of n8n's data volume (to an age identity generated
# for the demo in .homeplane/demo/age.key), and prints what Flux and homeplane see and the URL of its status dashboard.
# It also runs a real Prometheus and Alertmanager with homeplane's alert rules, whose
# notifications (the demo's true drift) arrive in n8n. Everything stays running;
# `make demo-down` stops it. State lives in .homeplane/demo/.
#
#   scripts/demo.sh up | down
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$HOMEPLANE_ROOT"
state="$HOMEPLANE_ROOT/.homeplane/demo"
mkdir -p "$state"

# gpu_host_up starts Podman's API service and the GPU host's containers (a busybox image
# imported under each service's image name): one container is left stopped and one runs without
# its memory limit, so that the registry has something true to report.
gpu_host_up() {
  command -v podman >/dev/null || return 1
  "$HOMEPLANE_ROOT/scripts/podman.sh" up "$state/podman" 2> "$state/podman.log" || return 1
  (
    # shellcheck disable=SC1091
    source "$state/podman/env"
    if ! podman image exists localhost/gpu-host-base:1; then
      local root="$state/podman/rootfs"
      mkdir -p "$root/bin" && cp /usr/bin/busybox "$root/bin/busybox"
      tar -C "$root" -cf "$root.tar" . && podman import -q "$root.tar" localhost/gpu-host-base:1 >/dev/null
    fi
    create() { # create NAME IMAGE PODMAN-ARGS...
      local name=$1 image=$2; shift 2
      podman container exists "$name" && return 0
      podman tag localhost/gpu-host-base:1 "localhost/$image"
      podman create -q --name "$name" "$@" "localhost/$image" /bin/busybox sleep 2147483647 >/dev/null
    }
    create ollama ollama/ollama:0.12.0-rocm --cpus 8 --memory 24g --restart unless-stopped
    create whisper-stt onerahmet/openai-whisper-asr-webservice:v1.9.1 --cpus 4 --memory 8g --restart unless-stopped
    create qwen3-embeddings ghcr.io/huggingface/text-embeddings-inference:1.8.2 --cpus 4 --memory 8g --restart unless-stopped
    create piper-tts rhasspy/wyoming-piper:1.6.2 --cpus 2 --memory 2g --restart unless-stopped
    create openwakeword rhasspy/wyoming-openwakeword:1.10.0 --cpus 1 --memory 1g --restart unless-stopped
    create kokoro-tts ghcr.io/remsky/kokoro-fastapi-gpu:v0.2.4 --cpus 2 --restart unless-stopped
    podman start ollama whisper-stt qwen3-embeddings openwakeword kokoro-tts >/dev/null
  ) 2>> "$state/podman.log"
}

operator_running() { [ -f "$state/operator.pid" ] && kill -0 "$(cat "$state/operator.pid")" 2>/dev/null; }

# phase NAME ends a phase of `make demo`: its time since the previous one is printed at the end.
phases=()
phase_mark=$(date +%s)
phase() {
  local now; now=$(date +%s)
  phases+=("$1: $((now - phase_mark))s")
  phase_mark=$now
}

up() {
  local t0; t0=$(date +%s)
  "$HOMEPLANE_ROOT/scripts/setup.sh" demo
  phase "tools (setup.sh demo)"
  log "building homeplane (release)"
  cargo build --release --locked -q -p homeplane-operator
  phase "homeplane's release build"
  local bin; bin="$("$HOMEPLANE_ROOT/scripts/build-cluster.sh")"
  phase "control plane build"
  local fresh=0
  "$HOMEPLANE_ROOT/scripts/cluster.sh" status "$state/cluster" 2>/dev/null || fresh=1
  # PostgreSQL, S3 and n8n (its start-up is the longest) start while the control plane and
  # Flux do: none needs another to start.
  # n8n's data goes with the cluster's: a fresh cluster gets a fresh n8n (the install stays
  # cached), or the Workflows of an earlier demo would still hold their webhook paths there.
  if [ "$fresh" = 1 ]; then
    "$HOMEPLANE_ROOT/scripts/n8n.sh" down "$state/n8n" 2>/dev/null; rm -rf "$state/n8n"
  fi
  local servers=() names=() i
  "$HOMEPLANE_ROOT/scripts/postgres.sh" up "$state/postgres" & servers+=($!); names+=(PostgreSQL)
  "$HOMEPLANE_ROOT/scripts/s3.sh" up "$state/s3" & servers+=($!); names+=("the S3 server")
  "$HOMEPLANE_ROOT/scripts/n8n.sh" up "$state/n8n" & servers+=($!); names+=(n8n)
  "$HOMEPLANE_ROOT/scripts/cluster.sh" up "$state/cluster"
  phase "control plane up"
  export KUBECONFIG="$state/cluster/kubeconfig"
  local kubectl="$bin/kubectl"
  # Flux runs against this cluster: a fresh cluster gets it restarted (a running Flux would
  # still talk to the cluster of an earlier demo).
  [ "$fresh" = 1 ] && "$HOMEPLANE_ROOT/scripts/flux.sh" down "$state/flux" >/dev/null 2>&1
  "$HOMEPLANE_ROOT/scripts/flux.sh" up "$state/flux" "$state/cluster/kubeconfig"
  phase "Flux up"
  for i in "${!servers[@]}"; do
    wait "${servers[$i]}" || die "${names[$i]} did not start (its messages are above)"
  done
  phase "PostgreSQL, S3 and n8n up"
  local git_url; git_url="$(sed -n 's/^export FLUX_GIT_URL=//p' "$state/flux/env")/homelab.git"

  # What Git must not hold: the Secrets the homelab names (created here, never committed).
  local ns
  for ns in data automation; do
    "$kubectl" create namespace "$ns" --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
  done
  local pg_url pg_password pg_port
  pg_url="$(sed -n 's/^export DATABASE_URL=//p' "$state/postgres/env")"
  pg_password="${pg_url#postgres://postgres:}"; pg_password="${pg_password%%@*}"
  pg_port="${pg_url##*:}"; pg_port="${pg_port%%/*}"
  "$kubectl" create secret generic pg-admin -n data --from-literal=username=postgres \
    --from-literal=password="$pg_password" --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
  local n8n_url n8n_key
  n8n_url="$(sed -n 's/^export N8N_URL=//p' "$state/n8n/env")"
  n8n_key="$(sed -n 's/^export N8N_API_KEY=//p' "$state/n8n/env")"
  "$kubectl" create secret generic n8n-api -n automation --from-literal=apiKey="$n8n_key" \
    --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
  # Backups: the owner's age identity (demo only: a real owner keeps it off the cluster) and the
  # local S3 server as the bucket.
  [ -f "$state/age.key" ] || age-keygen -o "$state/age.key" 2>/dev/null
  chmod 600 "$state/age.key"
  local recipient s3_endpoint; recipient="$(age-keygen -y "$state/age.key")"
  s3_endpoint="$(sed -n 's/^export AWS_ENDPOINT_URL=//p' "$state/s3/env")"
  (
    source "$state/s3/env"
    HOMEPLANE_BACKUP_BUCKET=homelab-backups "$CARGO_TARGET_DIR/release/homeplane" backup ensure-bucket 2>/dev/null
    for ns in data automation; do
      "$kubectl" create secret generic r2 -n "$ns" --from-literal=accessKeyId="$AWS_ACCESS_KEY_ID" \
        --from-literal=secretAccessKey="$AWS_SECRET_ACCESS_KEY" --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
    done
  )
  # The GPU host's containers run outside the cluster; here Podman's Docker-compatible API
  # stands in for Docker on the GPU box, and the registry's docker properties read it.
  local docker_endpoint=""
  if gpu_host_up; then
    docker_endpoint="unix://$state/podman/podman.sock"
  else
    log "Podman is not available: the GPU host's properties stay Unknown"
  fi

  log "committing the homelab to the demo's Git repository (.homeplane/demo/homelab)"
  demo_repo "$git_url" "$pg_port" "$n8n_url" "$s3_endpoint" "$recipient" "$docker_endpoint"
  log "applying it with Flux: GitRepository flux-system/homeplane, Kustomizations homeplane and homelab"
  flux_sync "$git_url" | "$kubectl" apply -f - >/dev/null
  "$kubectl" annotate gitrepository homeplane -n flux-system --overwrite \
    "reconcile.fluxcd.io/requestedAt=$(date +%s%N)" >/dev/null
  "$kubectl" wait --for=condition=Ready --timeout=120s kustomization/homeplane -n flux-system >/dev/null \
    || die "Flux did not apply homeplane's CRDs and RBAC: kubectl describe kustomization homeplane -n flux-system"

  if operator_running; then
    log "operator already running (pid $(cat "$state/operator.pid"))"
  else
    local port; port=$(free_port)
    echo "$port" > "$state/operator.port"
    # The status dashboard, on this machine only, with its actions on (it is the demo).
    local dport; dport=$(free_port)
    echo "$dport" > "$state/dashboard.port"
    # homeplane's own database (drift and backup history) lives on the demo PostgreSQL.
    psql "$pg_url" -qtAc "SELECT 1 FROM pg_database WHERE datname = 'homeplane'" | grep -q 1 \
      || psql "$pg_url" -qc "CREATE DATABASE homeplane" >/dev/null
    log "starting the operator (log: .homeplane/demo/operator.log)"
    # MALLOC_ARENA_MAX as the chart runs it (charts/homeplane/templates/deployment.yaml).
    HOMEPLANE_NAMESPACE=homeplane-system RUST_LOG=info MALLOC_ARENA_MAX=2 \
      HOMEPLANE_HISTORY_DATABASE_URL="${pg_url%/*}/homeplane" setsid \
      "$CARGO_TARGET_DIR/release/homeplane" run --http-addr "127.0.0.1:$port" --identity demo \
      --trusted-registry-namespace monitoring \
      --dashboard-addr "127.0.0.1:$dport" --dashboard-actions \
      > "$state/operator.log" 2>&1 < /dev/null &
    echo $! > "$state/operator.pid"
  fi
  local port; port=$(cat "$state/operator.port")
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.2; done
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { tail -20 "$state/operator.log"; die "the operator did not become ready"; }
  phase "Secrets, the homelab in Git, CRDs by Flux, operator ready"

  log "waiting for Flux to apply the homelab (Kustomization homelab)"
  for _ in $(seq 1 300); do
    "$kubectl" get voicepipeline assistant -n ai >/dev/null 2>&1 && break
    sleep 0.2
  done
  "$kubectl" get voicepipeline assistant -n ai >/dev/null 2>&1 \
    || die "Flux did not apply the homelab: kubectl describe kustomization homelab -n flux-system"
  "$kubectl" wait --for=condition=Available --timeout=90s deployment -l app.kubernetes.io/part-of=homelab -A >/dev/null
  "$kubectl" wait --for=condition=Ready --timeout=60s nodeclass --all >/dev/null
  "$kubectl" wait --for=condition=Ready --timeout=90s database/homelab -n data >/dev/null \
    || log "the homelab Database is not Ready yet: kubectl describe database homelab -n data"
  "$kubectl" wait --for=condition=Ready --timeout=90s memoryserver/memory -n data >/dev/null \
    || log "the MemoryServer is not Ready yet: kubectl describe memoryserver memory -n data"
  "$kubectl" wait --for=condition=Ready --timeout=90s voicepipeline/assistant -n ai >/dev/null \
    || log "the VoicePipeline is not Ready yet: kubectl describe voicepipeline assistant -n ai"
  phase "homelab applied by Flux, workloads Ready"
  alerting_start "$port" "$n8n_url"

  log "taking a backup of the homelab database to the local S3 server"
  if ! "$kubectl" get backup demo -n data >/dev/null 2>&1; then
    printf 'apiVersion: homeplane.dev/v1alpha1\nkind: Backup\nmetadata: {name: demo, namespace: data}\nspec: {policy: postgres}\n' \
      | "$kubectl" create -f - >/dev/null
  fi
  "$kubectl" wait --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s backup/demo -n data >/dev/null \
    || log "the demo backup did not succeed: kubectl describe backup demo -n data"
  # n8n's volume: the same bucket and key, and one backup now (its Job played below).
  log "backing up n8n's data volume (a Job of homeplane's image)"
  if ! "$kubectl" get backup demo-n8n -n automation >/dev/null 2>&1; then
    printf 'apiVersion: homeplane.dev/v1alpha1\nkind: Backup\nmetadata: {name: demo-n8n, namespace: automation}\nspec: {policy: n8n-data}\n' \
      | "$kubectl" create -f - >/dev/null
  fi
  finish_demo_volume_backup "$kubectl"
  "$kubectl" wait --for=condition=Ready --timeout=90s workflow --all -n automation >/dev/null \
    || log "a Workflow is not Ready yet: kubectl get workflows -n automation"
  "$kubectl" wait --for=condition=Ready --timeout=60s agent --all -n ai >/dev/null \
    || log "an Agent is not Ready yet: kubectl get agents -n ai"
  finish_demo_run "$kubectl"
  # Flux calls the homelab Ready once every object is (the AgentRun only once its run ended).
  "$kubectl" wait --for=condition=Ready --timeout=180s kustomization/homelab -n flux-system >/dev/null \
    || log "Flux does not call the homelab Ready yet: kubectl describe kustomization homelab -n flux-system"
  sleep 1 # let the capacity plans catch up with the last pods
  phase "backups, Workflows, Agents, the AgentRun; Flux Ready"

  # A fresh evaluation of the state registry with everything in place: ask twice, so that an
  # evaluation already under way when the world settled is not the one shown.
  local asked
  for _ in 1 2; do
    asked=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    sleep 1 # the evaluation asked for ends in a later second than $asked
    "$kubectl" annotate stateregistry homelab -n monitoring --overwrite \
      "homeplane.dev/evaluate-requested=$(date +%s%N)" >/dev/null
    for _ in $(seq 1 60); do
      [[ "$("$kubectl" get stateregistry homelab -n monitoring -o jsonpath='{.status.lastEvaluationTime}')" > "$asked" ]] && break
      sleep 1
    done
  done

  phase "state registry evaluated"
  alerting_wait "$kubectl" "$n8n_url" "$n8n_key"
  phase "the first alert in n8n"

  # The binary is also the kubectl plugin (`kubectl homeplane status`), by its name.
  mkdir -p "$state/bin"
  ln -sf "$CARGO_TARGET_DIR/release/homeplane" "$state/bin/kubectl-homeplane"
  ln -sf "$CARGO_TARGET_DIR/release/homeplane" "$state/bin/kubectl_complete-homeplane"
  local dashboard="(restart the operator with make demo-down && make demo to serve it)"
  [ -f "$state/dashboard.port" ] && dashboard="http://127.0.0.1:$(cat "$state/dashboard.port")/"
  cp "$state/cluster/kubeconfig" "$state/kubeconfig"
  chmod 600 "$state/kubeconfig"
  {
    echo "export KUBECONFIG=$state/kubeconfig"
    echo "export PATH=$state/bin:$bin:$CARGO_TARGET_DIR/release:\$PATH"
    echo "export HOMEPLANE_DASHBOARD_URL=$dashboard"
    cat "$state/postgres/env"
    cat "$state/s3/env"
    echo "export HOMEPLANE_BACKUP_BUCKET=homelab-backups"
    echo "export HOMEPLANE_METRICS_URL=http://127.0.0.1:$port/metrics"
    echo "export HOMEPLANE_BIN=$CARGO_TARGET_DIR/release/homeplane"
    echo "export HOMEPLANE_HISTORY_DATABASE_URL=$(sed -n 's/^export DATABASE_URL=//p' "$state/postgres/env" | sed 's#/[^/]*$#/homeplane#')"
    cat "$state/n8n/env"
    cat "$state/prometheus/env" 2>/dev/null || true
  } > "$state/env"
  chmod 600 "$state/env"

  echo
  echo "== kubectl get nodes"; "$kubectl" get nodes -L kubernetes.io/arch,homeplane.dev/class
  echo; echo "== kubectl get nodeclass"; "$kubectl" get nodeclass
  echo; echo "== kubectl get pods -A -l app.kubernetes.io/part-of=homelab -o wide"
  "$kubectl" get pods -A -l app.kubernetes.io/part-of=homelab -o wide | awk '{print $1, $2, $4, $8}' | column -t
  echo; echo "== kubectl get databases -A"; "$kubectl" get databases -A
  echo; echo "== kubectl get memoryservers,voicepipelines -A"
  "$kubectl" get memoryservers,voicepipelines -A
  echo; echo "== what homeplane placed (kubectl get pods -A -l app.kubernetes.io/managed-by=homeplane -o wide)"
  "$kubectl" get pods -A -l app.kubernetes.io/managed-by=homeplane -o wide | awk '{print $1, $2, $4, $8}' | column -t
  echo; echo "== role Secrets (one per login role, with a connection URI)"
  "$kubectl" get secrets -n data -l app.kubernetes.io/managed-by=homeplane
  echo; echo "== kubectl get stateregistry -A"; "$kubectl" get stateregistry -A
  echo; echo "== kubectl get backups -A"; "$kubectl" get backups -A
  echo; echo "== kubectl get workflows -n automation (in n8n at $n8n_url)"
  "$kubectl" get workflows -n automation
  echo; echo "== kubectl get agents,agentruns -n ai"; "$kubectl" get agents,agentruns -n ai
  echo; echo "== kubectl get drift -A"; "$kubectl" get drift -A 2>&1
  alerting_show "$kubectl" "$n8n_url" "$n8n_key"
  echo; echo "== kubectl get gitrepositories,kustomizations -A (Flux, applying .homeplane/demo/homelab)"
  "$kubectl" get gitrepositories,kustomizations -A
  echo
  echo "homeplane is running (ready in $(( $(date +%s) - t0 ))s; by phase: $(printf '%s, ' "${phases[@]}" | sed 's/, $//'))."
  echo "Change the homelab the way you would at"
  echo "home — edit it in Git, commit, push, and watch Flux and homeplane converge:"
  echo "  source .homeplane/demo/env && cd .homeplane/demo/homelab"
  echo "  \$EDITOR homelab/database.yaml         # e.g. under roles: add  - {name: reporting, access: [{tier: convenience, level: read}]}"
  echo "  git commit -am 'a reporting role' && git push"
  echo "  kubectl get kustomizations -n flux-system -w   # Flux fetches every 20s; homelab turns Ready at the new revision"
  echo "  kubectl get secret homelab-reporting -n data   # the role's Secret (and the role in PostgreSQL)"
  echo "  kubectl annotate gitrepository homeplane -n flux-system reconcile.fluxcd.io/requestedAt=\$(date +%s) --overwrite   # fetch now"
  echo
  echo "  The dashboard: $dashboard   (actions on; kubectl homeplane status in a terminal)"
  echo
  echo "Try also:"
  echo "  kubectl get nodeclass pi -o yaml      # the Pi's capacity plan"
  echo "  homeplane plan -f manifests/overlays/homelab   # the same plan offline, from the manifests"
  echo "  kubectl get configmap assistant-chain -n ai -o yaml   # the voice chain for the gateway"
  echo "  psql \"\$DATABASE_URL\"                  # the demo PostgreSQL (superuser)"
  echo "  kubectl get secret homelab-readonly -n data -o jsonpath='{.data.uri}' | base64 -d"
  echo "  homeplane backup decrypt --backup demo -n data --identity .homeplane/demo/age.key | pg_restore -l"
  echo "  homeplane restore --backup demo-n8n -n automation --identity .homeplane/demo/age.key --into-dir /tmp/n8n-restored"
  echo "  curl -s \$HOMEPLANE_METRICS_URL        # the operator's metrics"
  echo "  kubectl get drift -A -w               # watch drift appear and resolve"
  echo "  homeplane drift history db.server.version   # its transitions (binary: \$HOMEPLANE_BIN)"
  echo "  curl -s -H \"X-N8N-API-KEY: \$N8N_API_KEY\" \$N8N_URL/api/v1/workflows   # n8n itself"
  echo "  kubectl get agentrun audit-automation-limits -n ai -o yaml   # a run and its contract"
  echo "  kubectl homeplane status              # what needs you, as the dashboard's first page"
  echo "  kubectl homeplane trace memoryserver/memory -n data   # its dependencies, to the first broken link"
  echo "  amtool alert query --alertmanager.url=\$ALERTMANAGER_URL   # the alerts firing now"
  echo "  make demo-down                        # stop everything"
}

# demo_repo URL PG_PORT N8N_URL S3_ENDPOINT RECIPIENT DOCKER_ENDPOINT: the demo's Git repository
# of the example homelab. .homeplane/demo/homelab is the working copy a person edits; it pushes
# to URL (Flux's Git server). Its folders:
#   operator/  homeplane's CRDs, namespace and RBAC from this checkout (refreshed on every run;
#              no Deployment: the demo runs the operator as a local process)
#   homelab/   the example homelab, copied from manifests/homelab once and then the person's
#   demo/      a kustomize overlay of homelab/ with this run's endpoints (the demo PostgreSQL's
#              port, n8n's URL, the S3 server, the demo's age key, Podman's socket), rewritten
#              on every run, so that Flux applies them with the homelab and never reverts them
# What make demo changes is committed and pushed; a person's uncommitted edits are left alone.
demo_repo() {
  local url=$1 pg_port=$2 n8n_url=$3 s3_endpoint=$4 recipient=$5 docker_endpoint=$6
  local work="$state/homelab" bare="$state/flux/git/homelab.git" first=0
  if [ ! -d "$work/.git" ]; then
    first=1
    mkdir -p "$work" && git -C "$work" init -q -b main
    cp -r manifests/homelab "$work/homelab"
  fi
  [ -d "$bare" ] || git init -q --bare -b main "$bare"
  git -C "$work" remote remove origin 2>/dev/null || true
  git -C "$work" remote add origin "$url"
  # A commit needs an author; a machine without a Git identity gets one for this repository.
  git -C "$work" config user.email >/dev/null || git -C "$work" config user.email "demo@homeplane.local"
  git -C "$work" config user.name >/dev/null || git -C "$work" config user.name "homeplane demo"

  rm -rf "$work/operator" && mkdir -p "$work/operator/crds"
  cp manifests/base/crds/*.yaml "$work/operator/crds/"
  cp manifests/base/namespace.yaml "$work/operator/"
  # The chart's RBAC and admission policies (docs/security.md); the homelab's director
  # dispatches runs, so the demo's admin makes agentruns and agents grantable, and the
  # monitoring namespace's registry is trusted to see the whole homelab.
  "$bin/helm" template homeplane charts/homeplane --namespace homeplane-system --kube-version v1.37.2 \
    --show-only templates/rbac.yaml --show-only templates/agent-roles.yaml \
    --show-only templates/agent-admission.yaml \
    --set-json 'agents.extraGrantable=[{"apiGroup":"homeplane.dev","resource":"agentruns"},{"apiGroup":"homeplane.dev","resource":"agents"}]' \
    --set 'stateRegistry.trustedNamespaces={monitoring}' > "$work/operator/rbac.yaml"
  {
    echo "# homeplane's CRDs, namespace and RBAC (manifests/base without the Deployment: the demo runs"
    echo "# the operator as a local process). Written by make demo from the checkout on every run."
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "resources:"
    echo "- namespace.yaml"
    (cd "$work/operator" && for f in crds/*.yaml; do echo "- $f"; done)
    echo "- rbac.yaml"
  } > "$work/operator/kustomization.yaml"

  mkdir -p "$work/demo"
  cat > "$work/demo/kustomization.yaml" <<YAML
# This run's endpoints, written by make demo (scripts/demo.sh) on every run: the demo's
# PostgreSQL, n8n and S3 server listen on ports chosen when they start, and backups go to the
# demo's age key. Flux applies the homelab (../homelab) with these patches, so it never puts the
# example's values back. Edit ../homelab; this folder is rewritten.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../homelab
patches:
- target: {kind: Database, name: homelab}
  patch: |
    - {op: replace, path: /spec/server/external/host, value: "127.0.0.1"}
    - {op: replace, path: /spec/server/external/port, value: $pg_port}
- target: {kind: Workflow}
  patch: |
    - {op: replace, path: /spec/n8n/url, value: "$n8n_url"}
- target: {kind: BackupPolicy}
  patch: |
    - {op: replace, path: /spec/destination/endpoint, value: "$s3_endpoint"}
    - {op: replace, path: /spec/recipients, value: ["$recipient"]}
YAML
  if [ -n "$docker_endpoint" ]; then
    # The GPU host's catalogue with Podman's socket for its Docker API (kustomize cannot replace
    # part of a string): the ConfigMap state-gpu-host of homelab/registry.yaml, rewritten.
    awk -v endpoint="$docker_endpoint" '
      /^---/ { if (keep) exit; doc = ""; next }
      { doc = doc $0 "\n" }
      /^  name: state-gpu-host$/ { keep = 1 }
      END { if (keep) { gsub(/tcp:\/\/gpu-host:2375/, endpoint, doc); printf "%s", doc } }
    ' "$work/homelab/registry.yaml" > "$work/demo/state-gpu-host.yaml"
    if [ -s "$work/demo/state-gpu-host.yaml" ]; then
      printf -- '- path: state-gpu-host.yaml\n' >> "$work/demo/kustomization.yaml"
    else
      rm -f "$work/demo/state-gpu-host.yaml"
    fi
  else
    rm -f "$work/demo/state-gpu-host.yaml"
  fi

  if [ "$first" = 1 ]; then
    git -C "$work" add -A
    git -C "$work" commit -q -m "The example homelab, applied by Flux"
  else
    git -C "$work" add -A operator demo
    git -C "$work" diff --cached --quiet -- operator demo \
      || git -C "$work" commit -q -m "make demo: homeplane's CRDs and RBAC, and this run's endpoints" -- operator demo
  fi
  # The served repository of an earlier demo whose working copy was removed has a history
  # unrelated to this one and would refuse the push: it starts over from the working copy. A
  # related history that has moved on (a push from elsewhere) is never overwritten.
  git -C "$work" fetch -q origin 2>/dev/null || true
  if git -C "$work" rev-parse -q --verify origin/main >/dev/null \
    && ! git -C "$work" merge-base HEAD origin/main >/dev/null; then
    log "the demo's Git repository held an earlier, unrelated homelab: starting it over"
    rm -rf "$bare" && git init -q --bare -b main "$bare"
  fi
  git -C "$work" push -q -u origin main \
    || die "cannot push .homeplane/demo/homelab to the demo's Git server: git -C .homeplane/demo/homelab pull --rebase, then make demo again"
}

# flux_sync URL prints the Flux objects of the demo: manifests/flux (GitRepository homeplane,
# Kustomizations homeplane and homelab, with homeplane's health rule) pointed at the demo
# repository, its operator/ and demo/ folders, fetching every 20 s.
flux_sync() {
  local url=$1 dir="$state/flux-sync"
  mkdir -p "$dir"
  cat > "$dir/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../../../manifests/flux
patches:
- target: {kind: GitRepository, name: homeplane}
  patch: |
    - {op: replace, path: /spec/url, value: "$url"}
    - {op: replace, path: /spec/interval, value: 20s}
- target: {kind: Kustomization, name: homeplane}
  patch: |
    - {op: replace, path: /spec/path, value: ./operator}
- target: {kind: Kustomization, name: homelab}
  patch: |
    - {op: replace, path: /spec/path, value: ./demo}
YAML
  "$kubectl" kustomize "$dir"
}

down() {
  if operator_running; then
    kill -TERM "$(cat "$state/operator.pid")" 2>/dev/null || true
    for _ in $(seq 1 50); do operator_running || break; sleep 0.2; done
    log "operator stopped"
  fi
  rm -f "$state/operator.pid"
  "$HOMEPLANE_ROOT/scripts/flux.sh" down "$state/flux"
  "$HOMEPLANE_ROOT/scripts/prometheus.sh" down "$state/prometheus" 2>/dev/null || true
  "$HOMEPLANE_ROOT/scripts/podman.sh" down "$state/podman" 2>/dev/null || true
  "$HOMEPLANE_ROOT/scripts/postgres.sh" down "$state/postgres"
  "$HOMEPLANE_ROOT/scripts/s3.sh" down "$state/s3"
  "$HOMEPLANE_ROOT/scripts/n8n.sh" down "$state/n8n"
  "$HOMEPLANE_ROOT/scripts/cluster.sh" down "$state/cluster"
}

# alerting_start OPERATOR-PORT N8N-URL: a real Prometheus and Alertmanager (Debian's) scraping
# the operator with alerts/homeplane.rules.yaml — every `for:` cut to 15 s so that the demo
# does not wait minutes — and posting to n8n's alert-notifications workflow
# (manifests/homelab/alerting.yaml). Started once the homelab's workloads are Ready, so that what
# fires is what is true of it (the drift), and while the demo goes on: an alert takes half a
# minute from the drift to n8n (a scrape, the 15 s, Alertmanager's group_wait).
alerting_start() {
  local port=$1 n8n_url=$2
  log "starting Prometheus and Alertmanager with homeplane's alert rules"
  PROMETHEUS_TARGETS="127.0.0.1:$port" PROMETHEUS_INTERVAL=5s PROMETHEUS_RULES_FOR=15s \
    ALERTMANAGER_WEBHOOKS="$n8n_url/webhook/homeplane-alerts" ALERTMANAGER_GROUP_WAIT=5s \
    ALERTMANAGER_GROUP_INTERVAL=30s "$HOMEPLANE_ROOT/scripts/prometheus.sh" up "$state/prometheus"
}

# alerting_wait KUBECTL N8N-URL N8N-KEY: waits (at most 2 minutes) for the first message in n8n.
alerting_wait() {
  local kubectl=$1 n8n_url=$2 n8n_key=$3 id="" am
  am=$(sed -n 's/^export ALERTMANAGER_URL=//p' "$state/prometheus/env")
  "$kubectl" wait --for=condition=Ready --timeout=60s workflow/alert-notifications -n automation >/dev/null \
    || { log "the alert-notifications Workflow is not Ready: kubectl describe workflow alert-notifications -n automation"; return 0; }
  id=$("$kubectl" get workflow alert-notifications -n automation -o jsonpath='{.status.n8nId}')
  log "waiting for the demo's drift to fire and reach n8n"
  for _ in $(seq 1 120); do
    if curl -sf "$am/api/v2/alerts?active=true" | grep -q HomeplaneCriticalDrift \
      && curl -sf -H "X-N8N-API-KEY: $n8n_key" "$n8n_url/api/v1/executions?workflowId=$id&limit=1" \
        | grep -q '"id"'; then
      return 0
    fi
    sleep 1
  done
  log "no alert reached n8n yet: amtool alert query --alertmanager.url=$am"
}

# alerting_show KUBECTL N8N-URL N8N-KEY: the alerts firing and the messages n8n formatted.
alerting_show() {
  local kubectl=$1 n8n_url=$2 n8n_key=$3 prom am id
  prom=$(sed -n 's/^export PROMETHEUS_URL=//p' "$state/prometheus/env" 2>/dev/null)
  am=$(sed -n 's/^export ALERTMANAGER_URL=//p' "$state/prometheus/env" 2>/dev/null)
  [ -n "$am" ] || return 0
  echo; echo "== alerts firing (Alertmanager $am, Prometheus $prom/alerts)"
  amtool alert query --alertmanager.url="$am" 2>&1 | cut -c1-160
  id=$("$kubectl" get workflow alert-notifications -n automation -o jsonpath='{.status.n8nId}' 2>/dev/null)
  [ -n "$id" ] || return 0
  echo; echo "== their messages in n8n ($n8n_url/workflow/$id/executions)"
  curl -sf -H "X-N8N-API-KEY: $n8n_key" "$n8n_url/api/v1/executions?workflowId=$id&includeData=true&limit=3" \
    | python3 -c '
import json, sys
for e in json.load(sys.stdin).get("data", []):
    run = e.get("data", {}).get("resultData", {}).get("runData", {}).get("Format message", [])
    for r in run:
        for item in r.get("data", {}).get("main", [[]])[0]:
            print(item["json"]["text"][:1200]); print()
' 2>/dev/null || true
}

# finish_demo_run KUBECTL: plays the example agent of the demo's AgentRun. Simulated nodes run
# no containers (and KWOK leaves agent-run pods running), so the demo writes what the agent's
# container would on exit: a terminated state with the result contract as its termination
# message. homeplane then reads the contract into the AgentRun's status.
finish_demo_run() {
  local kubectl=$1 run=audit-automation-limits job="" pod="" now phase
  phase=$("$kubectl" get agentrun "$run" -n ai -o jsonpath='{.status.phase}' 2>/dev/null)
  case "$phase" in ""|Queued|Running) ;; *) return 0 ;; esac # ended in an earlier `make demo`
  for _ in $(seq 1 150); do
    job=$("$kubectl" get agentrun "$run" -n ai -o jsonpath='{.status.jobName}' 2>/dev/null)
    [ -n "$job" ] && pod=$("$kubectl" get pods -n ai -l "batch.kubernetes.io/job-name=$job" \
      --field-selector status.phase=Running -o jsonpath='{.items[0].metadata.name}' 2>/dev/null)
    [ -n "$pod" ] && break
    sleep 0.2
  done
  [ -n "$pod" ] || { log "the demo AgentRun did not start: kubectl describe agentrun $run -n ai"; return 0; }
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local contract='{\"status\":\"DONE\",\"summary\":\"checked 4 ConfigMaps in automation: every service has a memory limit\",\"filesChanged\":[],\"commits\":[],\"testsRun\":[\"list configmaps -n automation\"],\"deviations\":[],\"followUps\":[\"audit monitoring next\"]}'
  "$kubectl" patch pod "$pod" -n ai --subresource=status --type=merge -p "{\"status\":{\"phase\":\"Succeeded\",
    \"containerStatuses\":[{\"name\":\"agent\",\"image\":\"ghcr.io/homeplane/example-agent:0.1\",\"imageID\":\"\",
    \"ready\":false,\"restartCount\":0,\"started\":false,\"state\":{\"terminated\":{\"exitCode\":0,
    \"reason\":\"Completed\",\"message\":\"$contract\",\"startedAt\":\"$now\",\"finishedAt\":\"$now\"}}}]}}" >/dev/null
  for _ in $(seq 1 100); do
    [ "$("$kubectl" get agentrun "$run" -n ai -o jsonpath='{.status.phase}')" = Done ] && return 0
    sleep 0.2
  done
  log "the demo AgentRun did not finish: kubectl describe agentrun $run -n ai"
}

# finish_demo_volume_backup KUBECTL: plays the Job of the demo's PVC backup. Its container would
# run `homeplane backup pvc` with the claim mounted at /data; simulated nodes run no containers
# (and KWOK leaves backup-run pods running), so the demo runs that exact command line here, with
# the demo n8n's real data folder in place of the claim and the S3 credentials the Job would
# get from its Secret, then writes the pod's end state with the result as its termination
# message. homeplane checks the object in the bucket before the Backup is Succeeded.
finish_demo_volume_backup() {
  local kubectl=$1 backup=demo-n8n job="" pod="" phase
  phase=$("$kubectl" get backup "$backup" -n automation -o jsonpath='{.status.phase}' 2>/dev/null)
  case "$phase" in ""|Pending|Running) ;; *) return 0 ;; esac # ended in an earlier `make demo`
  for _ in $(seq 1 150); do
    job=$("$kubectl" get backup "$backup" -n automation -o jsonpath='{.status.job}' 2>/dev/null)
    [ -n "$job" ] && pod=$("$kubectl" get pods -n automation -l "batch.kubernetes.io/job-name=$job" \
      --field-selector status.phase=Running -o jsonpath='{.items[0].metadata.name}' 2>/dev/null)
    [ -n "$pod" ] && break
    sleep 0.2
  done
  [ -n "$pod" ] || { log "the n8n volume backup did not start: kubectl describe backup $backup -n automation"; return 0; }
  local result="$state/n8n-backup-result.json" code=0
  rm -f "$result"
  "$kubectl" get pod "$pod" -n automation -o json | python3 -c '
import json, sys
args = json.load(sys.stdin)["spec"]["containers"][0]["args"]
data, result = sys.argv[1], sys.argv[2]
sys.stdout.write("\0".join(data if a == "/data" else result if a == "/dev/termination-log" else a for a in args))
' "$state/n8n/data" "$result" > "$state/n8n-backup-args"
  ( source "$state/s3/env"; xargs -0 -a "$state/n8n-backup-args" "$CARGO_TARGET_DIR/release/homeplane" >/dev/null 2>"$state/n8n-backup.log" ) || code=$?
  local message now
  message=$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read() if len(sys.argv) > 1 else ""))' "$result" 2>/dev/null || echo '""')
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  "$kubectl" patch pod "$pod" -n automation --subresource=status --type=merge -p "{\"status\":{
    \"phase\":\"$([ "$code" = 0 ] && echo Succeeded || echo Failed)\",
    \"containerStatuses\":[{\"name\":\"backup\",\"image\":\"ghcr.io/homeplane/homeplane:0.1.0\",\"imageID\":\"\",
    \"ready\":false,\"restartCount\":0,\"started\":false,\"state\":{\"terminated\":{\"exitCode\":$code,
    \"reason\":\"$([ "$code" = 0 ] && echo Completed || echo Error)\",\"message\":$message,\"startedAt\":\"$now\",\"finishedAt\":\"$now\"}}}]}}" >/dev/null
  "$kubectl" wait --for=jsonpath='{.status.phase}'=Succeeded --timeout=60s backup/$backup -n automation >/dev/null \
    || log "the n8n volume backup did not succeed: kubectl describe backup $backup -n automation"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) die "usage: $0 up|down" ;;
esac
