"""Listing and planning a labeling run as the input grows: time and driver memory per object.

    .venv/bin/python benchmarks/bench_scale.py [--n 100000,1000000] [--json OUT.json]

Writes N one-byte files (10,000 per folder) and a manifest naming them all. Then, for each size,
in a fresh process, it does what `fer-ray label` does before any image is decoded: list the
manifest (sizes and ETags, one listing per folder), drop what DEST already holds (an Arrow
anti-join against a DEST that has a committed run of the first half), and cut the rest into the
input blocks the actor pool gets. Printed per size: seconds for each step, seconds per million
objects, and the peak RSS the steps add (VmHWM of the fresh process, from before listing on).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from figures import write as write_figures  # benchmarks/figures.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The driver's steps, without importing torch (which the driver does import, but whose own
# memory would hide the listing's in a high-water mark): the blocks are built as
# label._uri_table builds them.
STEP = r"""
import json, sys, time
import pyarrow as pa
from fer_ray import runs, sources
from fer_ray.sources import key
manifest, dest = sys.argv[1], sys.argv[2]
import pyarrow.dataset, pyarrow.compute  # loaded before the baseline
def hwm():  # peak RSS of this process image in KB (ru_maxrss would include the parent's, from before exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
base = hwm()
t0 = time.perf_counter(); listing = sources.list_source(manifest); t1 = time.perf_counter()
todo = sources.not_labeled(listing, dest); t2 = time.perf_counter()
want = {key(o) for o in todo}
schema = pa.schema([("uri", pa.string()), ("size", pa.int64()), ("etag", pa.string())])
blocks = [pa.Table.from_pydict({"uri": [o.uri for o in c], "size": [int(o.size) for o in c],
                                "etag": [o.etag for o in c]}, schema=schema)
          for c in (todo[s:s + 256] for s in range(0, len(todo), 256))]; t3 = time.perf_counter()
peak = hwm()
print(json.dumps({"listed": len(listing), "todo": len(todo), "blocks": len(blocks), "list_s": t1 - t0,
                  "not_labeled_s": t2 - t1, "plan_s": t3 - t2, "peak_rss_mb_above_imports": (peak - base) / 1024}))
"""


def make_files(root: str, n: int) -> list[str]:
    paths = []
    for i in range(n):
        folder = os.path.join(root, f"part{i // 10_000:04d}")
        if i % 10_000 == 0:
            os.makedirs(folder, exist_ok=True)
        p = os.path.join(folder, f"img{i:07d}.jpg")
        with open(p, "wb") as f:
            f.write(b"x")
        paths.append(p)
    return paths


def committed_half(dest: str, paths: list[str]) -> None:
    """A DEST with one committed run that holds the first half of the objects (key columns only
    matter to the anti-join; the rest of the schema is filled with nulls)."""
    import pyarrow as pa

    from fer_ray import runs, storage
    from fer_ray.schema import LABEL_SCHEMA

    half = paths[: len(paths) // 2]
    infos = storage.list_objects(os.path.dirname(os.path.dirname(paths[0])))
    by_uri = {o.uri: o for o in infos}
    cols = {f.name: pa.nulls(len(half), f.type) for f in LABEL_SCHEMA}
    cols["image_path"] = pa.array(half, pa.string())
    cols["object_etag"] = pa.array([by_uri[p].etag for p in half], pa.string())
    cols["object_size"] = pa.array([by_uri[p].size for p in half], pa.int64())
    cols["face_index"] = pa.array([0] * len(half), pa.int32())
    cols["model_id"] = pa.array(["bench"] * len(half), pa.string())
    cols["run_id"] = pa.array(["20260101T000000Z-half"] * len(half), pa.string())
    cols["labeled_at"] = pa.array([0] * len(half), pa.timestamp("us", tz="UTC"))
    d = runs.Dest(dest)
    run_id, _ = runs.open_run(d, {"run_id": "20260101T000000Z-half"})
    with runs.StagingWriter(d, run_id) as w:
        w.write(pa.table(cols, schema=LABEL_SCHEMA))
    runs.commit(d, run_id, {"objects": len(half)})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="100000,1000000")
    ap.add_argument("--json", metavar="OUT.json")
    args = ap.parse_args()
    sys.path.insert(0, ROOT)
    sizes = sorted(int(x) for x in args.n.split(","))
    tmp = tempfile.mkdtemp(prefix="fer-bench-scale-")
    out = {"cores": os.cpu_count(), "load_before": round(os.getloadavg()[0], 2), "sizes": {}}
    try:
        t = time.perf_counter()
        paths = make_files(os.path.join(tmp, "files"), sizes[-1])
        print(f"wrote {len(paths):,} files in {time.perf_counter() - t:.0f} s; load average {os.getloadavg()[0]:.2f}")
        for n in sizes:
            manifest = os.path.join(tmp, f"manifest-{n}.txt")
            with open(manifest, "w") as f:
                f.write("\n".join(paths[:n]) + "\n")
            dest = os.path.join(tmp, f"dest-{n}")
            committed_half(dest, paths[:n])
            r = subprocess.run([sys.executable, "-c", STEP, manifest, dest], cwd=ROOT, capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(r.stderr[-2000:])
            got = json.loads(r.stdout.strip().splitlines()[-1])
            out["sizes"][n] = got
            per_m = 1e6 / n
            print(f"{n:>9,} listed: list {got['list_s']:6.1f} s ({got['list_s'] * per_m:5.1f} s per million), "
                  f"not yet labeled {got['not_labeled_s']:5.1f} s -> {got['todo']:,}, blocks {got['plan_s']:5.1f} s; "
                  f"peak RSS +{got['peak_rss_mb_above_imports']:,.0f} MB "
                  f"({got['peak_rss_mb_above_imports'] * 1024 / n:.2f} KB per object)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if len(sizes) >= 2:
        (a, ra), (b, rb) = (sizes[0], out["sizes"][sizes[0]]), (sizes[-1], out["sizes"][sizes[-1]])
        per = (rb["peak_rss_mb_above_imports"] - ra["peak_rss_mb_above_imports"]) * 1024 / (b - a)
        out["marginal_kb_per_object"] = round(per, 3)
        print(f"marginal ({a:,} -> {b:,}): {per:.2f} KB of driver memory per listed object; "
              f"load average {os.getloadavg()[0]:.2f}")
    write_figures(args.json, out)


if __name__ == "__main__":
    main()
