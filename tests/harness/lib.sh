# Shared settings for the harness scripts. Sourced, never executed.
# shellcheck shell=bash

# Everything built or installed once lives here and survives between runs.
STACKPLANE_CACHE="${STACKPLANE_CACHE:-$HOME/.cache/stackplane}"
K8S_VERSION="1.20.2"
K8S_BIN="$STACKPLANE_CACHE/kubernetes-$K8S_VERSION/bin"
MOTO_VENV="$STACKPLANE_CACHE/moto-venv"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"

log() { printf '[harness] %s\n' "$*" >&2; }
die() { printf '[harness] error: %s\n' "$*" >&2; exit 1; }

# A free TCP port on loopback, chosen by the kernel.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
