# Shared settings for the harness scripts. Sourced, never executed.
# shellcheck shell=bash

# Everything built or installed once lives here and survives between runs.
STACKPLANE_CACHE="${STACKPLANE_CACHE:-$HOME/.cache/stackplane}"
K8S_VERSION="1.20.2"
K8S_BIN="$STACKPLANE_CACHE/kubernetes-$K8S_VERSION/bin"
MOTO_VENV="$STACKPLANE_CACHE/moto-venv"
HELM_VENV="$STACKPLANE_CACHE/helm-venv"
# localstripe (a stateful fake Stripe, GPL-3, run as a separate process) and the official
# `stripe` Python SDK the billing tests drive it with.
STRIPE_VENV="$STACKPLANE_CACHE/stripe-venv"
SCHEMATHESIS_VENV="$STACKPLANE_CACHE/schemathesis-venv"
# cargo-fuzz (crates.io), installed with `cargo install --root` here.
CARGO_FUZZ_ROOT="$STACKPLANE_CACHE/cargo-fuzz"
# The fuzz targets' build (instrumented: nothing of the workspace's target dir is reusable),
# kept here so that only the first run pays for it.
FUZZ_TARGET_DIR="$STACKPLANE_CACHE/fuzz-target"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
# kube-router's firewall (NetworkPolicy for the node's bridge pods), built by install.sh from the
# source committed in vendor/ into a directory named by the archive's sha256: a new archive
# rebuilds. See vendor/README.md and docs/testing.md.
KUBE_ROUTER_ARCHIVE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/vendor/kube-router-1.2.1.tar.xz"
kube_router_bin() {
  echo "$STACKPLANE_CACHE/kube-router-$(sha256sum "$KUBE_ROUTER_ARCHIVE" | cut -c1-16)/kube-router"
}
# The node's images (node/images.py), built on this machine and imported into containerd.
NODE_IMAGES="$STACKPLANE_CACHE/node-images"
# Debian's `prometheus` package (2.42 in bookworm): the server the metric-name test scrapes the
# real binaries with, and promtool, which checks and unit-tests the chart's alert rules.
# Exported to the tests by up.sh (STACKPLANE_PROMETHEUS, STACKPLANE_PROMTOOL).
PROMETHEUS="${PROMETHEUS:-/usr/bin/prometheus}"
PROMTOOL="${PROMTOOL:-/usr/bin/promtool}"

# One NetworkPolicy enforcer (kube-router) per machine: it owns the filter table's KUBE-ROUTER-*,
# KUBE-POD-FW-* and KUBE-NWPLCY-* chains and KUBE-SRC-*/KUBE-DST-* ipsets (node.sh).
NETWORK_POLICY_LOCK="${NETWORK_POLICY_LOCK:-/run/lock/stackplane-network-policy.lock}"

# Removes everything kube-router's firewall leaves in the kernel: killing it leaves its rules in
# place, and its own --cleanup-config also resets IPVS and routes. Call it only while holding
# NETWORK_POLICY_LOCK or when no kube-router runs: it would pull another run's enforcement away.
remove_network_policy_rules() {
  local chain
  for chain in INPUT FORWARD OUTPUT; do
    iptables -S "$chain" 2>/dev/null | grep -E -- '-j KUBE-ROUTER-(INPUT|FORWARD|OUTPUT)( |$)' \
      | sed 's/^-A /-D /' | xargs -r -L1 iptables || true
  done
  local chains
  chains="$(iptables -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-(ROUTER|POD-FW|NWPLCY)-/ {print $2}')" || true
  # Flush all before deleting any: they jump to each other.
  for chain in $chains; do iptables -F "$chain" || true; done
  for chain in $chains; do iptables -X "$chain" || true; done
  ipset list -n 2>/dev/null | grep -E '^KUBE-(SRC|DST)-' | xargs -r -n1 ipset destroy || true
}

log() { printf '[harness] %s\n' "$*" >&2; }
die() { printf '[harness] error: %s\n' "$*" >&2; exit 1; }

# A free TCP port on loopback, chosen by the kernel.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# For a script that needs the components for as long as it runs (make test, make demo):
# installs what is missing, starts the components, exports their addresses into the calling
# shell, and stops them by PID when that shell exits, fails or is interrupted.
components_for_this_shell() {
  local harness
  harness="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  "$harness/install.sh"
  STACKPLANE_RUN=""
  # shellcheck disable=SC2064 # expand $harness now, $STACKPLANE_RUN at exit
  trap "[ -z \"\$STACKPLANE_RUN\" ] || \"$harness/down.sh\" \"\$STACKPLANE_RUN\"" EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  # make test and make demo run a real node unless told not to (STACKPLANE_NODE=0).
  STACKPLANE_RUN="$(STACKPLANE_NODE="${STACKPLANE_NODE:-1}" STACKPLANE_OWNER_PID=$$ "$harness/up.sh")"
  # shellcheck disable=SC1091
  source "$STACKPLANE_RUN/env.sh"
}
