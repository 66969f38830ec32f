#!/usr/bin/env bash
# Stop the local cluster started by start.sh: exactly the processes it started, by PID.
#
#   cluster/local/stop.sh               # every node + the S3 server
#   cluster/local/stop.sh node2         # one node (or `s3`, `head`)
#   cluster/local/stop.sh --kill node2  # SIGKILL all of the node's processes at once: a lost machine
#
# Never `ray stop`: that kills every Ray process on the machine, other users' clusters included.
# Each node was started with setsid, so its `ray start --block` PID is also the id of the process
# group and of the setsid group of everything that node runs (GCS, raylet, dashboard, agents; Ray's
# worker processes make process groups of their own but stay in its setsid group). A node first gets
# SIGTERM on that PID (Ray drains and stops its own children), then SIGTERM/SIGKILL on the group,
# and finally SIGKILL for whatever is left in its setsid group. All nodes are stopped in parallel.
# A PID is only signalled while it is still a `ray start`/`moto_server` process, so a stale pid
# file never hits an unrelated process that reused the number.
set -uo pipefail

STATE=${FER_CLUSTER_DIR:-/tmp/fer-ray-cluster}
GRACE=${FER_STOP_GRACE:-20}
KILL=0
if [ "${1:-}" = "--kill" ]; then KILL=1; shift; fi

if [ $# -gt 0 ]; then
  NAMES=("$@")
else
  NAMES=()
  if [ -f "$STATE/nodes" ]; then mapfile -t NAMES < "$STATE/nodes"; fi
  for f in "$STATE"/*.pid; do  # anything with a pid file that `nodes` does not list
    [ -e "$f" ] || continue
    n=$(basename "$f" .pid)
    [[ " ${NAMES[*]-} " == *" $n "* ]] || NAMES+=("$n")
  done
fi

ours() {  # ours PID: is it still a process start.sh started?
  local cmd
  cmd=$(tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null) || return 1
  [[ "$cmd" == *"ray start"* || "$cmd" == *"moto_server"* ]]
}
group_alive() { kill -0 -- "-$1" 2>/dev/null; }
session_pids() { ps -eo pid=,sid= | awk -v s="$1" '$2 == s && $1 != s {print $1}'; }
kill_session() {  # kill_session SID SIGNAL
  local p
  for p in $(session_pids "$1"); do kill "-$2" "$p" 2>/dev/null; done
}

# 1. signal every named node at once
PIDS=() STOPPED=()
for name in "${NAMES[@]-}"; do
  [ -n "$name" ] || continue
  f=$STATE/$name.pid
  if [ ! -f "$f" ]; then [ $# -eq 0 ] || echo "stop.sh: no pid file for $name in $STATE" >&2; continue; fi
  pid=$(cat "$f")
  if ours "$pid"; then
    if [ "$KILL" = 1 ]; then
      kill -KILL -- "-$pid" 2>/dev/null
      kill_session "$pid" KILL
    else
      kill -TERM "$pid" 2>/dev/null
    fi
    STOPPED+=("$name (pid $pid)")
    PIDS+=("$pid")
  elif [ ! -e "/proc/$pid" ]; then
    # the leader is gone, but its group or setsid group may hold stragglers; the kernel does not reuse a
    # pid while a group or setsid group of that id exists, so whatever is in them is ours
    PIDS+=("$pid")
  fi  # else: the number now belongs to some other process; leave it alone
  rm -f "$f"
done

# 2. wait for them together, then force what is left
all_gone() {
  local p
  for p in "${PIDS[@]-}"; do
    [ -n "$p" ] || continue
    if group_alive "$p" || [ -n "$(session_pids "$p")" ]; then return 1; fi
  done
  return 0
}
for ((i = 0; i < GRACE * 4; i++)); do all_gone && break; sleep 0.25; done
if ! all_gone; then
  for p in "${PIDS[@]-}"; do [ -n "$p" ] && kill -TERM -- "-$p" 2>/dev/null; done
  for ((i = 0; i < 8; i++)); do all_gone && break; sleep 0.25; done
  for p in "${PIDS[@]-}"; do
    [ -n "$p" ] || continue
    kill -KILL -- "-$p" 2>/dev/null
    kill_session "$p" KILL
  done
fi

for s in "${STOPPED[@]-}"; do [ -n "$s" ] && echo "stopped $s"; done
[ ${#STOPPED[@]} -gt 0 ] || echo "stop.sh: nothing running under $STATE"
exit 0
