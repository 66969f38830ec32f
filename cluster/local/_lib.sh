# Shared by start.sh and add-node.sh (sourced, not run). Needs STATE and TIMEOUT.

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

launch() {  # launch NAME CMD...: its own process group and setsid, output to logs/NAME.log, pid to NAME.pid
  local name=$1; shift
  setsid "$@" < /dev/null > "$STATE/logs/$name.log" 2>&1 &
  echo $! > "$STATE/$name.pid"
  echo "$name" >> "$STATE/nodes"
}

wait_for() {  # wait_for NAME PATTERN: until PATTERN shows in the node's log, or it exits
  local name=$1 pattern=$2 pid i
  pid=$(cat "$STATE/$name.pid")
  for ((i = 0; i < TIMEOUT * 2; i++)); do
    grep -q "$pattern" "$STATE/logs/$name.log" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { tail -20 "$STATE/logs/$name.log" >&2; die "$name exited during start"; }
    sleep 0.5
  done
  tail -20 "$STATE/logs/$name.log" >&2
  die "$name not up after ${TIMEOUT}s"
}

wait_port() {  # wait_port NAME PORT [HOST]: until HOST:PORT (127.0.0.1) accepts connections
  local i host=${3:-127.0.0.1}
  for ((i = 0; i < TIMEOUT * 4; i++)); do
    (exec 3<> "/dev/tcp/$host/$2") 2>/dev/null && return 0
    kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null || { tail -20 "$STATE/logs/$1.log" >&2; die "$1 exited during start"; }
    sleep 0.25
  done
  die "$1 not listening on $host:$2 after ${TIMEOUT}s"
}

wait_nodes() {  # wait_nodes N: until the cluster reports N alive nodes (asks the job API, with the token)
  "$FER_PYTHON" - "$DASH_PORT" "$1" "$TIMEOUT" <<'PY'
import json, os, sys, time, urllib.request
port, want, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
token = os.environ.get("RAY_AUTH_TOKEN") or open(os.environ["RAY_AUTH_TOKEN_PATH"]).read().strip()
req = urllib.request.Request(f"http://127.0.0.1:{port}/nodes?view=summary",
                             headers={"Authorization": f"Bearer {token}"})
deadline, alive = time.time() + timeout, 0
while time.time() < deadline:
    try:
        body = json.load(urllib.request.urlopen(req, timeout=5))
        alive = sum(1 for n in body["data"]["summary"] if n.get("raylet", {}).get("state") == "ALIVE")
        if alive >= want:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit(f"only {alive} of {want} Ray nodes alive after {timeout:.0f}s")
PY
}

write_cluster_json() {
  "$FER_PYTHON" - "$STATE" <<'PY'
import json, os, sys
state = sys.argv[1]
env = dict(line.split("=", 1) for line in open(os.path.join(state, "settings")).read().splitlines() if "=" in line)
nodes = [n for n in open(os.path.join(state, "nodes")).read().split() if n]
pids = {}
for n in nodes:
    try:
        pids[n] = int(open(os.path.join(state, f"{n}.pid")).read())
    except FileNotFoundError:
        pass
info = {
    "dashboard": f"http://127.0.0.1:{env['DASH_PORT']}",
    "gcs": f"{env['HEAD_IP']}:{env['PORT']}",
    "s3_endpoint": f"http://127.0.0.1:{env['S3_PORT']}" if env["S3"] != "0" else None,
    "auth_token_path": env.get("RAY_AUTH_TOKEN_PATH") or None,
    "pids": pids,
    "env_file": os.path.join(state, "env.sh"),
}
with open(os.path.join(state, "cluster.json"), "w") as f:
    json.dump(info, f, indent=2)
PY
}
