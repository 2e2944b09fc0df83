#!/usr/bin/env bash
# Starts and stops the local Kubernetes control plane used by the tests and the demo: etcd,
# kube-apiserver, kube-controller-manager and kube-scheduler on loopback with generated
# certificates (as controller-runtime's envtest does), and KWOK simulating two nodes:
#   pi-1   arm64, 4 CPU, 8 GiB              (the Raspberry Pi 5)
#   gpu-1  amd64, 16 CPU, 64 GiB, 1 amd.com/gpu, tainted amd.com/gpu:NoSchedule
#
#   scripts/cluster.sh up DIR     start (or find running) a cluster whose state lives in DIR
#   scripts/cluster.sh down DIR   stop it (DIR is kept, so logs can be read)
#   scripts/cluster.sh status DIR exit 0 when it is up
#   scripts/cluster.sh restart DIR NAME   stop one component (etcd, kube-apiserver, ...) and start
#                                 it again with the same arguments and data (fault tests)
#
# DIR/kubeconfig is an admin kubeconfig; DIR/env has `export KUBECONFIG=...` lines.
# With HOMEPLANE_REAL_NODE=1, `up` also adds a real kubelet + containerd node, `real-1`
# (scripts/realnode.sh); `down` always takes it down.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 up|down|status DIR"
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"

is_up() {
  [ -f "$dir/kubeconfig" ] && [ -f "$dir/pids" ] || return 1
  while read -r _ pid; do kill -0 "$pid" 2>/dev/null || return 1; done < "$dir/pids"
  "$bin/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz >/dev/null 2>&1
}

stop() {
  [ -f "$dir/pids" ] || return 0
  # Stop in reverse start order; etcd last.
  tac "$dir/pids" | while read -r name pid; do
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -f "$dir/pids"
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  for _ in $(seq 1 $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "timed out after ${secs}s waiting for $what; logs are in $dir/logs"
  tail -n 20 "$dir"/logs/*.log >&2 || true
  return 1
}

certs() {
  local c="$dir/certs"; mkdir -p "$c"
  [ -f "$c/admin.crt" ] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=homeplane-test-ca" \
    -keyout "$c/ca.key" -out "$c/ca.crt" 2>/dev/null
  cat > "$c/apiserver.ext" <<EXT
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth
EXT
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$c/apiserver.key" -out "$c/apiserver.csr" 2>/dev/null
  openssl x509 -req -in "$c/apiserver.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial \
    -days 3650 -extfile "$c/apiserver.ext" -out "$c/apiserver.crt" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' > "$c/client.ext"
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=admin" \
    -keyout "$c/admin.key" -out "$c/admin.csr" 2>/dev/null
  openssl x509 -req -in "$c/admin.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial \
    -days 3650 -extfile "$c/client.ext" -out "$c/admin.crt" 2>/dev/null
  openssl genrsa -out "$c/sa.key" 2048 2>/dev/null
  openssl rsa -in "$c/sa.key" -pubout -out "$c/sa.pub" 2>/dev/null
}

# The API server's client certificate for kubelets (kubectl logs/exec on the real node).
kubelet_client_cert() {
  local c="$dir/certs"
  [ -f "$c/kubelet-client.crt" ] && return 0
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout "$c/kubelet-client.key" -out "$c/kubelet-client.csr" 2>/dev/null
  openssl x509 -req -in "$c/kubelet-client.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial \
    -days 3650 -extfile "$c/client.ext" -out "$c/kubelet-client.crt" 2>/dev/null
}

kubeconfig() { # kubeconfig PORT
  local c="$dir/certs"
  cat > "$dir/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: homeplane
  cluster:
    server: https://127.0.0.1:$1
    certificate-authority-data: $(base64 -w0 "$c/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(base64 -w0 "$c/admin.crt")
    client-key-data: $(base64 -w0 "$c/admin.key")
contexts:
- name: homeplane
  context: {cluster: homeplane, user: admin}
current-context: homeplane
KC
  chmod 600 "$dir/kubeconfig"
}

start() { # start NAME BINARY ARGS...
  local name=$1; shift
  setsid "$@" > "$dir/logs/$name.log" 2>&1 < /dev/null &
  echo "$name $!" >> "$dir/pids"
}

# k3s ships the `local-path` StorageClass (the default) and makes a hostPath volume on the node
# for each claim. Nothing can make directories on a simulated node, so here the class comes
# with volumes made in advance: four 10 GiB hostPath volumes on pi-1 (folders under the
# cluster's directory), bound by the real PV controller to whichever claims ask for them.
storage() {
  cat <<'YAML'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local-path
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: rancher.io/local-path
reclaimPolicy: Retain
volumeBindingMode: Immediate
YAML
  local i
  for i in 1 2 3 4; do
    mkdir -p "$dir/volumes/pv-$i"
    cat <<YAML
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: local-pi-1-$i}
spec:
  storageClassName: local-path
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: $dir/volumes/pv-$i, type: Directory}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [pi-1]}]
YAML
  done
}

nodes() {
  cat <<'YAML'
apiVersion: v1
kind: Node
metadata:
  name: pi-1
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels:
    kubernetes.io/arch: arm64
    kubernetes.io/os: linux
    kubernetes.io/hostname: pi-1
    node.kubernetes.io/instance-type: raspberry-pi-5-8gb
    homeplane.dev/class: pi
    type: kwok
status:
  allocatable: {cpu: "4", memory: 8Gi, pods: "110"}
  capacity: {cpu: "4", memory: 8Gi, pods: "110"}
  nodeInfo: {architecture: arm64, operatingSystem: linux, kubeletVersion: v1.37.2-kwok}
---
apiVersion: v1
kind: Node
metadata:
  name: gpu-1
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: gpu-1
    node.kubernetes.io/instance-type: radeon-7900xtx-24gb
    homeplane.dev/class: gpu
    type: kwok
spec:
  taints:
  - {key: amd.com/gpu, value: present, effect: NoSchedule}
status:
  allocatable: {cpu: "16", memory: 64Gi, pods: "110", amd.com/gpu: "1"}
  capacity: {cpu: "16", memory: 64Gi, pods: "110", amd.com/gpu: "1"}
  nodeInfo: {architecture: amd64, operatingSystem: linux, kubeletVersion: v1.37.2-kwok}
YAML
}

up() {
  if is_up; then log "control plane already up ($dir)"; return 0; fi
  stop
  local t0; t0=$(date +%s.%N)
  mkdir -p "$dir/logs"; certs; kubelet_client_cert
  local etcd_port etcd_peer api_port kcm_port sched_port kwok_port c="$dir/certs"
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port)
  kcm_port=$(free_port); sched_port=$(free_port); kwok_port=$(free_port)
  rm -rf "$dir/etcd"
  start etcd "$bin/etcd" --name default --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "default=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync=true --log-level warn
  wait_for 30 etcd curl -sf "http://127.0.0.1:$etcd_port/health"
  start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" --cert-dir "$c" \
    --tls-cert-file "$c/apiserver.crt" --tls-private-key-file "$c/apiserver.key" \
    --client-ca-file "$c/ca.crt" --secure-port "$api_port" --bind-address 127.0.0.1 \
    --advertise-address 127.0.0.1 --service-cluster-ip-range 10.0.0.0/24 --allow-privileged=true \
    --authorization-mode RBAC --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$c/sa.pub" --service-account-signing-key-file "$c/sa.key" \
    --profiling=false --endpoint-reconciler-type none \
    --kubelet-client-certificate "$c/kubelet-client.crt" --kubelet-client-key "$c/kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP,Hostname
  kubeconfig "$api_port"
  wait_for 90 kube-apiserver "$bin/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz
  start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig "$dir/kubeconfig" \
    --authentication-kubeconfig "$dir/kubeconfig" --authorization-kubeconfig "$dir/kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --leader-elect=false \
    --service-account-private-key-file "$c/sa.key" --root-ca-file "$c/ca.crt" \
    --use-service-account-credentials=false --profiling=false \
    --node-monitor-grace-period 40s
  start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$dir/kubeconfig" \
    --authentication-kubeconfig "$dir/kubeconfig" --authorization-kubeconfig "$dir/kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false --profiling=false
  start kwok "$bin/kwok" --config "$bin/kwok-stages.yaml" --kubeconfig "$dir/kubeconfig" --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --cidr 10.0.0.1/24 --node-ip 10.0.0.1 --server-address "127.0.0.1:$kwok_port" \
    --node-lease-duration-seconds 40
  nodes | "$bin/kubectl" --kubeconfig "$dir/kubeconfig" apply -f - >/dev/null
  storage | "$bin/kubectl" --kubeconfig "$dir/kubeconfig" apply -f - >/dev/null
  wait_for 60 "nodes Ready" "$bin/kubectl" --kubeconfig "$dir/kubeconfig" wait node/pi-1 node/gpu-1 \
    --for=condition=Ready --timeout=1s
  wait_for 60 "the default ServiceAccount" "$bin/kubectl" --kubeconfig "$dir/kubeconfig" \
    get serviceaccount default -n default
  {
    echo "export KUBECONFIG=$dir/kubeconfig"
    echo "export HOMEPLANE_CLUSTER_BIN=$bin"
    echo "export PATH=$bin:\$PATH"
  } > "$dir/env"
  local secs; secs=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  echo "$secs" > "$dir/startup-seconds"
  log "control plane up in ${secs}s: kubeconfig $dir/kubeconfig (API https://127.0.0.1:$api_port)"
}

restart() { # restart NAME: the same command line again, after the process is gone
  local name=$1 pid args=()
  pid=$(awk -v n="$name" '$1 == n {print $2}' "$dir/pids")
  [ -n "$pid" ] || die "no $name in $dir/pids"
  mapfile -d '' args < "/proc/$pid/cmdline"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  sed -i "/^$name /d" "$dir/pids"
  setsid "${args[@]}" >> "$dir/logs/$name.log" 2>&1 < /dev/null &
  echo "$name $!" >> "$dir/pids"
  wait_for 90 "$name after a restart" "$bin/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz
  log "$name restarted ($dir)"
}

bin="$("$HOMEPLANE_ROOT/scripts/build-cluster.sh")"
case "$cmd" in
  up)
    up
    if [ "${HOMEPLANE_REAL_NODE:-0}" = 1 ]; then "$HOMEPLANE_ROOT/scripts/realnode.sh" up "$dir"; fi
    # A test process that started its own cluster gets it stopped when it exits.
    if [ -n "${HOMEPLANE_CLUSTER_OWNER_PID:-}" ]; then
      setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" down "$3"' _ \
        "$HOMEPLANE_CLUSTER_OWNER_PID" "$0" "$dir" > /dev/null 2>&1 < /dev/null &
    fi
    ;;
  down)
    "$HOMEPLANE_ROOT/scripts/realnode.sh" down "$dir"
    stop; log "control plane in $dir stopped" ;;
  status) is_up ;;
  restart) restart "${3:?usage: $0 restart DIR NAME}" ;;
  *) die "usage: $0 up|down|status|restart DIR" ;;
esac
