# A real node for up.sh (sourced, never executed), when STACKPLANE_NODE=1: a second API server
# on the same etcd (its own key prefix) whose cluster has one node — containerd, runc, the
# bridge CNI, kubelet 1.20.2 — a kube-scheduler and a kube-controller-manager running the
# workload controllers (Deployments, ReplicaSets, Jobs, volume binding). Its images are built
# on this machine from Debian's files (node/images.py) and imported; nothing is pulled.
#
# Why a second cluster: the main cluster's tests "play the node" (they write Deployment and
# Job status themselves, and the 1,000-tenant benchmarks need that), which a running Deployment
# controller would fight. Tests that want real pods use STACKPLANE_NODE_KUBECONFIG.
#
# Uses up.sh's $run, $pki, $etcd_port, record, wait_for, kubeconfig_for.
# shellcheck shell=bash

NODE_NAME="stackplane-node"

# The pod network: a bridge with a /24 of its own for this run (10.244.N.0/24, the first N no
# other interface uses). Made before Postgres starts, so Postgres can listen on the gateway
# address, which is how pods reach it.
node_network() {
  local n
  for n in $(seq 1 250); do
    if ! ip -4 -o addr show | grep -q " 10\.244\.$n\.1/"; then
      node_subnet="10.244.$n.0/24"
      node_gateway="10.244.$n.1"
      node_bridge="spnode$n"
      break
    fi
  done
  [ -n "${node_bridge:-}" ] || die "no free 10.244.N.0/24 for the node's pod network"
  mkdir -p "$run/node"
  ip link add "$node_bridge" type bridge || die "cannot make bridge $node_bridge (root and iproute2 needed)"
  echo "$node_bridge" >"$run/node/bridge"
  ip addr add "$node_gateway/24" dev "$node_bridge"
  ip link set "$node_bridge" up
}

start_node() {
  local node="$run/node"
  mkdir -p "$node/cni" "$node/containerd" "$node/kubelet/pki" "$node/images"
  : >"$node/pids"

  # --- the node cluster's API server ---------------------------------------------------------
  node_api_port="$(free_port)"
  local admin kcm sched kubelet
  admin="$(openssl rand -hex 24)"; kcm="$(openssl rand -hex 24)"
  sched="$(openssl rand -hex 24)"; kubelet="$(openssl rand -hex 24)"
  cat >"$node/tokens.csv" <<TOKENS
$admin,stackplane-admin,1,"system:masters"
$kcm,system:kube-controller-manager,2,"system:masters"
$sched,system:kube-scheduler,3,"system:masters"
$kubelet,system:node:$NODE_NAME,4,"system:nodes"
TOKENS
  # The API server's client certificate for the kubelet (logs, exec, port-forward), from the
  # run's CA, which the kubelet trusts.
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout "$node/kubelet-client.key" -out "$node/kubelet-client.csr" >/dev/null 2>&1
  printf 'extendedKeyUsage=clientAuth\n' >"$node/client.cnf"
  openssl x509 -req -in "$node/kubelet-client.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$node/client.cnf" -out "$node/kubelet-client.crt" >/dev/null 2>&1
  setsid "$K8S_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" --etcd-prefix /stackplane-node \
    --kubelet-client-certificate "$node/kubelet-client.crt" --kubelet-client-key "$node/kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$node_api_port" --insecure-port 0 \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" --token-auth-file "$node/tokens.csv" \
    --authorization-mode Node,RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$pki/sa.key" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.1.0.0/16 --cert-dir "$node" \
    --endpoint-reconciler-type none >"$run/logs/node-apiserver.log" 2>&1 </dev/null &
  record node-apiserver $!
  (api_port="$node_api_port"; kubeconfig_for "$admin" "$run/node.kubeconfig")
  (api_port="$node_api_port"; kubeconfig_for "$kcm" "$node/kcm.kubeconfig")
  (api_port="$node_api_port"; kubeconfig_for "$sched" "$node/scheduler.kubeconfig")
  (api_port="$node_api_port"; kubeconfig_for "$kubelet" "$node/kubelet.kubeconfig")
  wait_for node-apiserver 90 curl -fsS --cacert "$pki/ca.crt" -H "Authorization: Bearer $admin" \
    "https://127.0.0.1:$node_api_port/readyz"

  # --- controllers and scheduler -------------------------------------------------------------
  # serviceaccount: pods are admitted only once their namespace's `default` account exists;
  # nodelifecycle: lifts the not-ready taint a node registers with; endpoint: Services list
  # their pods (the network-policy test probes a Service's endpoints).
  setsid "$K8S_BIN/kube-controller-manager" --kubeconfig "$node/kcm.kubeconfig" \
    --controllers deployment,replicaset,endpoint,job,garbagecollector,namespace,serviceaccount,serviceaccount-token,nodelifecycle,persistentvolume-binder,pvc-protection,pv-protection,ttl \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --leader-elect=false --port 0 --secure-port 0 >"$run/logs/node-controller-manager.log" 2>&1 </dev/null &
  record node-controller-manager $!
  setsid "$K8S_BIN/kube-scheduler" --kubeconfig "$node/scheduler.kubeconfig" \
    --leader-elect=false --port 0 --secure-port 0 >"$run/logs/node-scheduler.log" 2>&1 </dev/null &
  record node-scheduler $!

  # --- containerd ------------------------------------------------------------------------------
  # restrict_oom_score_adj: the root here lacks CAP_SYS_RESOURCE, so a container may not lower
  # its OOM score below its parent's (runc fails with "can't get final child's PID from pipe").
  local sock="$node/containerd.sock"
  cat >"$node/containerd.toml" <<TOML
version = 2
root = "$node/containerd/root"
state = "$node/containerd/state"
[grpc]
  address = "$sock"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "stackplane.local/pause:1"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node/cni"
TOML
  # Pods get a default route through the gateway, as on a cloud node: what they may reach
  # beyond their subnet (the metadata endpoint, other networks) is NetworkPolicy's to decide.
  cat >"$node/cni/10-stackplane.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "stackplane",
  "plugins": [
    {"type": "bridge", "bridge": "$node_bridge", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$node_subnet", "gateway": "$node_gateway"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$node/cni-ipam"}},
    {"type": "loopback"}
  ]
}
CNI
  setsid containerd --config "$node/containerd.toml" >"$run/logs/containerd.log" 2>&1 </dev/null &
  echo "containerd $!" >>"$node/pids"
  wait_for containerd 30 ctr --address "$sock" version
  local image
  for image in "$NODE_IMAGES"/*.tar; do
    ctr --address "$sock" -n k8s.io images import "$image" >>"$run/logs/containerd.log" 2>&1 \
      || die "importing $image into containerd failed (log: $run/logs/containerd.log)"
  done

  # --- kubelet ---------------------------------------------------------------------------------
  # cgroupfs and no QoS cgroups: the kubelet shares the machine's cgroups (hybrid v1/v2 here)
  # instead of owning a hierarchy. oomScoreAdj 0: see restrict_oom_score_adj above. Image GC is
  # off: the imported images cannot be pulled back.
  local kubelet_port healthz_port
  kubelet_port="$(free_port)"; healthz_port="$(free_port)"
  cat >"$node/kubelet.yaml" <<KUBELET
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_gateway
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
oomScoreAdj: 0
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
maxPods: 110
serializeImagePulls: false
KUBELET
  setsid "$K8S_BIN/kubelet" --config "$node/kubelet.yaml" --kubeconfig "$node/kubelet.kubeconfig" \
    --container-runtime remote --container-runtime-endpoint "unix://$sock" \
    --root-dir "$node/kubelet" --cert-dir "$node/kubelet/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$node_gateway" \
    --pod-infra-container-image stackplane.local/pause:1 >"$run/logs/kubelet.log" 2>&1 </dev/null &
  echo "kubelet $!" >>"$node/pids"
  wait_for kubelet 90 node_schedulable

  start_fake_metadata
  start_network_policy
}

# A cloud's instance-metadata endpoint, as pods on a cloud node see it: 169.254.169.254:80 one
# routed hop away (not on the node), served by a small HTTP server in a network namespace of
# its own. Only this run's pod subnet is routed there (a policy-routing rule), so the machine's
# own route to that address is untouched and runs do not see each other's. The network-policy
# test needs a real listener: "refused by policy" must differ from "nothing there".
start_fake_metadata() {
  local node="$run/node" n="${node_bridge#spnode}"
  local ns="spmeta$n" host_if="spmeta$n" table=$((16900 + n))
  echo "$ns $host_if $table $node_subnet" >"$node/metadata"
  ip netns add "$ns" || die "cannot make network namespace $ns"
  ip link add "$host_if" type veth peer name eth0 netns "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add 169.254.169.254/32 dev eth0
  ip -n "$ns" link set eth0 up
  # Replies go back to the host side, which answers ARP for the pods' addresses (proxy_arp).
  ip -n "$ns" route add default dev eth0
  sysctl -qw "net.ipv4.conf.$host_if.proxy_arp=1"
  ip link set "$host_if" up
  ip route add 169.254.169.254/32 dev "$host_if" table "$table"
  ip rule add from "$node_subnet" to 169.254.169.254/32 lookup "$table" priority "$table"
  mkdir -p "$node/metadata-www/latest/meta-data"
  echo "i-stackplane-node" >"$node/metadata-www/latest/meta-data/instance-id"
  ip netns exec "$ns" setsid python3 -m http.server --bind 169.254.169.254 --directory "$node/metadata-www" 80 \
    >"$run/logs/metadata.log" 2>&1 </dev/null &
  echo "metadata $!" >>"$node/pids"
  wait_for metadata 30 ip netns exec "$ns" curl -fsS -m 2 http://169.254.169.254/latest/meta-data/instance-id
}

# NetworkPolicy enforcement: kube-router's firewall controller as a host process (firewall only:
# no routing, no service proxy, no CNI), watching the node cluster. It writes the filter table
# (iptables-save, edit, iptables-restore every sync) and deletes every KUBE-POD-FW-*/KUBE-NWPLCY-*
# chain and KUBE-SRC-*/KUBE-DST-* ipset it did not make, so two on one machine would undo each
# other: one runs per machine, held by a lock that the kube-router process itself keeps open.
# A run that finds the lock taken starts its node without enforcement and says so in env.sh
# (STACKPLANE_NODE_NETWORK_POLICY), which the network-policy test reports as its failure.
start_network_policy() {
  local node="$run/node" kube_router lock_fd holder
  kube_router="$(kube_router_bin)"
  node_network_policy="kube-router"
  exec {lock_fd}>>"$NETWORK_POLICY_LOCK"
  if ! flock -n "$lock_fd"; then
    holder="$(cat "$NETWORK_POLICY_LOCK" 2>/dev/null)"
    exec {lock_fd}>&-
    node_network_policy="not enforced: another harness run on this machine holds the NetworkPolicy enforcer (${holder:-unknown}); one kube-router runs per machine (docs/testing.md)"
    log "warning: this run's node does NOT enforce NetworkPolicy: ${node_network_policy#not enforced: }"
    return 0
  fi
  echo "run $run, up.sh pid $$" >"$NETWORK_POLICY_LOCK"
  # Holding the lock means no other kube-router runs: whatever chains are left are stale (a run
  # that was killed before its node-down.sh).
  remove_network_policy_rules
  setsid "$kube_router" --run-firewall=true --run-router=false --run-service-proxy=false \
    --enable-cni=false --kubeconfig "$run/node.kubeconfig" --hostname-override "$NODE_NAME" \
    --service-cluster-ip-range 10.1.0.0/16 --iptables-sync-period 5s --health-port 0 \
    >"$run/logs/kube-router.log" 2>&1 </dev/null &
  echo "kube-router $!" >>"$node/pids"
  # kube-router inherited the locked descriptor and keeps the lock until it exits.
  exec {lock_fd}>&-
  # Its first full sync made its chains and jumped to them from FORWARD.
  wait_for kube-router 60 network_policy_enforced
}

network_policy_enforced() {
  iptables -S FORWARD | grep -q -- '-j KUBE-ROUTER-FORWARD' && iptables -S KUBE-ROUTER-INPUT >/dev/null
}

# The node is Ready and carries no taint (the not-ready taint is lifted by nodelifecycle).
node_schedulable() {
  local out
  out="$(KUBECONFIG="$run/node.kubeconfig" "$K8S_BIN/kubectl" get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status} {.spec.taints}')" || return 1
  [ "$out" = "True " ]
}
