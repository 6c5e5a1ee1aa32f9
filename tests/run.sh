#!/usr/bin/env bash
# The test command (`make test`): installs and builds what the tests need (cached after the first
# run), starts the real components, runs every test of the workspace against them, and stops
# them by PID when the tests end, fail or are interrupted. Extra arguments go to `cargo test`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
harness="$root/tests/harness"

"$harness/install.sh"

run=""
cleanup() { [ -n "$run" ] && "$harness/down.sh" "$run"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

STACKPLANE_OWNER_PID=$$ run="$("$harness/up.sh")"
# shellcheck disable=SC1091
source "$run/env.sh"

cd "$root"
cargo test --workspace --locked "$@"
