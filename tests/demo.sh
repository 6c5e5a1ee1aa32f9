#!/usr/bin/env bash
# The local demo (`make demo`): a paying customer's tenant, end to end, on this machine.
#   1. installs (once) and starts a local control plane (etcd, kube-apiserver,
#      kube-controller-manager), Postgres and moto (AWS);
#   2. installs the CRDs and the example Platforms, and a Route53 hosted zone in moto for
#      stackpro-business;
#   3. builds and runs stackplane-api and stackplane-controller;
#   4. a sample customer subscribes to stackpro-business's dedicated "business" tier in Stripe
#      (localstripe, driven by the official stripe SDK), which sends its signed events to the api;
#      the api reads the customer's subscriptions back from that Stripe, its source of truth;
#   5. waits until the tenant is Ready: on the harness's real node (the default), the tenant's
#      pods run from images built on this machine and their readiness probes decide; with
#      STACKPLANE_NODE=0 there is no node and the demo reports the workloads available itself;
#   6. shows the tenant's status from the API, `kubectl get tenants`, its pods Running and an
#      HTTP answer from each component, and the tenant's EC2 instance and DNS record in moto.
# Then it keeps everything running until Ctrl-C, which stops every process it started.
# DEMO_EXIT=1 exits right after showing (CI); the exit status is 1 if any step failed.
# DEMO_READY_TIMEOUT (seconds, default 180) bounds the wait for Ready.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=harness/lib.sh
source "$root/tests/harness/lib.sh"
components_for_this_shell
real_node=""
if [ -n "${STACKPLANE_NODE_KUBECONFIG:-}" ]; then
  # The node cluster: everything below (CRDs, api, controller, kubectl) runs against it.
  real_node=1
  export KUBECONFIG="$STACKPLANE_NODE_KUBECONFIG"
fi

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
failures=()
fail() { printf 'demo: FAILED: %s\n' "$*" >&2; failures+=("$*"); }

cd "$root"
say "building stackplane-api, stackplane-controller and the demo helper (cargo)"
# The whole workspace with its test targets, as `make test` builds it: one feature resolution,
# so the demo and the tests reuse the same compiled dependencies.
cargo build -q --locked --workspace --bins --tests
target="$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"
demo="$target/stackplane-demo"

say "installing the CRDs and the example Platforms"
kubectl apply -f crds/ >/dev/null
kubectl wait --for condition=established --timeout=60s crd --all >/dev/null
kubectl apply --server-side --field-manager=stackplane-demo -f examples/platforms/ >/dev/null
# moto chooses hosted zone ids itself: create the zone, then point the Platform at it.
moto_py=("$MOTO_VENV/bin/python" "$root/tests/harness/moto_demo.py")
zone="$("${moto_py[@]}" zone stackpro.business)"
kubectl patch platform stackpro-business --type merge --field-manager=stackplane-demo \
  -p "{\"spec\":{\"hostedZoneId\":\"$zone\"}}" >/dev/null
echo "hosted zone stackpro.business. in moto: $zone (set as stackpro-business's hostedZoneId)"
# The example's AMI id stands for your account's image; moto only knows its own images.
ami="$("${moto_py[@]}" image)"
kubectl patch platform stackpro-business --type json --field-manager=stackplane-demo -p "[
  {\"op\":\"replace\",\"path\":\"/spec/tiers/0/dedicatedInstance/imageId\",\"value\":\"$ami\"},
  {\"op\":\"replace\",\"path\":\"/spec/tiers/1/dedicatedInstance/imageId\",\"value\":\"$ami\"},
  {\"op\":\"replace\",\"path\":\"/spec/tiers/2/dedicatedInstance/imageId\",\"value\":\"$ami\"}]" >/dev/null
echo "AMI in moto: $ami (set as every stackpro-business tier's imageId)"
if [ -n "$real_node" ]; then
  # The example's images stand for the platform's own; the node runs busybox httpd, built on
  # this machine, in their place, answering on each component's port.
  patch="$(kubectl get platform stackpro-business -o json | python3 -c '
import json, sys
ops = []
for i, c in enumerate(json.load(sys.stdin)["spec"]["components"]):
    ops.append({"op": "replace", "path": f"/spec/components/{i}/image", "value": "stackplane.local/httpd:1"})
    ops.append({"op": "add", "path": f"/spec/components/{i}/env/-", "value": {"name": "PORT", "value": str(c["port"])}})
print(json.dumps(ops))')"
  kubectl patch platform stackpro-business --type json --field-manager=stackplane-demo -p "$patch" >/dev/null
  echo "components' image on the node: stackplane.local/httpd:1 (busybox httpd on each component's port)"
fi
kubectl get platforms

# Secrets for this run only; nothing is a default.
webhook_secret="whsec_$(openssl rand -hex 24)"
admin_token="$(openssl rand -hex 24)"
api_port="$(free_port)"
api_internal_port="$(free_port)"
metrics_port="$(free_port)"
api="http://127.0.0.1:$api_port"
# /healthz, /readyz and /metrics of the api: its internal listener, never the public one.
api_internal="http://127.0.0.1:$api_internal_port"

say "starting stackplane-api on $api and stackplane-controller (metrics :$metrics_port)"
STACKPLANE_LISTEN="127.0.0.1:$api_port" STACKPLANE_INTERNAL_LISTEN="127.0.0.1:$api_internal_port" \
  STRIPE_WEBHOOK_SECRETS="$webhook_secret" \
  STRIPE_SECRET_KEY="sk_test_demo_$(openssl rand -hex 12)" STACKPLANE_ADMIN_TOKEN="$admin_token" \
  STRIPE_API_BASE="$STACKPLANE_LOCALSTRIPE_URL" \
  RUST_LOG="${RUST_LOG:-info}" \
  "$target/stackplane-api" >"$STACKPLANE_RUN/logs/stackplane-api.log" 2>&1 </dev/null &
# down.sh stops what the pids file lists, newest first: these two before the components.
echo "stackplane-api $!" >>"$STACKPLANE_RUN/pids"
POD_NAMESPACE=default POD_NAME=demo-controller RUST_LOG="${RUST_LOG:-info}" \
  STACKPLANE_BACKUP_DUMP_IMAGE=stackplane.local/pgdump:15 \
  "$target/stackplane-controller" --metrics-listen "127.0.0.1:$metrics_port" \
  >"$STACKPLANE_RUN/logs/stackplane-controller.log" 2>&1 </dev/null &
echo "stackplane-controller $!" >>"$STACKPLANE_RUN/pids"

wait_http() { # what, url, seconds, log
  local deadline=$((SECONDS + $3))
  until curl -fsS "$2" >/dev/null 2>&1; do
    if [ $SECONDS -ge "$deadline" ]; then
      tail -n 20 "$4" >&2
      die "$1 did not answer $2 within $3s (log: $4)"
    fi
    sleep 0.5
  done
}
wait_http stackplane-api "$api_internal/readyz" 60 "$STACKPLANE_RUN/logs/stackplane-api.log"
wait_http stackplane-controller "http://127.0.0.1:$metrics_port/healthz" 60 \
  "$STACKPLANE_RUN/logs/stackplane-controller.log"
echo "both are up (logs: $STACKPLANE_RUN/logs/stackplane-{api,controller}.log)"

say "a customer pays: a subscription to stackpro-business, tier business, in Stripe ($STACKPLANE_LOCALSTRIPE_URL)"
stripe_driver() { # command args... -> the JSON answer's field named by $FIELD
  "$STACKPLANE_STRIPE_PYTHON" "$root/tests/harness/stripe_driver.py" \
    --api-base "$STACKPLANE_LOCALSTRIPE_URL" "$@" \
    | python3 -c 'import json,os,sys; print(json.load(sys.stdin)[os.environ["FIELD"]])'
}
price=price_1StackproBusinessMonthly
FIELD=prices stripe_driver setup "$price" >/dev/null
FIELD=webhook stripe_driver webhook "$api/webhooks/stripe" "$webhook_secret" >/dev/null
customer="$(FIELD=customer stripe_driver customer owner@demo-bakery.example)"
tenant="$("$demo" tenant-name --platform stackpro-business --customer "$customer")"
namespace="$("$demo" namespace-name --tenant "$tenant")"
if [ -n "$real_node" ]; then
  # Each component keeps its data on a volume: here a directory of the node's disk per claim,
  # bound to the tenant's claim in advance, as a static provisioner would.
  for claim in $(kubectl get platform stackpro-business -o jsonpath='{.spec.components[?(@.storage)].name}'); do
    dir="$STACKPLANE_RUN/volumes/$claim"
    mkdir -p "$dir" && chmod 777 "$dir"
    kubectl apply -f - >/dev/null <<PV
apiVersion: v1
kind: PersistentVolume
metadata: {name: demo-$claim}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: "$dir", type: Directory}
  claimRef: {namespace: "$namespace", name: "$claim"}
PV
  done
  echo "volumes for $namespace's claims: $STACKPLANE_RUN/volumes/"
fi
paid_at=$SECONDS
subscription="$(FIELD=subscription stripe_driver subscribe "$customer" "$price")"
echo "customer $customer, subscription $subscription (Stripe sends its signed events to $api/webhooks/stripe)"
echo "tenant: $tenant"

if [ -n "$real_node" ]; then
  say "waiting until $tenant is Ready (its pods run on the node; readiness probes decide)"
  ready_args=(--real-node)
else
  say "waiting until $tenant is Ready (no node: workloads reported available as kubelets would)"
  ready_args=()
fi
if "$demo" ready --tenant "$tenant" --timeout-secs "${DEMO_READY_TIMEOUT:-180}" "${ready_args[@]}"; then
  echo "payment to Ready and BillingSynced: $((SECONDS - paid_at)) s"
else
  fail "the tenant did not become Ready (controller log: $STACKPLANE_RUN/logs/stackplane-controller.log)"
fi

say "the tenant's status from the API"
token="$admin_token"
token_json="$(curl -sS -X POST -H "Authorization: Bearer $admin_token" \
  -w '\n%{http_code}' "$api/api/v1/tenants/$tenant/tokens" || true)"
if [ "$(tail -n1 <<<"$token_json")" -lt 300 ] 2>/dev/null; then
  token="$(head -n -1 <<<"$token_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
  echo "(with a tenant-scoped token issued by POST /api/v1/tenants/$tenant/tokens)"
else
  echo "(POST /api/v1/tenants/$tenant/tokens answered $(tail -n1 <<<"$token_json"): reading with the admin token)"
fi
status_out="$(curl -sS -H "Authorization: Bearer $token" -w '\n%{http_code}' "$api/api/v1/tenants/$tenant" || true)"
code="$(tail -n1 <<<"$status_out")"
body="$(head -n -1 <<<"$status_out")"
echo "GET /api/v1/tenants/$tenant -> $code"
if [ "$code" = 200 ]; then
  python3 -m json.tool <<<"$body"
else
  [ -n "$body" ] && echo "$body"
  fail "the API did not serve the tenant's status (GET /api/v1/tenants/{name} answered $code)"
fi

say "kubectl get tenants"
kubectl get tenants -o wide

if [ -n "$real_node" ]; then
  say "kubectl get pods -n $namespace (on the node stackplane-node)"
  kubectl get pods -n "$namespace" -o wide
  say "an HTTP answer from each component's pod"
  pods="$(kubectl get pods -n "$namespace" -o jsonpath='{range .items[*]}{.metadata.labels.stackplane\.io/component} {.status.phase} {.status.podIP} {.spec.containers[0].ports[0].containerPort}{"\n"}{end}')"
  [ -n "$pods" ] || fail "no pods in $namespace"
  while read -r component phase ip port; do
    [ -n "$component" ] || continue
    [ "$phase" = Running ] || fail "$component's pod is $phase, not Running"
    if answer="$(curl -fsS -m 5 "http://$ip:$port/")"; then
      echo "$component  http://$ip:$port/  ->  $answer"
    else
      fail "$component's pod did not answer on http://$ip:$port/"
    fi
  done <<<"$pods"
fi

say "kubectl stackplane status $tenant (the plugin: cargo install --path cli)"
if ! "$target/kubectl-stackplane" status "$tenant"; then
  fail "kubectl stackplane status failed"
fi
say "kubectl stackplane diff $tenant (empty: the cluster matches the plan)"
if ! "$target/kubectl-stackplane" diff "$tenant"; then
  fail "kubectl stackplane diff failed"
fi

say "the tenant's EC2 instance and DNS record in moto"
if ! "${moto_py[@]}" show "$zone" \
  "$(kubectl get tenant "$tenant" -o jsonpath='{.status.instance.id}')" \
  "$(kubectl get tenant "$tenant" -o jsonpath='{.status.dnsRecord}')"; then
  fail "the tenant's instance or DNS record is missing in moto"
fi

echo
if [ "${#failures[@]}" -gt 0 ]; then
  printf '\033[1mdemo: %d step(s) failed:\033[0m\n' "${#failures[@]}"
  printf '  - %s\n' "${failures[@]}"
else
  printf '\033[1mdemo: a paying customer'"'"'s tenant is Ready, with its instance and DNS record%s.\033[0m\n' \
    "${real_node:+, its pods running and answering}"
fi
if [ -n "${DEMO_EXIT:-}" ]; then
  [ "${#failures[@]}" -eq 0 ]
  exit
fi
cat <<MSG

Everything is still running. In another shell:
  source $STACKPLANE_RUN/env.sh
  kubectl get platforms,tenants,tenantbackups
  curl -s -H 'Authorization: Bearer $admin_token' $api/api/v1/tenants/$tenant
  curl -s http://127.0.0.1:$metrics_port/metrics | grep stackplane_controller_tenants
  curl -s $api_internal/metrics | grep stackplane_billing
Runbooks: docs/runbooks/. Press Ctrl-C to stop everything.
MSG
while true; do sleep 3600 & wait $!; done
