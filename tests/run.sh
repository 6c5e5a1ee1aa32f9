#!/usr/bin/env bash
# The test command (`make test`): installs and builds what the tests need (cached after the first
# run), starts the real components, runs every test of the workspace against them (and the
# benchmarks' smoke runs), and stops
# them by PID when the tests end, fail or are interrupted. Without arguments: every test of the
# workspace, then the fuzz smoke runs. Arguments, if any, replace `--workspace` in
# `cargo test --locked --workspace` (and skip the fuzz runs), e.g. `tests/run.sh --workspace --test crds`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=harness/lib.sh
source "$root/tests/harness/lib.sh"
components_for_this_shell

cd "$root"
# (Never `exec`: the EXIT trap that stops the components belongs to this shell.)
if [ $# -gt 0 ]; then
  cargo test --locked --no-fail-fast "$@"
  exit
fi
# The whole suite: every test binary runs even when one fails (so a run shows every failure),
# then the fuzz smoke runs of the parsers that face the internet (tests/harness/fuzz.sh).
status=0
cargo test --locked --no-fail-fast --workspace || status=$?
# The benchmarks' smoke runs (`harness = false` binaries run without `--bench`): each at a small
# size on the debug build, checking that it still works and its figures are sane, never how fast
# anything is (that is `cargo bench`, release, see README "Performance").
cargo test --locked --no-fail-fast --workspace --bench '*' || status=$?
"$root/tests/harness/fuzz.sh" || status=$?
exit "$status"
