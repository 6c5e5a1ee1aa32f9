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
# Both cargo runs are copied to a log so that a failure is repeated at the very end: CI keeps
# only the tail of the output, which is otherwise the fuzz runs and the harness stopping.
status=0
log="$(mktemp "${TMPDIR:-/tmp}/stackplane-test.XXXXXX")"
cargo test --locked --no-fail-fast --workspace 2>&1 | tee "$log" || status=$?
# The benchmarks' smoke runs (`harness = false` binaries run without `--bench`): each at a small
# size on the debug build, checking that it still works and its figures are sane, never how fast
# anything is (that is `cargo bench`, release, see docs/performance.md).
cargo test --locked --no-fail-fast --workspace --bench '*' 2>&1 | tee -a "$log" || status=$?
"$root/tests/harness/fuzz.sh" || status=$?
# Stop the components now rather than in the EXIT trap, so their log lines come before the summary.
"$root/tests/harness/down.sh" "$STACKPLANE_RUN" || echo "[harness] stopping the components failed; see above" >&2
STACKPLANE_RUN=
if [ "$status" -ne 0 ]; then
  echo "== make test failed (exit $status); from the cargo output above (full log: $log):"
  grep -E -A2 "^test .+ \.\.\. FAILED$|panicked at|^error: .*(failed|could not compile)|^    \`-p " "$log" || true
else
  rm -f "$log"
fi
exit "$status"
