#!/bin/bash
# The single node of the real-pod tier: a privileged container that runs containerd, the control
# plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler), a kubelet, kube-proxy and
# CoreDNS as plain processes, all built from source (e2e/node/build.sh) or taken from Debian's
# packages (containerd, runc, the CNI plugins). What kind's node does with systemd and kubeadm, done
# by one script: see docs/e2e.md for why.
#
# It makes a fresh PKI and tokens at every start, writes the admin kubeconfig to
# /etc/optiserve/admin.kubeconfig (server https://<node IP>:6443) and exits as soon as any of its
# processes does, so a broken node is a stopped container, never a half-working cluster.
set -euo pipefail

CFG=/etc/optiserve
LOGS=/var/log/optiserve
RUN=/run/optiserve
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
NODE_NAME="$(hostname | tr '[:upper:]' '[:lower:]')"
NODE_IP="$(ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)"
mkdir -p "$CFG" "$LOGS" "$RUN" /etc/cni/net.d /var/lib/kubelet /var/lib/etcd

log() { printf '%s node: %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# Volumes need shared mount propagation; forwarding and bridge netfilter make Services work.
mount --make-rshared /
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || log "no bridge netfilter here: kube-proxy masquerades all"

make_pki() {
    cd "$CFG"
    openssl genrsa -out ca.key 2048 2>/dev/null
    openssl req -x509 -new -key ca.key -days 30 -subj "/CN=optiserve-e2e-ca" -out ca.crt
    openssl genrsa -out apiserver.key 2048 2>/dev/null
    openssl req -new -key apiserver.key -subj "/CN=kube-apiserver" -out apiserver.csr
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' \
        "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,DNS:$NODE_NAME,IP:127.0.0.1,IP:$API_SERVICE_IP,IP:$NODE_IP" \
        >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    cd - >/dev/null
}

# One static token per component, with the identity Kubernetes' bootstrap RBAC (and the Node
# authorizer, for the kubelet) expects of it.
declare -A USERS=(
    [admin]="admin,admin,system:masters"
    [kubelet]="system:node:$NODE_NAME,kubelet,system:nodes"
    [kube-proxy]="system:kube-proxy,kube-proxy,"
    [kube-scheduler]="system:kube-scheduler,kube-scheduler,"
    [kube-controller-manager]="system:kube-controller-manager,kube-controller-manager,"
)

write_tokens() {
    : >"$CFG/tokens.csv"
    local who token user uid group server
    for who in "${!USERS[@]}"; do
        token="$(openssl rand -hex 16)"
        IFS=, read -r user uid group <<<"${USERS[$who]}"
        echo "$token,$user,$uid,\"$group\"" >>"$CFG/tokens.csv"
        server="https://$NODE_IP:6443"
        cat >"$CFG/$who.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "$server", certificate-authority-data: "$(base64 -w0 "$CFG/ca.crt")"}}]
users: [{name: $who, user: {token: "$token"}}]
contexts: [{name: e2e, context: {cluster: e2e, user: $who}}]
current-context: e2e
EOF
    done
}

write_configs() {
    cat >"$CFG/containerd.toml" <<EOF
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  # The node lacks CAP_SYS_RESOURCE (see node_cluster.py): never ask runc for a lower OOM score.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
EOF
    cat >/etc/cni/net.d/10-optiserve.conflist <<EOF
{
  "cniVersion": "1.0.0",
  "name": "optiserve",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
    cat >"$CFG/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
clusterDNS: ["$NODE_IP"]
clusterDomain: cluster.local
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
# The node shares the machine's disk: never evict a test's pods for it, never collect its images.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
podCIDR: "$POD_CIDR"
EOF
    cat >"$CFG/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $CFG/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: "$POD_CIDR"
hostnameOverride: "$NODE_NAME"
iptables: {masqueradeAll: true}
conntrack: {maxPerCore: 0}
metricsBindAddress: 127.0.0.1:10249
EOF
    cat >"$CFG/Corefile" <<EOF
.:53 {
    errors
    health 127.0.0.1:8181
    ready 127.0.0.1:8182
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $CFG/admin.kubeconfig e2e
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 30
}
EOF
}

declare -A PIDS=()
start() {
    local name="$1"
    shift
    "$@" >"$LOGS/$name.log" 2>&1 &
    PIDS[$!]="$name"
    log "started $name (pid $!)"
}

wait_for() {
    local what="$1" seconds="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            log "$what not up after ${seconds} s"
            exit 1
        fi
        sleep 0.5
    done
    log "$what up"
}

api() { curl -sf --cacert "$CFG/ca.crt" -H "Authorization: Bearer $(cut -d, -f1 <(grep ',admin,' "$CFG/tokens.csv"))" "https://$NODE_IP:6443$1"; }

make_pki
write_tokens
write_configs

start containerd containerd --config "$CFG/containerd.toml"
start etcd etcd --name="$NODE_NAME" --data-dir=/var/lib/etcd \
    --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
    --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
    --initial-cluster="$NODE_NAME=http://127.0.0.1:2380" --unsafe-no-fsync --log-level=warn
wait_for etcd 60 curl -sf http://127.0.0.1:2379/health
start kube-apiserver kube-apiserver --etcd-servers=http://127.0.0.1:2379 \
    --advertise-address="$NODE_IP" --bind-address=0.0.0.0 --secure-port=6443 \
    --tls-cert-file="$CFG/apiserver.crt" --tls-private-key-file="$CFG/apiserver.key" --client-ca-file="$CFG/ca.crt" \
    --token-auth-file="$CFG/tokens.csv" --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$CFG/sa.pub" --service-account-signing-key-file="$CFG/sa.key" \
    --kubelet-preferred-address-types=InternalIP --profiling=false --v=1
wait_for kube-apiserver 120 api /readyz
start kube-controller-manager kube-controller-manager --kubeconfig="$CFG/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$CFG/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$CFG/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$CFG/sa.key" --root-ca-file="$CFG/ca.crt" \
    --cluster-name=optiserve-e2e --profiling=false --v=1
start kube-scheduler kube-scheduler --kubeconfig="$CFG/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$CFG/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$CFG/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --profiling=false --v=1
wait_for containerd 60 ctr --address /run/containerd/containerd.sock version
start kubelet kubelet --config="$CFG/kubelet.yaml" --kubeconfig="$CFG/kubelet.kubeconfig" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --root-dir=/var/lib/kubelet \
    --cert-dir=/var/lib/kubelet/pki --v=1
start kube-proxy kube-proxy --config="$CFG/kube-proxy.yaml" --v=1
start coredns coredns -conf "$CFG/Corefile"
wait_for coredns 60 curl -sf http://127.0.0.1:8181/health
touch "$RUN/started"
log "all started; node $NODE_NAME at $NODE_IP"

# The node lives as long as every process does.
set +e
wait -n -p exited "${!PIDS[@]}"
status=$?
log "${PIDS[$exited]:-a process} exited with status $status; stopping the node"
tail -n 40 "$LOGS/${PIDS[$exited]:-containerd}.log" || true
exit 1
