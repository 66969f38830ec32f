"""End to end on a real multi-node Ray cluster on this machine (cluster/local/start.sh): a head and a
worker node, each its own `ray start` with 1 CPU, its own memory limits and temp dir, the job API
on 127.0.0.1 behind token authentication, and the local S3 server. Jobs go in through the Job
Submission API exactly as `ray job submit --working-dir . -- python jobs/...` sends them.

  1. training: `jobs/train.py` with 2 Ray Train workers, one on each node; checkpoints and the
     bundle land on S3;
  2. labeling, with a fault: while `jobs/label.py` runs, the worker node is killed (SIGKILL of its
     whole process session: a lost machine) and a replacement node joins, as an autoscaler or
     KubeRay would bring one; the job still succeeds and every image is in the output exactly once.
     The job reads S3 through a proxy (tests/s3faults.py) that holds back reads of the last images
     until the node is lost, so the loss happens mid-run however fast the machine is;
  3. a scheduled-style incremental run labels only the images added since (since the run of 2, or,
     when 2 committed none, since a small plain run of its own: it fails, never skips, on its own).
Every process the cluster runs is ended by PID (stop.sh, then a sweep of the sessions it opened),
even when a test fails. Slow by nature (about 3 minutes on 2 cores), and part of the default run.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
import pytest

from conftest import face_like, image_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = os.path.join(ROOT, "cluster", "local")
N_IMAGES = 1200  # 30 blocks of 40: enough that both labeling actors take several
N_HELD = 80  # the last images: their reads wait until the node is lost, so the run cannot end first
N_NEW = 7
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


# ----------------------------------------------------------------------------- the cluster


def _port_free(port: int) -> bool:
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _ports(n: int, rng=random.Random()) -> list[int]:
    """n consecutive free ports, outside Ray's worker range 10002-19999 and the ephemeral range."""
    for _ in range(200):
        base = rng.randrange(20000, 32000)
        if all(_port_free(base + i) for i in range(n)):
            return list(range(base, base + n))
    raise RuntimeError("no free ports")


class Cluster:
    def __init__(self, state: str, env: dict):
        self.state, self.env = state, env
        self.info = json.load(open(os.path.join(state, "cluster.json")))
        self.dashboard = self.info["dashboard"]
        self.s3 = self.info["s3_endpoint"]
        self.token = open(self.info["auth_token_path"]).read().strip()
        self.headers = {"Authorization": f"Bearer {self.token}"}
        prefix = env["FER_RAY_IP_PREFIX"]
        self.ip = {"head": f"{prefix}2", "node2": f"{prefix}3", "node3": f"{prefix}4"}

    def script(self, name: str, *args: str, timeout: float = 180) -> str:
        p = subprocess.run(["bash", os.path.join(LOCAL, name), *args], env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        assert p.returncode == 0, f"{name} {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}"
        return p.stdout

    def pid(self, node: str) -> int | None:
        try:
            return int(open(os.path.join(self.state, f"{node}.pid")).read())
        except FileNotFoundError:
            return None

    def jobs(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard, headers=self.headers)

    def state_api(self):
        from ray.util.state.api import StateApiClient

        return StateApiClient(self.dashboard, headers=self.headers)

    def list(self, resource: str, filters=()):
        from ray.util.state.common import ListApiOptions, StateResource

        return self.state_api().list(StateResource[resource.upper()],
                                     options=ListApiOptions(filters=list(filters), detail=True, limit=10000),
                                     raise_on_missing_output=False)

    def node_ids(self) -> dict[str, str]:
        """node ip -> node id (alive or dead)."""
        return {n.node_ip: n.node_id for n in self.list("nodes")}


def _session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
                    out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f"{pid} {f.read().replace(bytes(1), b' ').decode(errors='replace')[:120]}"
    except OSError:
        return f"{pid} (gone)"


@pytest.fixture(scope="module")
def cluster():
    state = tempfile.mkdtemp(prefix="frc-", dir="/tmp")  # short: Ray's socket paths live under it
    gcs, dash, client, s3, agent = _ports(1)[0], _ports(1)[0], _ports(1)[0], _ports(1)[0], _ports(4)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(
        FER_CLUSTER_DIR=state, FER_PYTHON=sys.executable, FER_RAY_WORKERS="1", FER_RAY_NODE_CPUS="1",
        FER_RAY_NODE_MEMORY=str(3 << 30), FER_RAY_OBJECT_STORE=str(300 << 20),
        FER_RAY_PORT=str(gcs), FER_RAY_DASHBOARD_PORT=str(dash), FER_RAY_CLIENT_PORT=str(client),
        FER_RAY_AGENT_PORT=str(agent), FER_S3_PORT=str(s3), FER_RAY_IP_PREFIX="127.0.0.",
        FER_STOP_GRACE="10",
    )
    sessions: set[int] = set()
    try:
        p = subprocess.run(["bash", os.path.join(LOCAL, "start.sh")], env=env, capture_output=True, text=True,
                           timeout=300)
        sessions |= {int(open(os.path.join(state, f)).read()) for f in os.listdir(state) if f.endswith(".pid")}
        assert p.returncode == 0, f"start.sh failed:\n{p.stdout}\n{p.stderr}"
        assert "testing" not in p.stdout and open(os.path.join(state, "auth_token")).read() not in p.stdout
        c = Cluster(state, env)
        c.sessions = sessions
        yield c
    finally:
        for f in os.listdir(state):  # nodes added by the tests too
            if f.endswith(".pid"):
                sessions.add(int(open(os.path.join(state, f)).read()))
        subprocess.run(["bash", os.path.join(LOCAL, "stop.sh")], env=env, capture_output=True, timeout=180)
        for sid in sessions:  # whatever stop.sh left: every process of the sessions start.sh opened
            for pid in _session_pids(sid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        deadline = time.monotonic() + 15  # SIGKILLed processes take a moment to disappear
        while (left := [pid for sid in sessions for pid in _session_pids(sid)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(state, ignore_errors=True)
        assert not left, f"processes left behind: {[_describe(p) for p in left]}"


@pytest.fixture(scope="module")
def s3(cluster):
    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": cluster.s3})
    bucket = f"e2e-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    return fs, bucket


@pytest.fixture(scope="module")
def job_env(cluster):
    """What `--runtime-env-json '{"env_vars": ...}'` carries: where S3 is (and moto's placeholder keys)."""
    return {"AWS_ENDPOINT_URL": cluster.s3, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}


def submit(cluster: Cluster, argv: list[str], env_vars: dict) -> str:
    """`ray job submit --working-dir . --runtime-env-json '{"env_vars": ...}' -- python jobs/...`"""
    return cluster.jobs().submit_job(
        entrypoint=shlex.join(["python", *argv]),
        submission_id=f"e2e-{argv[0].split('/')[-1][:-3]}-{uuid.uuid4().hex[:6]}",
        runtime_env={"working_dir": ROOT, "excludes": [".git", ".venv", "tests", "benchmarks"], "env_vars": env_vars},
    )


def wait(cluster: Cluster, job: str, timeout: float = 240) -> str:
    client = cluster.jobs()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job).value)
        if status in TERMINAL:
            break
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert status == "SUCCEEDED", f"job {job} ended {status}:\n{logs[-6000:]}"
    return logs


# ------------------------------------------------------------------------------------- the tests


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, p = local.split(":")
                if state != "0A" or int(p, 16) != port:
                    continue
                raw = bytes.fromhex(addr)
                if len(raw) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:  # four little-endian 32-bit words
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def test_job_api_is_on_localhost_and_needs_the_token(cluster):
    import urllib.error
    import urllib.request

    port = int(cluster.dashboard.rsplit(":", 1)[1])
    assert _listening_addresses(port) == {"127.0.0.1"}
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{cluster.dashboard}/api/jobs/", timeout=10)
    assert err.value.code == 401
    req = urllib.request.Request(f"{cluster.dashboard}/api/jobs/", headers=cluster.headers)
    assert urllib.request.urlopen(req, timeout=10).status == 200
    ips = {n.node_ip for n in cluster.list("nodes") if n.state == "ALIVE"}
    assert ips == {cluster.ip["head"], cluster.ip["node2"]}


@pytest.fixture(scope="module")
def trained(cluster, s3, job_env):
    """Tiny prepared data on S3 -> jobs/train.py on 2 workers, one per node."""
    from fer_ray import data
    from fer_ray.cli import build_parser
    from fer_ray.errors import UsageError

    fs, bucket = s3
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for split, n in (("Training", 96), ("PublicTest", 32), ("PrivateTest", 32)):
            pixels = np.stack([face_like(i) for i in range(n)])
            data.write_split(tmp, split, pixels, rng.integers(0, 7, n))
        fs.put(os.path.join(tmp, "*.parquet"), f"{bucket}/prepared/")
    argv = ["jobs/train.py", "--data", f"s3://{bucket}/prepared", "--arch", "classic",
            "--arch-args", json.dumps({"widths": [8, 16, 16, 16], "hidden": 16}), "--epochs", "1",
            "--batch-size", "32", "--workers", "2", "--storage", f"s3://{bucket}/runs", "--name", "e2e"]
    try:  # STRICT_SPREAD when the command has the flag; else 1 CPU per node forces one worker per node
        build_parser("train").parse_args(["train", "--placement-strategy", "STRICT_SPREAD"])
        argv += ["--placement-strategy", "STRICT_SPREAD"]
    except UsageError:
        pass
    t0 = time.monotonic()
    job = submit(cluster, argv, job_env)
    logs = wait(cluster, job, timeout=300)
    return {"job": job, "logs": logs, "bundle": f"s3://{bucket}/runs/e2e/bundle", "seconds": time.monotonic() - t0}


def test_training_job_spreads_over_both_nodes_and_writes_to_s3(cluster, s3, trained):
    fs, bucket = s3
    run = f"{bucket}/runs/e2e"
    keys = fs.find(run)
    assert any("checkpoint" in k.rsplit("/", 2)[-2] for k in keys), f"no checkpoint under {run}: {keys}"
    meta = json.loads(fs.cat(f"{run}/bundle/bundle.json"))
    assert meta["arch"] == "classic" and fs.exists(f"{run}/bundle/weights.safetensors")
    # the Ray Train workers of this job: one on the head, one on the worker node
    job_id = cluster.jobs().get_job_info(trained["job"]).job_id
    workers = [a for a in cluster.list("actors", [("job_id", "=", job_id)]) if "TrainWorker" in a.class_name]
    by_ip = {v: k for k, v in cluster.node_ids().items()}
    assert len(workers) >= 2, [a.class_name for a in cluster.list("actors", [("job_id", "=", job_id)])]
    assert {by_ip[a.node_id] for a in workers} == {cluster.ip["head"], cluster.ip["node2"]}


def _upload_images(fs, prefix: str, start: int, n: int) -> list[str]:
    objs = {f"{prefix}/img_{i:05d}.png": image_bytes(face_like(i)) for i in range(start, start + n)}
    fs.pipe(objs)
    return sorted(f"s3://{k}" for k in objs)


def _committed(fs, bucket: str, dest: str = "labels"):
    import pyarrow.parquet as pq

    fs.invalidate_cache()  # s3fs caches listings; the jobs wrote behind its back
    markers = {}
    for k in fs.glob(f"{bucket}/{dest}/_runs/*.json"):
        m = json.loads(fs.cat(k))
        markers[m["run_id"]] = m
    rows = []
    for run_id in markers:
        for k in sorted(fs.glob(f"{bucket}/{dest}/run_id={run_id}/*.parquet")):
            with fs.open(k, "rb") as f:
                t = pq.read_table(f, columns=["image_path", "face_index", "error", "run_id"])
            rows += t.to_pylist()
    return markers, rows


def _norm(uri: str) -> str:
    return uri.split("://", 1)[-1]


def _labeling_tasks(cluster: Cluster, job_id: str, node: str | None = None) -> list:
    """The job's labeling calls: Ray Data's MapWorker(...).submit, one per block. Not its other
    MapWorker tasks (the constructor, the get_location probe that says an actor is ready), which
    finish on a node that labeled nothing."""
    filters = [("job_id", "=", job_id)] + ([("node_id", "=", node)] if node else [])
    return [t for t in cluster.list("tasks", filters) if t.name.startswith("MapWorker") and t.name.endswith(".submit")]


def _until(cluster: Cluster, job: str, what: str, condition, timeout: float = 180):
    """Poll `condition(job_id)` until true; the job must not end meanwhile (its last reads are held)."""
    client = cluster.jobs()
    deadline = time.monotonic() + timeout
    while True:
        status = str(client.get_job_status(job).value)
        assert status not in TERMINAL, f"labeling ended ({status}) while its last reads were held back:\n" \
            + client.get_job_logs(job)[-6000:]
        job_id = client.get_job_info(job).job_id
        if job_id and condition(job_id):
            return job_id
        assert time.monotonic() < deadline, f"{what}: not after {timeout:.0f}s"
        time.sleep(0.3)


def test_labeling_survives_losing_a_worker_node_with_every_row_exactly_once(cluster, s3, job_env, trained):
    from s3faults import FaultProxy, object_get

    fs, bucket = s3
    uris = _upload_images(fs, f"{bucket}/images", 0, N_IMAGES)
    node_ids = cluster.node_ids()
    node2 = node_ids[cluster.ip["node2"]]
    argv = ["jobs/label.py", f"s3://{bucket}/images", f"s3://{bucket}/labels", "--model", trained["bundle"],
            "--batch-size", "40", "--workers", "2", "--no-progress"]
    images = object_get(f"/{bucket}/images/")
    first_held = f"/{bucket}/images/img_{N_IMAGES - N_HELD:05d}.png"

    def last(r):  # a read of one of the last N_HELD images (the keys sort as their numbers)
        return images(r) and r.path >= first_held

    with FaultProxy(cluster.s3) as proxy:
        # No image is read until the worker node's actor has taken a batch: an actor that starts
        # late would otherwise find the head's actor done with everything the gate lets through.
        # Blocks go out in order and no batch can finish meanwhile, so what node2 took comes
        # before the held images.
        gate = proxy.hold(images)
        job = submit(cluster, argv, {**job_env, "AWS_ENDPOINT_URL": proxy.url})
        _until(cluster, job, "no labeling call on the worker node",
               lambda job_id: _labeling_tasks(cluster, job_id, node2))
        gate.only(last)
        job_id = _until(cluster, job, "the worker node finished no batch",
                        lambda job_id: any(t.state == "FINISHED" for t in _labeling_tasks(cluster, job_id, node2)))
        assert not proxy.matched(last), "one of the last images was read before the node was lost"
        lost_at = time.monotonic()
        cluster.script("stop.sh", "--kill", "node2")  # SIGKILL: raylet, agents, workers, all at once
        out = cluster.script("add-node.sh")  # the replacement machine
        assert "node3" in out
        gate.release()
        logs = wait(cluster, job, timeout=240)
    recovered_s = time.monotonic() - lost_at

    nodes = {n.node_id: n for n in cluster.list("nodes")}
    assert nodes[node2].state == "DEAD"
    node3 = cluster.node_ids()[cluster.ip["node3"]]
    markers, rows = _committed(fs, bucket)
    assert len(markers) == 1, markers
    (marker,) = markers.values()
    paths = [_norm(r["image_path"]) for r in rows]
    assert sorted(paths) == sorted(_norm(u) for u in uris), "missing or duplicated rows"  # exactly once each
    assert all(r["face_index"] == 0 and r["error"] is None for r in rows)
    assert marker["objects"] == marker["rows"] == N_IMAGES and marker["error_rows"] == 0
    assert not fs.glob(f"{bucket}/labels/_staging/*/*.parquet"), "staging left after a committed run"
    # who did the work: the lost node before it died, the others (head, replacement) after
    per_node = {}
    for t in _labeling_tasks(cluster, job_id):
        if t.state == "FINISHED" and t.node_id:
            per_node[t.node_id] = per_node.get(t.node_id, 0) + 1
    names = {node2: "node2 (lost)", node3: "node3 (replacement)", node_ids[cluster.ip["head"]]: "head"}
    print(f"\nlabeled {N_IMAGES} images, batches per node {({names.get(k, k): v for k, v in per_node.items()})};"
          f" job done {recovered_s:.1f}s after losing node2; {marker.get('objects_per_second')} img/s overall;"
          f" {gate.held} reads held back")
    assert per_node.get(node2) and set(per_node) - {node2}, per_node
    assert "run " in logs


N_OWN = 24  # images the incremental test labels first when there is no committed run to build on


@pytest.fixture(scope="module")
def committed(cluster, s3, job_env, trained):
    """A committed labeling run to build on: (images prefix, labels prefix, run markers, rows).

    The fault test's run over images/ when it committed one that holds every image there exactly
    once (the default run pays no extra job); otherwise, as when that test failed or was not
    selected, one plain labeling job over N_OWN images of its own. Either way the test that uses
    it needs no other test to have passed, and fails, never skips, when labeling commits nothing."""
    fs, bucket = s3
    markers, rows = _committed(fs, bucket, "labels")
    paths = [_norm(r["image_path"]) for r in rows]
    if len(markers) == 1 and sorted(paths) == sorted(_norm(k) for k in fs.glob(f"{bucket}/images/*.png")):
        return "images", "labels", markers, rows
    uris = _upload_images(fs, f"{bucket}/own-images", 0, N_OWN)
    argv = ["jobs/label.py", f"s3://{bucket}/own-images", f"s3://{bucket}/own-labels", "--model", trained["bundle"],
            "--batch-size", "40", "--no-progress"]
    wait(cluster, submit(cluster, argv, job_env), timeout=180)
    markers, rows = _committed(fs, bucket, "own-labels")
    assert len(markers) == 1, f"the labeling job committed {len(markers)} runs: {markers}"
    assert sorted(_norm(r["image_path"]) for r in rows) == sorted(_norm(u) for u in uris)
    return "own-images", "own-labels", markers, rows


def test_incremental_run_labels_only_what_is_new(cluster, s3, job_env, trained, committed):
    fs, bucket = s3
    images, dest, before, old_rows = committed
    old = sorted(_norm(r["image_path"]) for r in old_rows)
    new = _upload_images(fs, f"{bucket}/{images}", 100000, N_NEW)
    argv = ["jobs/label.py", f"s3://{bucket}/{images}", f"s3://{bucket}/{dest}", "--model", trained["bundle"],
            "--incremental", "--batch-size", "40", "--no-progress"]
    wait(cluster, submit(cluster, argv, job_env), timeout=180)
    markers, rows = _committed(fs, bucket, dest)
    assert set(before) <= set(markers), "an earlier committed run went missing"
    (marker,) = [m for r, m in markers.items() if r not in before]
    assert marker["objects"] == N_NEW and marker["objects_skipped"] == len(old)
    mine = sorted(_norm(r["image_path"]) for r in rows if r["run_id"] == marker["run_id"])
    assert mine == sorted(_norm(u) for u in new)
    paths = [_norm(r["image_path"]) for r in rows]
    assert len(paths) == len(set(paths)) == len(old) + N_NEW  # still every image exactly once overall
    assert sorted(p for p in paths if p not in mine) == old  # the earlier rows as they were
