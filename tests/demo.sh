#!/usr/bin/env bash
# The local demo (`make demo`): starts a local control plane (etcd, kube-apiserver,
# kube-controller-manager), Postgres and moto; installs the CRDs and the example Platforms;
# shows them; then keeps everything running until Ctrl-C, which stops everything it started.
# DEMO_EXIT=1 stops right after showing (for scripted checks).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=harness/lib.sh
source "$root/tests/harness/lib.sh"
components_for_this_shell

cd "$root"
cargo build -q --locked -p stackplane-api
kubectl apply -f crds/ >/dev/null
kubectl wait --for condition=established --timeout=60s crd --all >/dev/null
kubectl apply --server-side --field-manager=stackplane-demo -f examples/platforms/ >/dev/null
cargo run -q --locked -p stackplane-api -- migrate

echo
echo "== kubectl get platforms"
kubectl get platforms
echo
if [ -n "${DEMO_EXIT:-}" ]; then exit 0; fi
cat <<MSG
The local control plane is running. In another shell:
  source $STACKPLANE_RUN/env.sh
  kubectl get platforms,tenants,tenantbackups
  kubectl explain tenant.spec
Press Ctrl-C to stop everything.
MSG
while true; do sleep 3600 & wait $!; done
