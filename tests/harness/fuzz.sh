#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (the Stripe-Signature header, the event parser, the
# query parsers). The machine has a stable toolchain only: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass
# its -Z flags, and `-s none` builds without a sanitizer (none is available on stable).
#   tests/harness/fuzz.sh            a smoke run of every target (bounded: FUZZ_RUNS each)
#   tests/harness/fuzz.sh TARGET ... cargo fuzz run TARGET with the arguments after it
# Prints one "fuzz: <target> executions=<n>" line per target of a smoke run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"
root="$(cd "$here/../.." && pwd)"
[ -x "$CARGO_FUZZ_ROOT/bin/cargo-fuzz" ] || die "cargo-fuzz is missing: run tests/harness/install.sh"
export PATH="$CARGO_FUZZ_ROOT/bin:$PATH"
export RUSTC_BOOTSTRAP=1
# cargo-fuzz's errors are anyhow errors: without this a failure's last lines are its backtrace,
# not the message that says why.
export RUST_LIB_BACKTRACE=0
export CARGO_TARGET_DIR="$FUZZ_TARGET_DIR"
cd "$root/fuzz"
fuzz=(cargo fuzz run --dev -s none)

if [ $# -gt 0 ]; then
  target="$1"; shift
  exec "${fuzz[@]}" "$target" -- "$@"
fi

runs="${FUZZ_RUNS:-100000}"
mkdir -p "$FUZZ_TARGET_DIR/corpus"
for target in stripe_signature stripe_event query_params; do
  corpus="$FUZZ_TARGET_DIR/corpus/$target"
  mkdir -p "$corpus"
  log="$FUZZ_TARGET_DIR/$target.log"
  # Bounded by runs and by time: a smoke run, not a campaign. A crash fails the run.
  if ! "${fuzz[@]}" "$target" "$corpus" -- -runs="$runs" -max_total_time=60 -max_len=4096 >"$log" 2>&1; then
    # The compiler's own errors first (a failed build), then how the run ended, then the disk
    # (a full disk fails the instrumented build with errors far above the tail).
    grep -E '^(error|warning: .*(space|memory))' "$log" | head -n 20 >&2 || true
    tail -n 40 "$log" >&2
    df -h "$FUZZ_TARGET_DIR" >&2 || true
    die "fuzz target $target failed (log: $log)"
  fi
  execs="$(grep -Eo 'Done [0-9]+ runs' "$log" | grep -Eo '[0-9]+' | tail -n1 || true)"
  [ -n "$execs" ] || { tail -n 20 "$log" >&2; die "fuzz target $target reported no executions"; }
  echo "fuzz: $target executions=$execs"
done
