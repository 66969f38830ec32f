"""`fer-ray label` from the command line, end to end, against a plain single-process loop.

    .venv/bin/python benchmarks/bench_startup.py [--n 1,500,5000] [--repeat 3] [--faces crop] [--json OUT.json]

For each N, N 48x48 JPEG face crops are written to a temporary folder; then each contender runs
in a fresh process, imports included, as a user would start it:

  naive    a plain script: import torch, load the same bundle, Pillow-decode each file to 48x48
           grayscale, the model in batches of 256, one Parquet file of labels and probabilities
  cli      fer-ray label SRC DEST --faces crop   (small runs label in its own process)
  cli-ray  the same with --ray                    (always a Ray actor pool)

Printed per contender: wall seconds from process start to exit (median of --repeat), CPU seconds
of the process and the children it waited for (Ray's own daemons are not waited for, so cli-ray's
CPU is a lower bound), the seconds until the CLI says what it will label (imports, model check,
listing and lease done), the seconds until its first labeled rows (from the run's marker), and
the ratio naive / contender (> 1: faster than the plain loop).
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from figures import write as write_figures  # noqa: E402  (benchmarks/figures.py)

NAIVE = r"""
import os, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, torch
from PIL import Image
from fer_ray import bundle
from fer_ray.emotions import EMOTIONS
src, out = sys.argv[1], sys.argv[2]
torch.set_num_threads(os.cpu_count())
b = bundle.load("fast")
paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs if f.endswith(".jpg"))
probs = []
for s in range(0, len(paths), 256):
    px = np.stack([np.asarray(Image.open(p).convert("L").resize((48, 48), Image.BILINEAR)) for p in paths[s:s + 256]])
    with torch.inference_mode():
        probs.append(torch.softmax(b.model(b.inputs(px)), 1).numpy())
p = np.concatenate(probs)
cols = {"image_path": paths, "label": [EMOTIONS[i] for i in p.argmax(1)], "confidence": p.max(1)}
cols.update({f"prob_{e}": p[:, k] for k, e in enumerate(EMOTIONS)})
pq.write_table(pa.table(cols), out)
"""


def first_rows_s(dest: str, started: float) -> float | None:
    """Seconds from `started` (epoch) to the run's first labeled rows, from its commit marker:
    the run began total_seconds before finished_at, and its first rows came first_rows_seconds in."""
    found = glob.glob(os.path.join(dest, "_runs", "*.json"))
    if not found:
        return None
    with open(found[0]) as f:
        m = json.load(f)
    if not m.get("first_rows_seconds"):
        return None
    end = dt.datetime.fromisoformat(m["finished_at"].replace("Z", "+00:00")).timestamp()
    return end - m["total_seconds"] + m["first_rows_seconds"] - started


def run_once(argv: list[str], ready_text: str | None = None, dest: str | None = None) -> dict:
    """Wall and CPU seconds of one fresh process; seconds until `ready_text` shows on stderr; for
    a labeling run into `dest`, seconds until its first rows."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    ready, tail = None, []
    for line in proc.stderr:
        tail = (tail + [line])[-5:]
        if ready is None and ready_text and ready_text in line:
            ready = time.perf_counter() - t0
    if proc.wait() != 0:
        raise SystemExit(f"{argv[:3]} failed:\n{''.join(tail)}")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "ready_s": ready, "first_rows_s": first_rows_s(dest, started) if dest else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="1,500,5000", help="input sizes, comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--faces", default="crop", help="the CLI's --faces (the naive loop never detects)")
    ap.add_argument("--contenders", default="naive,cli,cli-ray")
    ap.add_argument("--json", metavar="OUT.json")
    args = ap.parse_args()
    from bench_label import generate  # the same 48x48 face crops as bench_label.py

    python = sys.executable
    fer_ray = os.path.join(os.path.dirname(python), "fer-ray")
    tmp = tempfile.mkdtemp(prefix="fer-bench-startup-")
    out = {"cores": os.cpu_count(), "load_before": round(os.getloadavg()[0], 2), "faces": args.faces, "sizes": {}}
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; --faces {args.faces}; "
          f"median of {args.repeat} fresh processes each")
    try:
        for n in (int(x) for x in args.n.split(",")):
            src = os.path.join(tmp, f"in-{n}")
            generate(src, n)
            rows = {}
            for name in args.contenders.split(","):
                runs = []
                for k in range(args.repeat):
                    dest = os.path.join(tmp, f"out-{n}-{name}-{k}")
                    if name == "naive":
                        argv, ready = [python, "-c", NAIVE, src, dest + ".parquet"], None
                    else:
                        argv = [fer_ray, "label", src, dest, "--faces", args.faces, "--no-progress"]
                        argv += ["--ray"] if name == "cli-ray" else []
                        ready = "to label with"
                    runs.append(run_once(argv, ready, None if name == "naive" else dest))
                    shutil.rmtree(dest, ignore_errors=True)
                med = {k: statistics.median(r[k] for r in runs) if runs[0][k] is not None else None
                       for k in ("wall_s", "cpu_s", "ready_s", "first_rows_s")}
                rows[name] = med
                ratio = rows["naive"]["wall_s"] / med["wall_s"] if "naive" in rows else float("nan")
                ready = f"{med['ready_s']:5.1f}" if med["ready_s"] is not None else "    -"
                first = f"{med['first_rows_s']:5.1f}" if med["first_rows_s"] is not None else "    -"
                walls = ", ".join(f"{r['wall_s']:.1f}" for r in runs)
                print(f"n={n:6d} {name:8s} wall {med['wall_s']:6.1f} s  cpu {med['cpu_s']:6.1f} s  "
                      f"ready {ready} s  first rows {first} s  naive/this x{ratio:.2f}  ({walls})", flush=True)
            out["sizes"][n] = rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_figures(args.json, out)


if __name__ == "__main__":
    main()
