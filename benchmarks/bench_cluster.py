"""Sizing figures on the local multi-node cluster: what the README's sizing notes are based on.

    .venv/bin/python benchmarks/bench_cluster.py [--images 2000] [--train-rows 2000] [--keep]

Starts cluster/local/start.sh's cluster in a temp dir (own ports; token auth; local S3), then
submits real jobs through the job API and prints one line per measurement:
  - cluster start time, job start overhead (submit -> entrypoint running);
  - labeling throughput (objects/s from the commit marker) with one and two actors per node;
  - training wall time of one epoch with 1 vs 2 Ray Train workers (one per node);
and stops everything it started (by PID) at the end. Figures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = os.path.join(ROOT, "cluster", "local")
sys.path.insert(0, ROOT)


def free_port_block(n: int) -> int:
    import random
    import socket

    for _ in range(200):
        base = random.randrange(20000, 32000)
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free ports")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--train-rows", type=int, default=2000)
    ap.add_argument("--keep", action="store_true", help="leave the cluster running (stop it with stop.sh)")
    ap.add_argument("--only", choices=("label", "train"), help="measure only this job")
    a = ap.parse_args()

    import numpy as np
    import s3fs
    from ray.job_submission import JobSubmissionClient

    state = tempfile.mkdtemp(prefix="frm-", dir="/tmp")
    base = free_port_block(8)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(FER_CLUSTER_DIR=state, FER_PYTHON=sys.executable, FER_RAY_PORT=str(base),
               FER_RAY_DASHBOARD_PORT=str(base + 1), FER_RAY_CLIENT_PORT=str(base + 2), FER_S3_PORT=str(base + 3),
               FER_RAY_AGENT_PORT=str(base + 4))
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f} at start")
    t0 = time.monotonic()
    try:
        p = subprocess.run(["bash", os.path.join(LOCAL, "start.sh")], env=env, capture_output=True, text=True,
                           timeout=300)
        if p.returncode:
            raise SystemExit(f"start.sh failed:\n{p.stdout}\n{p.stderr}")
        print(f"cluster start (head + 1 worker node + S3): {time.monotonic() - t0:.1f} s")
        info = json.load(open(os.path.join(state, "cluster.json")))
        token = open(info["auth_token_path"]).read().strip()
        client = JobSubmissionClient(info["dashboard"], headers={"Authorization": f"Bearer {token}"})
        fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": info["s3_endpoint"]})
        bucket = f"m-{uuid.uuid4().hex[:8]}"
        fs.mkdir(bucket)
        job_env = {"AWS_ENDPOINT_URL": info["s3_endpoint"], "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

        def run(argv):
            sub = client.submit_job(entrypoint=shlex.join(["python", *argv]),
                                    runtime_env={"working_dir": ROOT, "excludes": ["tests", "benchmarks"],
                                                 "env_vars": job_env})
            t = time.monotonic()
            started = None
            while True:
                st = str(client.get_job_status(sub).value)
                if started is None and st == "RUNNING":
                    started = time.monotonic() - t
                if st in ("SUCCEEDED", "FAILED", "STOPPED"):
                    break
                time.sleep(0.5)
            if st != "SUCCEEDED":
                print(client.get_job_logs(sub)[-3000:])
                raise SystemExit(f"job {argv[0]} {st}")
            return time.monotonic() - t, started or 0.0

        if a.only == "train":
            a.images = 0
        # images for labeling, 48x48 PNGs like FER's
        import io

        from PIL import Image

        rng = np.random.default_rng(0)
        objs = {}
        for i in range(a.images):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(buf, format="PNG")
            objs[f"{bucket}/images/{i:06d}.png"] = buf.getvalue()
        t = time.monotonic()
        fs.pipe(objs)
        print(f"upload {a.images} PNGs to the local S3: {a.images / (time.monotonic() - t):.0f} objects/s")

        for workers in (2, 4) if a.only != "train" else ():  # one actor per node; two per node (half a CPU each)
            dest = f"s3://{bucket}/labels-{workers}"
            wall, start = run(["jobs/label.py", f"s3://{bucket}/images", dest, "--workers", str(workers),
                               "--batch-size", "256", "--no-progress"])
            fs.invalidate_cache()
            marker = json.loads(fs.cat(fs.glob(f"{dest[5:]}/_runs/*.json")[0]))
            print(f"label {a.images} images, --workers {workers} ({workers // 2} actor(s) per node):"
                  f" {marker['objects_per_second']} objects/s while labeling; job {wall:.1f} s wall"
                  f" (of which {start:.1f} s to start the entrypoint)")

        from fer_ray import data

        with tempfile.TemporaryDirectory() as tmp:
            for split, n in (("Training", a.train_rows), ("PublicTest", max(64, a.train_rows // 8))):
                data.write_split(tmp, split, rng.integers(0, 255, (n, 48, 48), dtype=np.uint8), rng.integers(0, 7, n))
            fs.put(os.path.join(tmp, "*.parquet"), f"{bucket}/prepared/")
        # --cpus-per-worker 1: each worker must fit on one 1-CPU node (the default, cluster CPUs /
        # workers, asks 2 CPUs of one node for --workers 1 and never gets scheduled here)
        for workers in (1, 2) if a.only != "label" else ():
            wall, start = run(["jobs/train.py", "--data", f"s3://{bucket}/prepared", "--epochs", "2",
                               "--workers", str(workers), "--cpus-per-worker", "1", "--batch-size", "128",
                               "--storage", f"s3://{bucket}/runs", "--name", f"m{workers}"])
            cfg_hist = json.loads(fs.cat(f"{bucket}/runs/m{workers}/bundle/bundle.json"))["training"]["history"]
            epoch_s = [round(h.get("time_s", 0), 1) for h in cfg_hist]
            print(f"train classic, {a.train_rows} rows x 2 epochs, --workers {workers}: epochs {epoch_s} s;"
                  f" job {wall:.1f} s wall (of which {start:.1f} s to start the entrypoint)")
    finally:
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        if not a.keep:
            subprocess.run(["bash", os.path.join(LOCAL, "stop.sh")], env=env, capture_output=True, timeout=180)
            import shutil

            shutil.rmtree(state, ignore_errors=True)
        else:
            print(f"left running: FER_CLUSTER_DIR={state} {LOCAL}/stop.sh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
