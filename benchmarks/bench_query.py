"""Benchmark: `fer-ray query DEST --summary` over 1,000,000 rows of labeling output.

Generates schema-exact labeling output (fer_ray.schema.LABEL_SCHEMA) as several committed runs --
staged, then committed with fer_ray.runs (the labeling job's own commit path), so the layout and
markers are the real ones -- once on local disk and once in a bucket of a moto S3 server that this
script starts on 127.0.0.1. Then times the summary (each in a fresh process, to measure its peak
RSS alone) and a few filtered queries.

    .venv/bin/python benchmarks/bench_query.py [--rows 1000000] [--runs 3] [--files-per-run 4]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fer_ray import runs as R  # noqa: E402
from fer_ray.emotions import EMOTIONS  # noqa: E402
from fer_ray.schema import error_reason  # noqa: E402
from fer_ray.schema import LABEL_SCHEMA, PROB_COLUMNS  # noqa: E402

ERROR_REASONS = ["cannot decode image: UnidentifiedImageError", "not found", "image too large (9000x9000)",
                 "empty file"]


def fake_rows(n: int, run_id: str, start: int, seed: int, model_id: str, source: str) -> pa.Table:
    """n rows that look like the labeling job's: ~1% errors, softmax probabilities, one face per image."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, len(EMOTIONS))) * 2 + np.array([0.2, -1.5, 0, 0.8, 0.3, 0.1, 0.6])
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    p = p.astype(np.float32)
    err = rng.random(n) < 0.01
    labels = np.array(EMOTIONS, dtype=object)[p.argmax(1)]
    labels[err] = None
    reasons = np.array(ERROR_REASONS, dtype=object)[rng.integers(0, len(ERROR_REASONS), n)]
    errors = np.where(err, reasons, None)
    ids = np.arange(start, start + n)
    paths = np.char.add(np.char.add(f"{source}/batch{seed % 7}/img", ids.astype(str)), ".jpg")
    now = dt.datetime.now(dt.timezone.utc)
    cols = {
        "image_path": pa.array(paths.astype(object), pa.string()),
        "face_index": pa.array(np.zeros(n, np.int32)),
        "label": pa.array(labels, pa.string()),
        "confidence": pa.array(p.max(1), pa.float32(), mask=err),
    }
    for j, c in enumerate(PROB_COLUMNS):
        cols[c] = pa.array(p[:, j], pa.float32(), mask=err)
    cols["error"] = pa.array(errors, pa.string())
    ok = ~err
    cols["box_x"] = pa.array(np.zeros(n, np.int32), mask=err)
    cols["box_y"] = pa.array(np.zeros(n, np.int32), mask=err)
    cols["box_w"] = pa.array(np.full(n, 48, np.int32), mask=err)
    cols["box_h"] = pa.array(np.full(n, 48, np.int32), mask=err)
    cols["image_width"] = pa.array(np.full(n, 48, np.int32), mask=~ok)
    cols["image_height"] = pa.array(np.full(n, 48, np.int32), mask=~ok)
    cols["object_size"] = pa.array(rng.integers(1500, 2500, n).astype(np.int64))
    cols["object_etag"] = pa.array([f"{i:032x}" for i in ids], pa.string())
    cols["model_id"] = pa.array([model_id] * n, pa.string())
    cols["run_id"] = pa.array([run_id] * n, pa.string())
    cols["labeled_at"] = pa.array(np.full(n, np.datetime64(now.replace(tzinfo=None), "us")),
                                  pa.timestamp("us", tz="UTC"))
    return pa.table(cols, schema=LABEL_SCHEMA)


def generate(dest: str, rows: int, n_runs: int, files_per_run: int, source: str = "s3://photos/in") -> list[dict]:
    """Write `rows` rows as `n_runs` committed runs of `files_per_run` files each under DEST."""
    d = R.Dest(dest)
    markers = []
    per_run = [rows // n_runs + (1 if i < rows % n_runs else 0) for i in range(n_runs)]
    start = 0
    for k, n in enumerate(per_run):
        t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=k)
        run_id = R.new_run_id(t0)
        model_id = f"fastnet-{'ab12cd34' if k < 2 else 'ef56ab78'}"
        run_id, _ = R.open_run(d, {"run_id": run_id, "source": source, "model_id": model_id,
                                   "started_at": t0.isoformat()})
        sizes = [n // files_per_run + (1 if i < n % files_per_run else 0) for i in range(files_per_run)]
        errors: dict[str, int] = {}
        for i, m in enumerate(sizes):
            t = fake_rows(m, run_id, start, seed=k * 100 + i, model_id=model_id, source=source)
            start += m
            for e in t.column("error").drop_null().to_pylist():
                r = error_reason(e)
                errors[r] = errors.get(r, 0) + 1
            path = d.path(R.STAGING_DIR, run_id, R.part_name(i))
            if d.s3:
                with d.fs.open(path, "wb") as f:
                    pq.write_table(t, f, row_group_size=128 * 1024)
            else:
                pq.write_table(t, path, row_group_size=128 * 1024)
        markers.append(R.commit(d, run_id, {
            "source": source, "model_id": model_id, "started_at": t0.isoformat(),
            "finished_at": (t0 + dt.timedelta(minutes=30)).isoformat(), "objects": n, "rows": n,
            "errors": errors,
        }))
    return markers


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds (user+sys, all threads), peak RSS MiB, stdout) of a fresh process
    running cmd. CPU seconds matter on a shared machine: wall time there includes waiting for a core."""
    code = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "dt = time.perf_counter() - t\n"
        "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'s': dt, 'cpu': r.ru_utime + r.ru_stime, 'rss': r.ru_maxrss / 1024,\n"
        "                  'rc': p.returncode, 'out': p.stdout, 'err': p.stderr}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, env=env)
    r = json.loads(res.stdout)
    if r["rc"] != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r['err']}")
    return r["s"], r["cpu"], r["rss"], r["out"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--files-per-run", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3, help="time each command this many times (best shown)")
    ap.add_argument("--keep", metavar="DIR", help="generate into DIR and keep it")
    args = ap.parse_args()

    root = args.keep or tempfile.mkdtemp(prefix="bench-query-")
    local = os.path.join(root, "labels")
    fer = [sys.executable, "-m", "fer_ray.cli"]
    print(f"rows={args.rows:,} runs={args.runs} files/run={args.files_per_run} cpus={os.cpu_count()} "
          f"python={sys.version.split()[0]} load average={os.getloadavg()[0]:.1f}")

    # ---- local
    if not os.path.exists(os.path.join(local, R.RUNS_DIR)):
        t = time.perf_counter()
        generate(local, args.rows, args.runs, args.files_per_run)
        size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(local) for f in fs)
        print(f"generated local output in {time.perf_counter() - t:.1f}s: {size / 2**20:.1f} MiB")

    cases = [
        ("summary", ["--summary"]),
        ("summary --format json", ["--summary", "--format", "json"]),
        ("filter happy>=0.9 count (sql)", ["--emotion", "happy", "--min-confidence", "0.9",
                                            "--sql", "SELECT count(*) FROM labels"]),
        ("--run latest --errors-only csv", ["--run", "latest", "--errors-only", "--format", "csv"]),
    ]

    def bench(where: str, dest: str, env=None):
        for name, extra in cases:
            best = None
            for _ in range(args.repeat):
                r = timed([*fer, "query", dest, *extra], env)
                best = r if best is None or r[0] < best[0] else best
            print(f"  {where:<6} {name:<34} {best[0]:6.2f} s wall  {best[1]:6.2f} s CPU   "
                  f"peak RSS {best[2]:5.0f} MiB", flush=True)
        return best

    print("\nlocal disk:")
    bench("local", local)
    print("\n" + timed([*fer, "query", local, "--summary"])[3])

    # ---- S3: a moto S3 server in its own process on 127.0.0.1, as a real endpoint would be
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    try:
        import s3fs

        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]},
                               key="testing", secret="testing")
        for _ in range(50):  # the server takes a moment to listen
            try:
                fs.mkdir("bench-labels")
                break
            except Exception:  # noqa: BLE001
                time.sleep(0.2)
        t = time.perf_counter()
        fs.put(local + "/", "bench-labels/out/", recursive=True)  # the same committed output, uploaded
        print(f"uploaded to the moto S3 server in {time.perf_counter() - t:.1f}s")
        print("\nS3 (moto server on 127.0.0.1, separate process):")
        bench("s3", "s3://bench-labels/out", env)
    finally:
        server.terminate()
        server.wait()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} (the machine is shared)")
    print(f"\nthis process peak RSS (generation + upload): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
