#!/usr/bin/env bash
# A real node for the test control plane: containerd (Debian's), kubelet, kube-proxy and CoreDNS
# (scripts/build-realnode.sh), registered as `real-1` (amd64, label homeplane.dev/class=real,
# taint homeplane.dev/real-node=true:NoSchedule so that nothing meant for the simulated nodes
# lands on it), with the images of scripts/realnode-images.sh imported. Pods on it really run.
#
#   scripts/realnode.sh up DIR             add real-1 to the cluster in DIR (cluster.sh up first)
#   scripts/realnode.sh down DIR           stop it and put the machine back as it was found
#   scripts/realnode.sh status DIR         exit 0 when it is up
#   scripts/realnode.sh forward DIR PORT   make the host's 127.0.0.1:PORT reachable from pods;
#                                          prints the address pods use (HOST:PORT)
#   scripts/realnode.sh import DIR ARCHIVE load an OCI image archive into the node's containerd
#   scripts/realnode.sh state DIR          print what of the machine a node could change (kernel
#                                          settings, links, routes, iptables rules, mounts,
#                                          cgroups, folders); the same before `up` and after `down`
#
# How it keeps the machine as it was (also when a run was killed: `up` first cleans what a
# previous run left, from the records in DIR/node):
# - Everything runs in a network and mount namespace of its own, held by one process: the
#   bridge, the pods' interfaces, kube-proxy's iptables rules and the CNI state live and die
#   there; /run, /var/lib and /var/log are private tmpfs inside it (containerd's state and shim
#   sockets, the CNI cache, the kubelet's /var/log/containers), and every mount containerd and
#   the kubelet make (container root file systems, volumes) is in that namespace only, so none
#   is left on the host when its last process ends.
# - The kubelet sets machine-wide kernel settings at start (kernel.panic 1->10,
#   kernel.panic_on_oops 0->1, vm.overcommit_memory 0->1, ...) and no option stops it: inside
#   the namespace those files are covered with files holding the values it wants, so it finds
#   nothing to change; the real values are also saved before and restored after.
# - Its own folders (root, certificates, pod logs, volume plugins, CNI configuration and IPAM)
#   are under DIR/node; its cgroups are under /homeplane-<id> of each hierarchy and are
#   removed by `down`; containerd's content and images are kept in DIR/node/containerd, so a
#   second run imports nothing.
# - The node reaches the API server, and pods reach the servers the tests run on the host's
#   loopback, through a forwarder listening on the host end of the node's link (10.213.N.1).
set -Eeuo pipefail
source "$(dirname "$0")/lib.sh"

cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 up|down|status|forward|import|state DIR [ARG]"
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
node="$dir/node"
NODE_NAME=real-1
# What the kubelet writes at start (pkg/kubelet/cm/container_manager_linux.go
# setupKernelTunables) and the value it wants.
KUBELET_SYSCTLS=(vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1
  kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000)
# Machine-wide settings compared before and after (the kubelet's, and what a node on the host
# network would touch).
CHECKED_SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes net/ipv4/ip_forward
  net/bridge/bridge-nf-call-iptables net/ipv4/conf/all/route_localnet
  net/netfilter/nf_conntrack_max)

id=$(printf '%s' "$dir" | sha256sum | cut -c1-8)
link="hp$id"
cgroup_root="homeplane-$id"
kubectl() { "$(sed -n 's/^kubectl //p' "$node/ns")" --kubeconfig "$dir/kubeconfig" "$@"; }

# The namespaces' holder and what `up` recorded.
holder() { sed -n 's/^holder //p' "$node/ns" 2>/dev/null; }
in_node() { nsenter -t "$(holder)" -m -n -- "$@"; }
host_ip() { sed -n 's/^host //p' "$node/ns"; }
node_ip() { sed -n 's/^node //p' "$node/ns"; }
pod_cidr() { sed -n 's/^pods //p' "$node/ns"; }

# running PID: the process exists and is not a zombie (a killed program whose parent has not
# reaped it yet is dead all the same).
running() { [ -n "$1" ] && [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

cgroup_hierarchies() { awk '$3 == "cgroup" || $3 == "cgroup2" {print $2}' /proc/self/mounts; }

# node_pids prints every process of the node: in its namespaces, in its cgroups, or started
# with its folder on the command line (what a killed run can leave behind). One pass over
# /proc in Python: a shell loop forks several times per process of the machine.
node_pids() {
  local netns="" mntns=""
  netns=$(sed -n 's/^netns //p' "$node/ns" 2>/dev/null || true)
  mntns=$(sed -n 's/^mntns //p' "$node/ns" 2>/dev/null || true)
  python3 - "$node" "$netns" "$mntns" "$cgroup_root" <<'PY'
import os, re, sys
node, netns, mntns, root = sys.argv[1:5]
n = re.escape(node)
program = re.compile(rf"^({n}/forward|(\S*/)?(nsenter|containerd|kubelet|kube-proxy|coredns) .*{n}/)")
found = set()
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) in (os.getpid(), os.getppid()):
        continue
    try:
        if netns and os.readlink(f"/proc/{pid}/ns/net") == f"net:[{netns}]":
            found.add(int(pid))
        elif mntns and os.readlink(f"/proc/{pid}/ns/mnt") == f"mnt:[{mntns}]":
            found.add(int(pid))
        else:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if program.match(f.read().replace(b"\0", b" ").decode(errors="replace")):
                    found.add(int(pid))
    except OSError:
        pass
with open("/proc/self/mounts") as mounts:
    hierarchies = [l.split()[1] for l in mounts if l.split()[2] in ("cgroup", "cgroup2")]
for h in hierarchies:
    for folder, _, files in os.walk(os.path.join(h, root)):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(folder, "cgroup.procs")) as f:
                    found.update(int(p) for p in f.read().split())
            except OSError:
                pass
for pid in sorted(found):
    print(pid)
PY
}

# ---------------------------------------------------------------------------------------------
# state: what of the machine the node could change.
state() {
  local s h
  for s in "${CHECKED_SYSCTLS[@]}"; do
    printf 'sysctl %s = %s\n' "$s" "$(cat "/proc/sys/$s" 2>/dev/null || echo absent)"
  done
  # (Other clusters' nodes and Podman have links, routes and rules of their own.)
  ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' \
    | grep -E "^($link|cni0|kube-)" | sed 's/^/link /' || true
  ip -4 route show | grep -E "dev $link( |\$)" | sed 's/^/route /' || true
  iptables-save 2>/dev/null | grep -E 'KUBE-|10\.244\.|10\.213\.' | sed 's/^/iptables /' || true
  awk -v d="$dir/" '$5 ~ "^" d || $5 ~ "^/var/lib/kubelet" || $5 ~ "^/run/containerd" ||
    $5 ~ "^/var/lib/cni" || $5 ~ "^/run/netns/cni-" {print "mount " $5}' /proc/self/mountinfo
  for h in $(cgroup_hierarchies); do
    if [ -d "$h/$cgroup_root" ]; then echo "cgroup $h/$cgroup_root"; fi
  done
  for s in /var/lib/kubelet /run/containerd /var/lib/containerd /var/lib/cni /var/log/pods \
      /var/log/containers /opt/containerd /opt/cni /etc/kubernetes /usr/libexec/kubernetes; do
    if [ -e "$s" ]; then echo "path $s: $(ls -A "$s" | tr '\n' ' ')"; fi
  done
  # (Podman's files there are not the node's.)
  if [ -d /etc/cni/net.d ]; then
    echo "path /etc/cni/net.d: $(ls -A /etc/cni/net.d | grep -v podman | tr '\n' ' ')"
  fi
  if [ -d /run/netns ]; then
    echo "path /run/netns: $(ls -A /run/netns | grep '^cni-' | tr '\n' ' ')"
  fi
  node_pids | sed 's/^/process /'
  return 0
}

# ---------------------------------------------------------------------------------------------
# down: stop everything, clean what is left, restore the kernel settings.
down() {
  [ -d "$node" ] || return 0
  local name pid
  # The node's programs first, gently (the kubelet leaves its pods alone when stopped).
  if [ -f "$node/pids" ]; then
    tac "$node/pids" | while read -r name pid; do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 30); do
      alive=0
      while read -r name pid; do running "$pid" && alive=1; done < "$node/pids"
      [ "$alive" = 0 ] && break; sleep 0.2
    done
  fi
  # Then everything else of the node: shims, pods' processes, the namespaces' holder.
  for _ in $(seq 1 20); do
    pids=$(node_pids)
    [ -z "$pids" ] && break
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    sleep 0.2
  done
  [ -z "$(node_pids)" ] || log "warning: processes of the real node survived: $(node_pids | tr '\n' ' ')"
  # Its cgroups, deepest first (a memory cgroup can take a moment to let go).
  local h
  for h in $(cgroup_hierarchies); do
    [ -d "$h/$cgroup_root" ] || continue
    for _ in $(seq 1 25); do
      find "$h/$cgroup_root" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [ -d "$h/$cgroup_root" ] || break
      sleep 0.2
    done
    [ -d "$h/$cgroup_root" ] && log "warning: could not remove cgroup $h/$cgroup_root"
  done
  # The link goes with the network namespace; a namespace pinned by something else would keep it.
  ip link show "$link" >/dev/null 2>&1 && ip link delete "$link" 2>/dev/null || true
  restore_sysctls
  # Tell the API server, if it is still there, that the node and its endpoints are gone.
  if [ -f "$node/ns" ] && [ -f "$dir/kubeconfig" ]; then
    kubectl --request-timeout=5s delete node "$NODE_NAME" --wait=false >/dev/null 2>&1 || true
    kubectl --request-timeout=5s delete endpointslice -n default kubernetes-realnode \
      --wait=false >/dev/null 2>&1 || true
  fi
  rm -f "$node/pids" "$node/ns" "$node/forwards"
  log "real node of $dir stopped"
}

save_sysctls() {
  # A file left by a run that was killed holds the values from before it: keep it.
  [ -s "$node/sysctl.saved" ] && return 0
  local s
  for s in "${CHECKED_SYSCTLS[@]}"; do
    [ -w "/proc/sys/$s" ] && printf '%s %s\n' "$s" "$(cat "/proc/sys/$s")"
  done > "$node/sysctl.saved.partial"
  mv "$node/sysctl.saved.partial" "$node/sysctl.saved"
}

restore_sysctls() {
  [ -s "$node/sysctl.saved" ] || return 0
  local s v
  while read -r s v; do
    if [ "$(cat "/proc/sys/$s" 2>/dev/null)" != "$v" ]; then
      log "restoring $s to $v (was $(cat "/proc/sys/$s"))"
      printf '%s\n' "$v" > "/proc/sys/$s"
    fi
  done < "$node/sysctl.saved"
  rm -f "$node/sysctl.saved"
}

# ---------------------------------------------------------------------------------------------
# up
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  for _ in $(seq 1 $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "timed out after ${secs}s waiting for $what; logs are in $node/logs"
  tail -n 30 "$node"/logs/*.log >&2 || true
  return 1
}

is_up() {
  [ -f "$node/pids" ] && [ -f "$node/ns" ] && [ -f "$dir/kubeconfig" ] || return 1
  while read -r _ pid; do running "$pid" || return 1; done < "$node/pids"
  running "$(holder)" || return 1
  [ "$(kubectl get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' \
    2>/dev/null)" = True ]
}

start() { # start NAME COMMAND...: a program of the node, in the background, recorded in pids
  local name=$1; shift
  setsid "$@" >> "$node/logs/$name.log" 2>&1 < /dev/null &
  echo "$name $!" >> "$node/pids"
}

start_forward() { # start_forward PORT: the host's 127.0.0.1:PORT at HOST_IP:PORT
  # Named after the node's folder, so that a forwarder whose record was lost is still found.
  start "forward-$1" bash -c 'exec -a "$0" "$@"' "$node/forward" "$bin/forward" \
    "$(host_ip):$1" "127.0.0.1:$1"
  echo "$1" >> "$node/forwards"
}

namespaces_ready() { [ "$(readlink "/proc/$1/ns/net")" != "$(readlink /proc/self/ns/net)" ]; }

# pick_subnet chooses N for the node's link, 10.213.N.0/30, and its pods, 10.244.N.0/24: from
# the folder, avoiding one in use on the host (another cluster's node).
pick_subnet() {
  local n=$(( (16#$id % 250) + 2 )) i
  for i in $(seq 0 250); do
    local k=$(( (n + i - 2) % 252 + 2 ))
    if ! ip -4 addr show | grep -q "inet 10\.213\.$k\."; then echo "$k"; return 0; fi
  done
  die "no free 10.213.N.0/30 subnet for the node's link"
}

sign() { # sign NAME SUBJECT [EXTENSIONS]: a key and certificate signed by the cluster's CA
  local c="$node/pki"
  [ -f "$c/$1.crt" ] && return 0
  printf '%s\n' "${3:-extendedKeyUsage=clientAuth}" > "$c/$1.ext"
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$c/$1.key" -out "$c/$1.csr" 2>/dev/null
  openssl x509 -req -in "$c/$1.csr" -CA "$dir/certs/ca.crt" -CAkey "$dir/certs/ca.key" \
    -CAcreateserial -days 3650 -extfile "$c/$1.ext" -out "$c/$1.crt" 2>/dev/null
}

component_kubeconfig() { # component_kubeconfig NAME: NAME.kubeconfig with NAME's certificate
  # The node reaches the API server through the forwarder; its certificate names `kubernetes`.
  cat > "$node/$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: homeplane
  cluster:
    server: https://$(host_ip):$api_port
    tls-server-name: kubernetes
    certificate-authority: $dir/certs/ca.crt
users:
- name: $1
  user: {client-certificate: $node/pki/$1.crt, client-key: $node/pki/$1.key}
contexts:
- name: homeplane
  context: {cluster: homeplane, user: $1}
current-context: homeplane
KC
}

cluster_objects() {
  cat <<YAML
# The kubelet's rights (the Node authorizer is not enabled in the test control plane).
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "homeplane:realnode:kubelet"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:node"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:node:$NODE_NAME"}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "homeplane:realnode:coredns"}
rules:
- {apiGroups: [""], resources: [services, namespaces, pods], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "homeplane:realnode:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "homeplane:realnode:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "homeplane:realnode:coredns"}]
---
# Pods reach the API server at the kubernetes Service; the API server of the test cluster
# listens on loopback only, so its endpoint is the forwarder on the host end of the node's link.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes-realnode
  namespace: default
  labels: {kubernetes.io/service-name: kubernetes, endpointslice.kubernetes.io/managed-by: homeplane.dev-realnode}
addressType: IPv4
endpoints: [{addresses: ["$(host_ip)"], conditions: {ready: true}}]
ports: [{name: https, port: $api_port, protocol: TCP}]
---
# Volumes of the real node: k3s's local-path class makes a hostPath folder per claim on the
# node that first uses it; here the folders are made in advance and bound when a pod using the
# claim is scheduled (WaitForFirstConsumer), so a claim never binds to a simulated node.
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: real-local}
provisioner: kubernetes.io/no-provisioner
reclaimPolicy: Retain
volumeBindingMode: WaitForFirstConsumer
YAML
  local i
  for i in $(seq 1 12); do
    cat <<YAML
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: $NODE_NAME-$i, labels: {homeplane.dev/real-node: "true"}}
spec:
  storageClassName: real-local
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: $node/volumes/pv-$i, type: Directory}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$NODE_NAME]}]
YAML
  done
}

import_archive() { # import_archive ARCHIVE: load it unless this containerd already did
  local archive=$1 mark
  mark="$node/containerd/imported-$(basename "$archive")"
  if [ -f "$mark" ] && [ -z "$(in_node ctr -n k8s.io images ls -q | grep -vxF -f - "$mark")" ]; then
    return 0
  fi
  local refs
  refs=$(in_node ctr -n k8s.io images import "$archive" | awk '/^unpacking/ {print $2}')
  [ -n "$refs" ] || die "ctr imported nothing from $archive"
  printf '%s\n' "$refs" > "$mark"
}

up() {
  cluster_bin="$("$HOMEPLANE_ROOT/scripts/build-cluster.sh")"
  [ -f "$dir/kubeconfig" ] || die "no cluster in $dir: run scripts/cluster.sh up $dir first"
  if is_up; then log "real node already up ($dir)"; return 0; fi
  # Whatever a previous run left (killed, or failed half-way) goes first.
  down 2>/dev/null || true
  local t0 images
  t0=$(date +%s.%N)
  for c in containerd ctr runc nsenter unshare iptables; do
    command -v "$c" >/dev/null || die "$c is missing: run scripts/setup.sh"
  done
  bin="$("$HOMEPLANE_ROOT/scripts/build-realnode.sh")"
  images="$("$HOMEPLANE_ROOT/scripts/realnode-images.sh" build)"
  mkdir -p "$node"/{logs,pki,shield,kubelet,pod-logs,volume-plugins,containerd,cni/net.d,cni/ipam}
  : > "$node/logs/up.log"
  # What the node keeps between runs is containerd's root (images); the rest starts afresh.
  rm -rf "$node/volumes" "$node/cni/ipam"/* "$node/kubelet"/* "$node/pod-logs"/*
  for i in $(seq 1 12); do mkdir -p "$node/volumes/pv-$i"; chmod 777 "$node/volumes/pv-$i"; done
  save_sysctls
  api_port=$(sed -n 's#^ *server: https://127.0.0.1:\([0-9]*\)$#\1#p' "$dir/kubeconfig")
  [ -n "$api_port" ] || die "cannot read the API server's port from $dir/kubeconfig"

  # The namespaces, held by one process.
  setsid unshare --net --mount --propagation private -- sleep infinity > /dev/null 2>&1 < /dev/null &
  local h=$! k
  wait_for 10 "the node's namespaces" namespaces_ready "$h"
  k=$(pick_subnet)
  {
    echo "kubectl $cluster_bin/kubectl"
    echo "holder $h"
    echo "netns $(readlink /proc/$h/ns/net | tr -dc 0-9)"
    echo "mntns $(readlink /proc/$h/ns/mnt | tr -dc 0-9)"
    echo "host 10.213.$k.1"
    echo "node 10.213.$k.2"
    echo "pods 10.244.$k.0/24"
  } > "$node/ns"
  : > "$node/pids"
  for m in /run /var/lib /var/log; do in_node mount -t tmpfs -o mode=755 "homeplane-$id" "$m"; done
  local s
  for s in "${KUBELET_SYSCTLS[@]}"; do
    mkdir -p "$(dirname "$node/shield/${s%%=*}")"
    printf '%s\n' "${s#*=}" > "$node/shield/${s%%=*}"
    in_node mount --bind "$node/shield/${s%%=*}" "/proc/sys/${s%%=*}"
  done
  ip link add "$link" type veth peer name eth0 netns "$h"
  ip addr add "$(host_ip)/30" dev "$link"
  ip link set "$link" up
  in_node ip link set lo up
  in_node ip addr add "$(node_ip)/30" dev eth0
  in_node ip link set eth0 up
  in_node ip route add default via "$(host_ip)"
  # The host reaches the pods too (the API server's proxy, port-forward); the route goes with
  # the link.
  ip route add "$(pod_cidr)" via "$(node_ip)" dev "$link"
  in_node sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1

  # Certificates and kubeconfigs of the node's programs, and the API server's forwarder.
  sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  sign kube-proxy "/CN=system:kube-proxy"
  sign coredns "/CN=homeplane:realnode:coredns"
  for c in kubelet kube-proxy coredns; do component_kubeconfig "$c"; done
  : > "$node/forwards"
  start_forward "$api_port"
  cluster_objects | kubectl apply -f - >/dev/null

  # cgroups: the kubelet's root in every hierarchy (it must exist); cpuset needs its CPUs set.
  local hier
  for hier in $(cgroup_hierarchies); do mkdir -p "$hier/$cgroup_root"; done
  if [ -d /sys/fs/cgroup/cpuset/$cgroup_root ]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus > "/sys/fs/cgroup/cpuset/$cgroup_root/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems > "/sys/fs/cgroup/cpuset/$cgroup_root/cpuset.mems"
  fi

  # containerd: CRI settings this machine needs (no CAP_SYS_RESOURCE, cgroup v1).
  cat > "$node/containerd.toml" <<TOML
version = 2
root = "$node/containerd/root"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$node/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/homeplane/pause:3.10.2"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node/cni/net.d"
TOML
  cat > "$node/cni/net.d/10-homeplane.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "homeplane", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$(pod_cidr)"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$node/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
  start containerd nsenter -t "$h" -m -n -- containerd --config "$node/containerd.toml"
  wait_for 30 containerd in_node ctr version
  # Containers of a previous run are dead; their records would only confuse the kubelet.
  local c
  for c in $(in_node ctr -n k8s.io containers ls -q); do
    in_node ctr -n k8s.io tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
    in_node ctr -n k8s.io tasks delete -f "$c" >/dev/null 2>&1 || true
    in_node ctr -n k8s.io containers delete "$c" >/dev/null 2>&1 || true
  done
  import_archive "$images"

  # The kubelet.
  printf 'nameserver %s\n' "$(node_ip)" > "$node/resolv.conf"
  cat > "$node/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$cgroup_root
podLogsDir: $node/pod-logs
volumePluginDir: $node/volume-plugins
address: $(node_ip)
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $dir/certs/ca.crt}
authorization: {mode: AlwaysAllow}
clusterDomain: cluster.local
clusterDNS: [$(node_ip)]
resolvConf: $node/resolv.conf
registerWithTaints: [{key: homeplane.dev/real-node, value: "true", effect: NoSchedule}]
failSwapOn: false
# The node's images are imported, never pulled: never collect them, and do not evict pods for
# the disk the other checkouts' builds fill.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
shutdownGracePeriod: 0s
YAML
  start kubelet nsenter -t "$h" -m -n -- "$bin/kubelet" --config "$node/kubelet.yaml" \
    --kubeconfig "$node/kubelet.kubeconfig" --root-dir "$node/kubelet" \
    --cert-dir "$node/kubelet/pki" --hostname-override "$NODE_NAME" --node-ip "$(node_ip)" \
    --node-labels "homeplane.dev/class=real,homeplane.dev/real-node=true" --v=1

  # kube-proxy, its rules in the node's namespace; conntrack settings left alone.
  cat > "$node/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $node/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $(pod_cidr)
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
  start kube-proxy nsenter -t "$h" -m -n -- "$bin/kube-proxy" --config "$node/kube-proxy.yaml"

  # CoreDNS at the node's address (the kubelet's clusterDNS).
  cat > "$node/Corefile" <<COREFILE
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $(node_ip)
    errors
    health 127.0.0.1:8080
    ready 127.0.0.1:8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $node/coredns.kubeconfig
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 30
}
.:53 {
    bind $(node_ip)
    errors
}
COREFILE
  start coredns nsenter -t "$h" -m -n -- "$bin/coredns" -conf "$node/Corefile"

  wait_for 90 "node $NODE_NAME Ready" kubectl wait "node/$NODE_NAME" --for=condition=Ready --timeout=1s
  wait_for 30 "CoreDNS ready" in_node curl -sf http://127.0.0.1:8181/ready
  wait_for 30 "kube-proxy's rules" in_node curl -sf http://127.0.0.1:10256/healthz
  local secs; secs=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  echo "$secs" > "$node/startup-seconds"
  log "real node $NODE_NAME up in ${secs}s (node $(node_ip), host $(host_ip), logs in $node/logs)"
}

forward() { # forward PORT: host's 127.0.0.1:PORT at HOST_IP:PORT for the pods
  local port=$1
  [ -f "$node/ns" ] && running "$(holder)" || die "the real node of $dir is not up"
  if ! grep -qx "$port" "$node/forwards" 2>/dev/null; then
    bin="$("$HOMEPLANE_ROOT/scripts/build-realnode.sh")"
    start_forward "$port"
    wait_for 10 "the forwarder of port $port" bash -c "exec 3<>/dev/tcp/$(host_ip)/$port"
  fi
  echo "$(host_ip):$port"
}

case "$cmd" in
  up)
    # (Once, from this shell: subshells inherit the trap.)
    trap '[ "$BASHPID" = $$ ] && { log "the real node did not start; cleaning up"; down; }' ERR
    up
    trap - ERR
    ;;
  down) down ;;
  status) is_up ;;
  forward) [ -n "${3:-}" ] || die "usage: $0 forward DIR PORT"; forward "$3" ;;
  import) [ -n "${3:-}" ] || die "usage: $0 import DIR ARCHIVE"; import_archive "$3" ;;
  state) state ;;
  *) die "usage: $0 up|down|status|forward|import|state DIR [ARG]" ;;
esac
