#!/usr/bin/env bash
# Stops the node of a run (node.sh): the kubelet first, so nothing restarts what is removed;
# then every container and pod sandbox in its containerd, their network namespaces and mounts;
# containerd; and the run's bridge. down.sh calls it before stopping the rest.
# Usage: tests/harness/node-down.sh <run directory>
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"

run="${1:-}"
node="$run/node"
[ -d "$node" ] || exit 0
sock="$node/containerd.sock"

stop() { # name
  local pid
  pid="$(awk -v n="$1" '$1 == n {print $2}' "$node/pids" 2>/dev/null)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  log "stopping $1 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null
}

stop kubelet
if [ -S "$sock" ]; then
  ctr=(ctr --address "$sock" -n k8s.io)
  netns=()
  for id in $("${ctr[@]}" containers ls -q 2>/dev/null); do
    # The sandbox's network namespace is a bind mount under /run/netns: note it before the
    # container that names it is gone.
    path="$("${ctr[@]}" containers info "$id" 2>/dev/null | python3 -c '
import json, sys
spec = json.load(sys.stdin).get("Spec") or {}
for ns in (spec.get("linux") or {}).get("namespaces") or []:
    if ns.get("type") == "network" and ns.get("path"):
        print(ns["path"])' 2>/dev/null)"
    [ -n "$path" ] && netns+=("$path")
    "${ctr[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1
  done
  for id in $("${ctr[@]}" containers ls -q 2>/dev/null); do
    for _ in $(seq 1 25); do "${ctr[@]}" tasks delete "$id" >/dev/null 2>&1 && break; "${ctr[@]}" tasks ls -q 2>/dev/null | grep -qx "$id" || break; sleep 0.2; done
    "${ctr[@]}" containers delete "$id" >/dev/null 2>&1
  done
  for path in $(printf '%s\n' "${netns[@]}" | sort -u); do
    umount "$path" 2>/dev/null; rm -f "$path"
  done
fi
stop containerd
# Whatever is still mounted under the run (rootfs overlays, kubelet volumes), deepest first.
findmnt -rn -o TARGET | grep -F "$run/" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
if [ -f "$node/bridge" ]; then
  ip link delete "$(cat "$node/bridge")" 2>/dev/null && log "removed bridge $(cat "$node/bridge")"
fi
exit 0
