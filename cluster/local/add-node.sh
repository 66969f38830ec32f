#!/usr/bin/env bash
# Join one more worker node to the local cluster that start.sh started (scale out by hand, or
# replace a node that was lost: `stop.sh --kill node2; add-node.sh`).
#
#   FER_CLUSTER_DIR=/tmp/fer-ray-cluster cluster/local/add-node.sh
#
# Node N (node2, node3, ...) gets address ${FER_RAY_IP_PREFIX}(N+1), a custom resource {"nodeN": 1}
# (to pin work on it), the CPUs/memory of the other nodes, its own temp dir and log, and its own
# setsid group: its pid goes to $STATE/nodeN.pid, and stop.sh stops it with the others.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${FER_CLUSTER_DIR:-/tmp/fer-ray-cluster}
TIMEOUT=${FER_START_TIMEOUT:-120}
source "$HERE/_lib.sh"
[ -f "$STATE/settings" ] || die "no cluster in $STATE (start one with cluster/local/start.sh)"
while IFS='=' read -r k v; do
  case "$k" in FER_PYTHON|PORT|DASH_PORT|AGENT_PORT|IP_PREFIX|HEAD_IP|CPUS|MEMORY|OBJECT_STORE) printf -v "$k" '%s' "$v" ;; esac
  if [ "$k" = RAY_AUTH_TOKEN_PATH ] && [ -n "$v" ] && [ -z "${RAY_AUTH_TOKEN:-}" ]; then export RAY_AUTH_TOKEN_PATH=$v; fi
done < "$STATE/settings"
head_pid=$(cat "$STATE/head.pid" 2>/dev/null) || die "no head pid in $STATE"
kill -0 "$head_pid" 2>/dev/null || die "the head (pid $head_pid) is not running"

BIN=$(dirname "$FER_PYTHON")
export PATH="$BIN:$PATH" RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
export RAY_health_check_period_ms=${FER_RAY_HEALTH_CHECK_PERIOD_MS:-1000}
export RAY_health_check_failure_threshold=${FER_RAY_HEALTH_CHECK_FAILURES:-3}
export RAY_task_actor_unavailable_retry_delay_base_ms=${FER_RAY_UNAVAILABLE_RETRY_DELAY_MS:-1000}  # see start.sh

n=2  # the first free node number: numbers are never reused, so logs and temp dirs stay apart
while [ -e "$STATE/node$n" ] || grep -qx "node$n" "$STATE/nodes" 2>/dev/null; do n=$((n + 1)); done
name=node$n
ip=${IP_PREFIX}$((n + 1))

launch "$name" "$BIN/ray" start --block --address="$HEAD_IP:$PORT" \
  --node-ip-address="$ip" --dashboard-agent-listen-port="$((AGENT_PORT + n - 1))" \
  --num-cpus="$CPUS" --resources="{\"$name\": 1}" \
  --memory="$MEMORY" --object-store-memory="$OBJECT_STORE" \
  --temp-dir="$STATE/$name" --disable-usage-stats
wait_for "$name" "block forever"
if [ -f "$STATE/cluster.json" ]; then write_cluster_json; fi
[ -n "${FER_ADD_NODE_QUIET:-}" ] || echo "node $name joined at $ip (pid $(cat "$STATE/$name.pid"))"
