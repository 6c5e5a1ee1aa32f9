#!/usr/bin/env bash
# Stops, by PID, every process up.sh started for a run, then removes the run directory.
# Usage: tests/harness/down.sh <run directory>
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"

run="${1:-}"
[ -n "$run" ] && [ -d "$run" ] || die "usage: down.sh <run directory from up.sh>"

# The node first: its kubelet would restart what is stopped under it.
"$here/node-down.sh" "$run"
if [ -f "$run/pids" ]; then
  # Reverse start order: clients before the servers they talk to.
  mapfile -t lines < <(tac "$run/pids")
  for line in "${lines[@]}"; do
    read -r name pid <<<"$line"
    # Postgres treats SIGTERM as "wait for every client to leave"; SIGINT is its fast shutdown.
    sig=TERM; [ "$name" = postgres ] && sig=INT
    kill -0 "$pid" 2>/dev/null && kill "-$sig" "$pid" 2>/dev/null && log "stopping $name (pid $pid)"
  done
  deadline=$((SECONDS + 15))
  for line in "${lines[@]}"; do
    read -r name pid <<<"$line"
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) ignored SIGTERM; killing it"
      kill -KILL "$pid" 2>/dev/null
    fi
  done
fi
rm -f "$STACKPLANE_CACHE/runs/$(basename "$run")"
if [ -n "${STACKPLANE_KEEP_RUN:-}" ]; then
  log "kept $run (STACKPLANE_KEEP_RUN is set)"
else
  rm -rf "$run"
fi
