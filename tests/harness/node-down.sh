#!/usr/bin/env bash
# Stops the node of a run (node.sh): its NetworkPolicy enforcer (kube-router) and the rules it
# left in the kernel; the kubelet, so nothing restarts what is removed;
# then every container and pod sandbox in its containerd, their network namespaces and mounts;
# containerd; the fake metadata endpoint; and the run's bridge. down.sh calls it before stopping the rest.
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

if awk '$1 == "kube-router"' "$node/pids" 2>/dev/null | grep -q .; then
  stop kube-router
  # Its rules outlive it. Clean them only under the machine's lock: if another run's kube-router
  # took the lock the moment this one exited, the rules are now that run's (and it cleaned the
  # stale ones when it took the lock).
  exec {lock_fd}>>"$NETWORK_POLICY_LOCK"
  if flock -w 10 "$lock_fd" && ! pgrep -x kube-router >/dev/null; then
    remove_network_policy_rules
    log "removed kube-router's chains and ipsets"
  fi
  exec {lock_fd}>&-
fi
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
stop metadata
if [ -f "$node/metadata" ]; then
  read -r ns _host_if table subnet <"$node/metadata"
  ip rule del from "$subnet" to 169.254.169.254/32 lookup "$table" 2>/dev/null
  ip route flush table "$table" 2>/dev/null
  # Deleting the namespace deletes the veth pair with it.
  ip netns del "$ns" 2>/dev/null && log "removed the fake metadata endpoint ($ns)"
fi
if [ -f "$node/bridge" ]; then
  ip link delete "$(cat "$node/bridge")" 2>/dev/null && log "removed bridge $(cat "$node/bridge")"
fi
exit 0
