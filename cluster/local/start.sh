#!/usr/bin/env bash
# Start a real multi-node Ray cluster on this machine, plus a local S3-protocol server.
#
#   cluster/local/start.sh            # head + 1 worker node + moto S3, state in /tmp/fer-ray-cluster
#   source /tmp/fer-ray-cluster/env.sh
#   ray job submit --working-dir . ... -- python jobs/train.py ...
#   cluster/local/stop.sh             # stops exactly the processes this script started, by PID
#
# Each node is its own `ray start --block` process started with setsid: its PID, which is
# also the process-group and setsid id of everything that node runs, goes to $STATE/<node>.pid.
# stop.sh ends those and nothing else: never `ray stop`, which kills every Ray process on the
# machine. add-node.sh joins more worker nodes later (or replaces a lost one).
#
# Security defaults: the dashboard / job API listens on 127.0.0.1 only, and token authentication
# is on (RAY_AUTH_MODE=token, Ray >= 2.52). The token is a fresh random one in $STATE/auth_token
# (mode 600) unless RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH is already set; clients find it through
# RAY_AUTH_TOKEN_PATH in env.sh. Nothing secret is printed.
#
# Node addresses: Ray replaces 127.0.0.1 by the machine's outward address (eth0); other loopback
# addresses are kept, so the head is 127.0.0.2 and worker node i is 127.0.0.(2+i) by default:
# all cluster traffic stays on the loopback interface (Linux routes all of 127.0.0.0/8 there).
#
# Settings (environment variables, all optional):
#   FER_CLUSTER_DIR          state dir: pids, logs, Ray temp dirs, env.sh  (/tmp/fer-ray-cluster;
#                            keep it short: Ray's socket paths under it must stay < 108 chars)
#   FER_PYTHON               the Python whose ray/moto_server to use (repo .venv if present, else python3)
#   FER_RAY_WORKERS          worker nodes besides the head (1)
#   FER_RAY_NODE_CPUS        CPUs each node advertises (1)
#   FER_RAY_NODE_MEMORY      bytes of task/actor memory per node (3 GiB)
#   FER_RAY_OBJECT_STORE     bytes of object store per node (512 MiB)
#   FER_RAY_PORT             head GCS port (6379)         FER_RAY_DASHBOARD_PORT  dashboard/job API (8265)
#   FER_RAY_CLIENT_PORT      Ray Client server (10001)    FER_RAY_AGENT_PORT      first node agent port (52465)
#   FER_RAY_IP_PREFIX        node addresses prefix (127.0.0.) -> head .2, workers .3, .4, ...
#   FER_S3_PORT              local S3 server port (9000); FER_S3=0 to start none (use your own endpoint)
#   FER_RAY_HEALTH_CHECK_PERIOD_MS, FER_RAY_HEALTH_CHECK_FAILURES, FER_RAY_UNAVAILABLE_RETRY_DELAY_MS
#                            how fast a lost node is noticed, and how its actors' calls are retried
#                            (1000, 3, 1000; see below)
# Custom ports stay outside 10002-19999: that is Ray's worker port range.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
STATE=${FER_CLUSTER_DIR:-/tmp/fer-ray-cluster}
if [ -z "${FER_PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then FER_PYTHON=$REPO/.venv/bin/python; else FER_PYTHON=$(command -v python3); fi
fi
BIN=$(dirname "$FER_PYTHON")
RAY=$BIN/ray
MOTO=$BIN/moto_server
WORKERS=${FER_RAY_WORKERS:-1}
CPUS=${FER_RAY_NODE_CPUS:-1}
MEMORY=${FER_RAY_NODE_MEMORY:-$((3 * 1024 * 1024 * 1024))}
OBJECT_STORE=${FER_RAY_OBJECT_STORE:-$((512 * 1024 * 1024))}
PORT=${FER_RAY_PORT:-6379}
DASH_PORT=${FER_RAY_DASHBOARD_PORT:-8265}
CLIENT_PORT=${FER_RAY_CLIENT_PORT:-10001}
AGENT_PORT=${FER_RAY_AGENT_PORT:-52465}
IP_PREFIX=${FER_RAY_IP_PREFIX:-127.0.0.}
S3=${FER_S3:-1}
S3_PORT=${FER_S3_PORT:-9000}
HEAD_IP=${IP_PREFIX}2
TIMEOUT=${FER_START_TIMEOUT:-120}

source "$HERE/_lib.sh"
[ -x "$RAY" ] || die "no ray at $RAY (set FER_PYTHON, or run scripts/setup.sh)"
[ "$S3" = 0 ] || [ -x "$MOTO" ] || die "no moto_server at $MOTO (pip install 'moto[server]', or FER_S3=0)"
[ "${#STATE}" -le 48 ] || die "FER_CLUSTER_DIR is ${#STATE} chars; keep it <= 48 (Ray's unix socket paths live under it)"
for p in "$PORT" "$DASH_PORT" "$CLIENT_PORT" "$AGENT_PORT" "$S3_PORT"; do
  if [ "$p" -ge 10002 ] && [ "$p" -le 19999 ]; then die "port $p is in Ray's worker port range 10002-19999"; fi
done

mkdir -p "$STATE/logs"
for f in "$STATE"/*.pid; do
  [ -e "$f" ] || continue
  if kill -0 "$(cat "$f")" 2>/dev/null; then die "already running (see $f); stop it with cluster/local/stop.sh"; fi
  rm -f "$f"
done
rm -f "$STATE/nodes" "$STATE/cluster.json" "$STATE/env.sh"

# Everything started below, including job entrypoints (`python jobs/...`), uses this Python.
export PATH="$BIN:$PATH"
export RAY_USAGE_STATS_ENABLED=0
# Losing a node: until the GCS declares it dead (health checks: Ray's default takes ~15-30 s),
# calls to the actors it held fail fast as "temporarily unavailable" and each failure uses up one
# of the task's retries (labeling allows 3), 100 ms apart by default. Notice a lost node in ~3 s
# and space those retries 1 s, 2 s, 4 s apart, so that the retries outlast the detection and the
# batch is re-run on the restarted actor instead of failing the job. (Read by every process the
# nodes start, job drivers included.)
export RAY_health_check_period_ms=${FER_RAY_HEALTH_CHECK_PERIOD_MS:-1000}
export RAY_health_check_failure_threshold=${FER_RAY_HEALTH_CHECK_FAILURES:-3}
export RAY_task_actor_unavailable_retry_delay_base_ms=${FER_RAY_UNAVAILABLE_RETRY_DELAY_MS:-1000}

# --- token authentication ---------------------------------------------------------------------
export RAY_AUTH_MODE=token
if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ]; then
  if [ ! -s "$STATE/auth_token" ]; then
    (umask 077 && "$FER_PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$STATE/auth_token")
  fi
  export RAY_AUTH_TOKEN_PATH=$STATE/auth_token
fi

# Settings add-node.sh needs to join more nodes later (nothing secret).
cat > "$STATE/settings" <<SETTINGS
FER_PYTHON=$FER_PYTHON
PORT=$PORT
DASH_PORT=$DASH_PORT
AGENT_PORT=$AGENT_PORT
IP_PREFIX=$IP_PREFIX
HEAD_IP=$HEAD_IP
CPUS=$CPUS
MEMORY=$MEMORY
OBJECT_STORE=$OBJECT_STORE
S3=$S3
S3_PORT=$S3_PORT
RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-}
SETTINGS

# If anything below fails, stop what was already started.
UP=0
trap '[ "$UP" = 1 ] || { echo "start.sh: failed; stopping what was started" >&2; FER_CLUSTER_DIR="$STATE" bash "$HERE/stop.sh" >&2; }' EXIT

# --- local S3 server ---------------------------------------------------------------------------
if [ "$S3" != 0 ]; then
  launch s3 "$MOTO" -H 127.0.0.1 -p "$S3_PORT"
  wait_port s3 "$S3_PORT"
fi

# --- head node ---------------------------------------------------------------------------------
launch head "$RAY" start --head --block \
  --node-ip-address="$HEAD_IP" --port="$PORT" \
  --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT" \
  --ray-client-server-port="$CLIENT_PORT" --dashboard-agent-listen-port="$AGENT_PORT" \
  --num-cpus="$CPUS" --memory="$MEMORY" --object-store-memory="$OBJECT_STORE" \
  --temp-dir="$STATE/head" --disable-usage-stats
wait_port head "$PORT" "$HEAD_IP"  # the GCS: workers can join while the head starts its dashboard

# --- worker nodes ------------------------------------------------------------------------------
for ((i = 1; i <= WORKERS; i++)); do
  FER_CLUSTER_DIR="$STATE" FER_ADD_NODE_QUIET=1 bash "$HERE/add-node.sh"
done
wait_for head "block forever"
wait_nodes $((WORKERS + 1))

# --- what clients need -------------------------------------------------------------------------
{
  echo "# fer-ray local cluster: source this file (it holds no secret: the token stays in its file)"
  echo "export PATH=\"$BIN:\$PATH\"  # the ray CLI and Python the cluster runs"
  echo "export RAY_ADDRESS=http://127.0.0.1:$DASH_PORT"
  echo "export RAY_AUTH_MODE=token"
  if [ -n "${RAY_AUTH_TOKEN_PATH:-}" ]; then echo "export RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"; fi
  echo "export FER_RAY_GCS=$HEAD_IP:$PORT"
  if [ "$S3" != 0 ]; then
    echo "# the local S3 server accepts any key pair; these are placeholders, not credentials"
    echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT"
    echo "export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1"
    echo "# for ray job submit --runtime-env-json \"\$FER_RUNTIME_ENV\": where the jobs find S3"
    echo "export FER_RUNTIME_ENV='{\"env_vars\": {\"AWS_ENDPOINT_URL\": \"http://127.0.0.1:$S3_PORT\", \"AWS_ACCESS_KEY_ID\": \"testing\", \"AWS_SECRET_ACCESS_KEY\": \"testing\", \"AWS_DEFAULT_REGION\": \"us-east-1\"}}'"
  fi
} > "$STATE/env.sh"

write_cluster_json
UP=1

echo "fer-ray local cluster is up: head $HEAD_IP + $WORKERS worker node(s), $CPUS CPU(s) each"
echo "  dashboard / job API  http://127.0.0.1:$DASH_PORT   (token auth; token file: ${RAY_AUTH_TOKEN_PATH:-from RAY_AUTH_TOKEN})"
echo "  GCS                  $HEAD_IP:$PORT"
[ "$S3" = 0 ] || echo "  S3 endpoint          http://127.0.0.1:$S3_PORT (moto, in memory)"
echo "  pids, logs           $STATE"
echo "Use it:   source $STATE/env.sh"
echo "          (sets RAY_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH, FER_RAY_GCS$([ "$S3" = 0 ] || echo ", AWS_ENDPOINT_URL, placeholder AWS keys, FER_RUNTIME_ENV"))"
echo "Stop it:  FER_CLUSTER_DIR=$STATE $HERE/stop.sh"
