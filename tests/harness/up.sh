#!/usr/bin/env bash
# Starts the real components the tests and the demo run against, on free loopback ports:
# etcd, kube-apiserver, kube-controller-manager (garbage collector, namespace and PVC protection),
# a throwaway Postgres cluster, moto and localstripe (a fake Stripe). Prints the run directory, which holds:
#   env.sh      exports KUBECONFIG, DATABASE_URL, AWS_ENDPOINT_URL, AWS_*, STACKPLANE_LOCALSTRIPE_URL,
#               STACKPLANE_STRIPE_PYTHON, and STACKPLANE_PROMETHEUS / STACKPLANE_PROMTOOL
#               (Debian's prometheus package) for the tests; with STACKPLANE_NODE=1 also
#               STACKPLANE_NODE_KUBECONFIG (a second cluster with one real node: node.sh) and
#               STACKPLANE_NODE_DATABASE_HOST (the address pods reach this Postgres at) and
#               STACKPLANE_NODE_NETWORK_POLICY ("kube-router" when the node enforces
#               NetworkPolicy, else why not: one enforcer per machine, see node.sh)
#   pids        one "name pid" line per process started, for down.sh
#   logs/       each component's log
# Run install.sh first. Stop everything with: tests/harness/down.sh <run directory>
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"
# shellcheck source=node.sh
source "$here/node.sh"
STACKPLANE_NODE="${STACKPLANE_NODE:-0}"

for bin in kube-apiserver kube-controller-manager kubectl; do
  [ -x "$K8S_BIN/$bin" ] || die "$K8S_BIN/$bin is missing: run tests/harness/install.sh"
done
command -v etcd >/dev/null || die "etcd is missing: run tests/harness/install.sh"
[ -x "$PG_BIN/initdb" ] || die "$PG_BIN/initdb is missing: run tests/harness/install.sh"
[ -x "$MOTO_VENV/bin/moto_server" ] || die "moto is missing: run tests/harness/install.sh"
[ -x "$HELM_VENV/bin/python" ] || die "helm-python-sdk is missing: run tests/harness/install.sh"
[ -x "$STRIPE_VENV/bin/python" ] || die "localstripe is missing: run tests/harness/install.sh"
[ -x "$SCHEMATHESIS_VENV/bin/schemathesis" ] || die "schemathesis is missing: run tests/harness/install.sh"
if [ "$STACKPLANE_NODE" = 1 ]; then
  for bin in kubelet kube-scheduler; do
    [ -x "$K8S_BIN/$bin" ] || die "$K8S_BIN/$bin is missing: run tests/harness/install.sh"
  done
  for bin in containerd ctr runc ip; do
    command -v "$bin" >/dev/null || die "$bin is missing: run tests/harness/install.sh"
  done
  [ -x /usr/lib/cni/bridge ] || die "the bridge CNI plugin is missing: run tests/harness/install.sh"
  for image in pause httpd pgdump; do
    [ -f "$NODE_IMAGES/$image.tar" ] || die "$NODE_IMAGES/$image.tar is missing: run tests/harness/install.sh"
  done
  [ "$(id -u)" -eq 0 ] || die "a real node (STACKPLANE_NODE=1) needs root: containerd and the kubelet"
  [ -x "$(kube_router_bin)" ] || die "$(kube_router_bin) is missing: run tests/harness/install.sh"
  for bin in iptables ipset flock; do
    command -v "$bin" >/dev/null || die "$bin is missing: run tests/harness/install.sh"
  done
fi

# Runs left behind by a killed shell (SIGKILL skips traps): stop them before starting anew.
mkdir -p "$STACKPLANE_CACHE/runs"
for old in "$STACKPLANE_CACHE"/runs/*; do
  [ -f "$old/owner" ] || continue
  owner="$(cat "$old/owner")"
  if ! kill -0 "$owner" 2>/dev/null; then
    log "stopping a stale run left by process $owner: $old"
    "$here/down.sh" "$(readlink -f "$old")" || true
  fi
done

run="$(mktemp -d /tmp/stackplane-run.XXXXXX)"
chmod 755 "$run"
mkdir -p "$run/logs" "$run/pki"
: >"$run/pids"
# The process whose death makes this run stale (the shell that called up.sh).
echo "${STACKPLANE_OWNER_PID:-$PPID}" >"$run/owner"
ln -sfn "$run" "$STACKPLANE_CACHE/runs/$(basename "$run")"

# On any failure below, stop what was already started.
trap 'status=$?; if [ $status -ne 0 ]; then log "start-up failed; stopping what started (logs: $run/logs)"; "$here/down.sh" "$run" >&2 || true; fi' EXIT

record() { echo "$1 $2" >>"$run/pids"; }

wait_for() { # name, seconds, command...
  local name="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      tail -n 30 "$run/logs/$name.log" >&2 2>/dev/null || true
      die "$name did not become ready within ${secs}s (log: $run/logs/$name.log)"
    fi
    sleep 0.3
  done
}

# --- etcd -----------------------------------------------------------------------------------
etcd_port="$(free_port)"; etcd_peer="$(free_port)"
setsid etcd --name stackplane --data-dir "$run/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "stackplane=http://127.0.0.1:$etcd_peer" \
  --quota-backend-bytes 4294967296 >"$run/logs/etcd.log" 2>&1 </dev/null &
record etcd $!

# --- certificates and tokens ----------------------------------------------------------------
pki="$run/pki"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=stackplane-test-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" >/dev/null 2>&1
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
  -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" >/dev/null 2>&1
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' >"$pki/ext.cnf"
openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
  -days 2 -extfile "$pki/ext.cnf" -out "$pki/apiserver.crt" >/dev/null 2>&1
openssl genrsa -out "$pki/sa.key" 2048 >/dev/null 2>&1
admin_token="$(openssl rand -hex 24)"
kcm_token="$(openssl rand -hex 24)"
cat >"$pki/tokens.csv" <<TOKENS
$admin_token,stackplane-admin,1,"system:masters"
$kcm_token,system:kube-controller-manager,2,"system:masters"
TOKENS

# --- kube-apiserver -------------------------------------------------------------------------
api_port="$(free_port)"
wait_for etcd 30 curl -fsS "http://127.0.0.1:$etcd_port/health"
# A /16 service range: every tenant component has a Service, and the benchmark makes thousands.
setsid "$K8S_BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" --insecure-port 0 \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" --token-auth-file "$pki/tokens.csv" \
  --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$pki/sa.key" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range 10.0.0.0/16 --cert-dir "$pki" \
  --endpoint-reconciler-type none >"$run/logs/kube-apiserver.log" 2>&1 </dev/null &
record kube-apiserver $!

kubeconfig_for() { # token, file
  cat >"$2" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: stackplane-test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: user
  user:
    token: $1
contexts:
- name: stackplane-test
  context: {cluster: stackplane-test, user: user}
current-context: stackplane-test
KCFG
}
kubeconfig_for "$admin_token" "$run/kubeconfig"
kubeconfig_for "$kcm_token" "$run/kcm.kubeconfig"
wait_for kube-apiserver 90 curl -fsS --cacert "$pki/ca.crt" -H "Authorization: Bearer $admin_token" \
  "https://127.0.0.1:$api_port/readyz"

# --- kube-controller-manager: garbage collection, namespace deletion, PVC protection -----------
# pvc-protection releases the kubernetes.io/pvc-protection finalizer that the apiserver's admission
# puts on every PVC; without it a deleted PVC, and so a namespace holding one, never goes away.
setsid "$K8S_BIN/kube-controller-manager" --kubeconfig "$run/kcm.kubeconfig" \
  --controllers garbagecollector,namespace,pvc-protection --leader-elect=false \
  --port 0 --secure-port 0 >"$run/logs/kube-controller-manager.log" 2>&1 </dev/null &
record kube-controller-manager $!

# --- Postgres -------------------------------------------------------------------------------
pg_port="$(free_port)"
pg_listen=127.0.0.1
if [ "$STACKPLANE_NODE" = 1 ]; then
  # The node's pods reach Postgres on their bridge's gateway (the dump Job's pg_dump does).
  node_network
  pg_listen="127.0.0.1,$node_gateway"
fi
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || die "postgres refuses to run as root and there is no 'postgres' user"
  as_pg=(runuser -u postgres --)
  mkdir -p "$run/pg" && chown postgres "$run/pg"
fi
"${as_pg[@]}" "$PG_BIN/initdb" -D "$run/pg/data" -U postgres --auth=trust -E UTF8 >"$run/logs/initdb.log" 2>&1 \
  || { tail -n 20 "$run/logs/initdb.log" >&2; die "initdb failed"; }
if [ "$STACKPLANE_NODE" = 1 ]; then
  echo "host all all $node_subnet trust" >>"$run/pg/data/pg_hba.conf"
fi
"${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$run/pg/data" -l "$run/pg/postgres.log" -w -t 60 \
  -o "-p $pg_port -k $run/pg -c listen_addresses=$pg_listen -c fsync=off -c max_connections=300" start \
  >"$run/logs/pg_ctl.log" 2>&1 || { tail -n 20 "$run/pg/postgres.log" >&2; die "postgres did not start"; }
record postgres "$(head -n 1 "$run/pg/data/postmaster.pid")"

# --- moto -----------------------------------------------------------------------------------
moto_port="$(free_port)"
setsid "$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$moto_port" >"$run/logs/moto.log" 2>&1 </dev/null &
record moto $!
wait_for moto 60 curl -fsS "http://127.0.0.1:$moto_port/moto-api/"

# --- localstripe ----------------------------------------------------------------------------
# In memory only (localstripe_server.py): a run starts empty and never shares /tmp state.
# Tests that sweep or count Stripe calls start their own instance (stackplane_tests::localstripe).
stripe_port="$(free_port)"
setsid "$STRIPE_VENV/bin/python" "$here/localstripe_server.py" --port "$stripe_port" \
  >"$run/logs/localstripe.log" 2>&1 </dev/null &
record localstripe $!
wait_for localstripe 60 curl -fsS -H "Authorization: Bearer sk_test_harness" "http://127.0.0.1:$stripe_port/v1/customers"

if [ "$STACKPLANE_NODE" = 1 ]; then
  start_node
fi

cat >"$run/env.sh" <<ENV
export STACKPLANE_RUN="$run"
export KUBECONFIG="$run/kubeconfig"
export DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
export AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port"
export AWS_REGION="us-east-1"
export AWS_ACCESS_KEY_ID="testing"
export AWS_SECRET_ACCESS_KEY="testing"
export PATH="$K8S_BIN:\$PATH"
export STACKPLANE_HELM_PYTHON="$HELM_VENV/bin/python"
export STACKPLANE_MOTO_PYTHON="$MOTO_VENV/bin/python"
export STACKPLANE_LOCALSTRIPE_URL="http://127.0.0.1:$stripe_port"
export STACKPLANE_STRIPE_PYTHON="$STRIPE_VENV/bin/python"
export STACKPLANE_SCHEMATHESIS="$SCHEMATHESIS_VENV/bin/schemathesis"
export STACKPLANE_PROMETHEUS="$PROMETHEUS"
export STACKPLANE_PROMTOOL="$PROMTOOL"
ENV
if [ "$STACKPLANE_NODE" = 1 ]; then
  cat >>"$run/env.sh" <<ENV
export STACKPLANE_NODE_KUBECONFIG="$run/node.kubeconfig"
export STACKPLANE_NODE_DATABASE_HOST="$node_gateway"
export STACKPLANE_NODE_NETWORK_POLICY="$node_network_policy"
ENV
fi
log "components up in $run (kube-apiserver :$api_port, postgres :$pg_port, moto :$moto_port, localstripe :$stripe_port${node_api_port:+, node cluster :$node_api_port with node $NODE_NAME on $node_subnet, NetworkPolicy: ${node_network_policy%%:*}})"
trap - EXIT
echo "$run"
