#!/usr/bin/env bash
# The test command (`make test`): installs and builds what the tests need (cached after the first
# run), starts the real components, runs every test of the workspace against them, and stops
# them by PID when the tests end, fail or are interrupted. Arguments, if any, replace
# `--workspace` in `cargo test --locked --workspace`, e.g. `tests/run.sh -p stackplane-tests --test crds`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=harness/lib.sh
source "$root/tests/harness/lib.sh"
components_for_this_shell

cd "$root"
[ $# -gt 0 ] || set -- --workspace
cargo test --locked --no-fail-fast "$@"
