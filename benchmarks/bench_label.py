"""How fast is the labeling job, against what bounds it? One run, the same files for every figure.

    .venv/bin/python benchmarks/bench_label.py                 # 5,000 small JPEGs: (a)-(d) below
    .venv/bin/python benchmarks/bench_label.py --n 3000 --skip-s3
    .venv/bin/python benchmarks/bench_label.py --memory 10000,50000   # peak memory as the input grows
    .venv/bin/python benchmarks/bench_label.py --tune calls_per_actor=1 --workers 2

Generates N 48x48 grayscale JPEGs (face-like patterns) into a temp folder and into a local S3
server (moto, started here as its own process), then prints:
  (a) the model's forward rate alone, on pre-decoded pixels (one process, all cores' threads)
  (b) decode + preprocess alone (one process: preprocess.decode + faces, as the actors do)
  source rates: local-folder read rate; the S3 server's own GET rate (16 GETs in flight, with the
      job's fetcher; and, for reference, through s3fs's `cat`, which the job does not use)
  (c) a naive single-process loop: fetch a batch (the same fetcher), decode, predict, write Parquet
  (d) the Ray Data job (fer_ray.label.run), from the local folder and from the local S3 server
and each rate as a ratio of min(a, b, source). Job rates: end-to-end after ray.init (actor
start-up included) and steady-state (from the first finished batch on).
--memory: runs the job from a local folder of 10k and 50k images and prints peak memory (PSS,
summed over the driver and all its Ray processes, sampled every 0.2 s).
--busy K: every figure taken beside K processes that each spin a core (a shared machine); the
CPU columns leave them out.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))



TUNED: dict = {}  # --tune: LabelConfig settings every labeling run here gets


def face_crop(seed: int, size: int = 48) -> np.ndarray:
    """A 48x48 face crop framed like FER-2013: the face in matplotlib's public-domain portrait of
    Grace Hopper, moved, zoomed and lit a little differently per seed (what detection sees in a
    real collection of crops, unlike generated patterns)."""
    import matplotlib.cbook

    rng = np.random.default_rng(seed)
    img = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("L")
    x, y, w, h = 145, 99, 239, 239  # where the detector finds the face
    side = w / 0.965 * rng.uniform(0.9, 1.1)
    cx, cy = x + w / 2 + rng.uniform(-0.04, 0.04) * w, y + h / 2 + rng.uniform(-0.04, 0.04) * h
    crop = img.crop((round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)))
    arr = np.asarray(crop.resize((size, size), Image.BILINEAR), np.float32) * rng.uniform(0.7, 1.2)
    return np.clip(arr + rng.normal(0, 4, arr.shape), 0, 255).astype(np.uint8)


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(face_crop(seed)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def generate(folder: str, n: int, per_folder: int = 10_000) -> list[str]:
    names = [f"part{i // per_folder}/img{i:06d}.jpg" for i in range(n)]
    for sub in sorted({os.path.dirname(x) for x in names}):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    distinct = [jpeg(s) for s in range(min(n, 2000))]  # content varies; encoding 50k is not the point
    for i, name in enumerate(names):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(distinct[i % len(distinct)])
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto():
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


EXCLUDE: set[int] = set()  # the S3 server: its CPU is the source's, not the labeler's
TICK = os.sysconf("SC_CLK_TCK")


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    out.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(pid))
            except (OSError, ValueError, IndexError):
                pass
    return out


def tree(root: int | None = None) -> list[int]:
    children, out, todo = _children(), [], [root or os.getpid()]
    while todo:
        p = todo.pop()
        if p in EXCLUDE:
            continue
        out.append(p)
        todo.extend(children.get(p, []))
    return out


_SEEN: dict[tuple[int, int], float] = {}  # (pid, start time) -> CPU seconds when last seen
_SEEN_LOCK = threading.Lock()


def _sample() -> None:
    for pid in tree():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        with _SEEN_LOCK:
            _SEEN[(pid, int(fields[19]))] = (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def _sampler() -> None:
    # each sample reads every process's stat file: every 0.1 s that took ~7 % of a core from
    # what is measured on a 2-core machine
    while True:
        _sample()
        time.sleep(0.5)


def tree_cpu() -> float:
    """CPU seconds used so far by this process and all its descendants (Ray's processes too).
    Sampled every 0.5 s, so a process that exits is counted up to its last sample (reaped
    processes vanish from /proc, and Ray's don't show up in anyone's cutime)."""
    _sample()
    with _SEEN_LOCK:
        return sum(_SEEN.values())


threading.Thread(target=_sampler, daemon=True, name="cpu-sampler").start()


# ----------------------------------------------------------------------------- (a), (b), sources


def model_rate(blobs, threads: int, args_workers=None, batch: int = 256, seconds: float = 4.0):
    """(a): forward passes on pre-decoded pixels, chunked (and frozen, for big jobs) as the job does it."""
    import torch

    from fer_ray import label, preprocess
    from fer_ray.recognizer import Recognizer

    torch.set_num_threads(threads)
    per_actor = len(blobs) / (args_workers or os.cpu_count())
    cfg = label.LabelConfig(**TUNED)
    rec = Recognizer(freeze=per_actor >= cfg.freeze_min_images)
    b, model = rec.bundle, rec.model
    px = np.stack([preprocess.to_gray48(preprocess.decode(x)) for x in blobs[:batch]])
    chunk = cfg.forward_chunk
    with torch.inference_mode():
        model(b.inputs(px[:chunk]))
        n, c, t = 0, tree_cpu(), time.perf_counter()
        while time.perf_counter() - t < seconds:
            for s in range(0, batch, chunk):
                torch.softmax(model(b.inputs(px[s : s + chunk])), 1)
            n += batch
        wall, cpu = time.perf_counter() - t, tree_cpu() - c
    return n / wall, cpu / n * 1e6


def decode_rate(blobs, faces="crop"):
    """(b): bytes -> upright image -> framing (the job's --faces, a batch of 256 at a time, as the
    job's actors do) -> 48x48 gray pixels, one process."""
    from fer_ray import faces as faces_mod, preprocess

    c, t = tree_cpu(), time.perf_counter()
    for s in range(0, len(blobs), 256):
        faces_mod.faces_many([preprocess.decode(x) for x in blobs[s:s + 256]], faces)
    wall, cpu = time.perf_counter() - t, tree_cpu() - c
    return len(blobs) / wall, cpu / len(blobs) * 1e6


def local_read_rate(paths):
    def read(p):
        with open(p, "rb") as f:
            return f.read()

    c, t = tree_cpu(), time.perf_counter()
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(read, paths))
    wall, cpu = time.perf_counter() - t, tree_cpu() - c
    return len(paths) / wall, cpu / len(paths) * 1e6


def s3_get_rate(keys, client: str = "fetcher"):
    """The S3 server's GET rate, many requests in flight: with the job's own fetcher (botocore,
    one GetObject per object, 16 threads), or with s3fs's `cat` of 256 keys at a time."""
    from fer_ray import storage

    if client == "s3fs":
        fs = storage.filesystem("s3://x")[0]
        get = fs.cat
    else:
        fetcher = storage.Fetcher(16)
        get = lambda ks: fetcher.fetch([f"s3://{k}" for k in ks])  # noqa: E731
    get(keys[:64])  # connection warm-up
    c, t = tree_cpu(), time.perf_counter()
    for s in range(0, len(keys), 256):
        get(keys[s : s + 256])
    wall, cpu = time.perf_counter() - t, tree_cpu() - c
    return len(keys) / wall, cpu / len(keys) * 1e6


# ----------------------------------------------------------------------------- (c) naive loop


def naive_loop(uris, out_dir, threads: int, batch: int = 256):
    """What a person writes first: one process; per batch fetch, decode, predict, append to Parquet."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from fer_ray import preprocess, storage
    from fer_ray.emotions import EMOTIONS
    from fer_ray.recognizer import Recognizer
    from fer_ray.schema import LABEL_SCHEMA, PROB_COLUMNS

    torch.set_num_threads(threads)
    rec = Recognizer()
    s3 = storage.Fetcher(16) if storage.is_s3(uris[0]) else None  # the job's fetcher: same GETs
    os.makedirs(out_dir, exist_ok=True)
    c, t = tree_cpu(), time.perf_counter()
    writer = pq.ParquetWriter(os.path.join(out_dir, "part-0.parquet"), LABEL_SCHEMA, compression="zstd")
    for s in range(0, len(uris), batch):
        chunk = uris[s : s + batch]
        if s3:
            datas = s3.fetch(chunk)
        else:
            datas = []
            for u in chunk:
                with open(u, "rb") as f:
                    datas.append(f.read())
        px = np.stack([preprocess.to_gray48(preprocess.decode(x)) for x in datas])
        probs = rec.probabilities(px)
        n = len(chunk)
        cols = {f.name: pa.nulls(n, f.type) for f in LABEL_SCHEMA}
        cols.update(image_path=pa.array(chunk), face_index=pa.array([0] * n, pa.int32()),
                    label=pa.array([EMOTIONS[i] for i in probs.argmax(1)]),
                    confidence=pa.array(probs.max(1), pa.float32()),
                    model_id=pa.array([rec.bundle.model_id] * n), run_id=pa.array(["naive"] * n),
                    labeled_at=pa.array([dt.datetime.now(dt.timezone.utc)] * n, pa.timestamp("us", tz="UTC")))
        cols.update({c: pa.array(probs[:, k], pa.float32()) for k, c in enumerate(PROB_COLUMNS)})
        writer.write_table(pa.Table.from_pydict(cols, schema=LABEL_SCHEMA))
    writer.close()
    wall, cpu = time.perf_counter() - t, tree_cpu() - c
    return len(uris) / wall, cpu / len(uris) * 1e6


def naive_startup() -> float:
    """Seconds a fresh process needs before the naive loop's first image: import torch, load the model."""
    code = ("import time; t = time.perf_counter(); import torch, numpy, pyarrow.parquet; "
            "from fer_ray import bundle, preprocess; bundle.load(); print(time.perf_counter() - t)")
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    return float(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- (d) the job


def job(source, dest, args, faces="crop", on_ray=True) -> dict:
    """(d): fer_ray.label.run; CPU counted over the driver and every Ray process. on_ray=False:
    (e), the same job in this process (what small runs do)."""
    from fer_ray import label

    c = tree_cpu()
    m = label.run(source, dest, batch_size=args.batch_size, workers=args.workers if on_ray else None,
                  progress=False, echo=lambda *_: None, faces=faces, ray=on_ray, **TUNED)
    m["cpu_us_per_image"] = (tree_cpu() - c) / max(1, m["objects"]) * 1e6
    return m


class MemorySampler:
    """Peak PSS (proportional set size: shared pages split fairly, so Ray's shared-memory object
    store is not counted once per process) summed over this process and all its descendants."""

    def __init__(self):
        self.peak, self.peak_procs, self.at_peak, self._stop = 0, 0, {}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _pss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    @staticmethod
    def _name(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/cmdline") as f:
                cmd = f.read().split("\0")
        except OSError:
            return "?"
        if cmd[0].startswith("ray::"):
            return cmd[0]
        return os.path.basename(cmd[1] if len(cmd) > 1 and "python" in cmd[0] else cmd[0])[:40]

    def _run(self):
        while not self._stop.is_set():
            pids = tree()
            per = {p: self._pss(p) for p in pids}
            total = sum(per.values())
            if total > self.peak:
                self.peak, self.at_peak = total, {p: (self._name(p), v) for p, v in per.items()}
            self.peak_procs = max(self.peak_procs, len(pids))
            self._stop.wait(0.2)

    def breakdown(self, top: int = 6) -> str:
        """The biggest processes at the peak, grouped by name: 'name xN: MiB'."""
        groups: dict[str, list[int]] = {}
        for name, v in self.at_peak.values():
            groups.setdefault(name, []).append(v)
        items = sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:top]
        return ", ".join(f"{k}{' x%d' % len(v) if len(v) > 1 else ''} {sum(v) / 2**20:.0f}" for k, v in items)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


# ----------------------------------------------------------------------------- main


def ray_init(args):
    import ray

    from fer_ray import placement

    # the workers' priority as `fer-ray label` starts them (placement.LOCAL_RUNTIME_ENV), unless
    # --ray-niceness asks for Ray's own default
    env = placement.LOCAL_RUNTIME_ENV if args.ray_niceness is None else {"env_vars": {"RAY_worker_niceness": str(args.ray_niceness)}}
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             _temp_dir=os.path.join(args.tmp, "ray"), runtime_env=env)
    return ray


def start_busy(k: int) -> list:
    """k processes that spin a core each at normal priority: another user's work on a shared machine."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]


def load_avg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main_speed(args):

    tmp = args.tmp
    TUNED.update(args.tune)
    folder = os.path.join(tmp, "images")
    t, names = timed(generate, folder, args.n)
    print(f"generated {args.n} JPEGs (48x48) in {folder} in {t:.1f}s; cores={os.cpu_count()} load={load_avg()}")
    paths = [os.path.join(folder, x) for x in names]
    blobs = []
    for p in paths:
        with open(p, "rb") as f:
            blobs.append(f.read())
    res, cpu = {}, {}
    moto = None
    keys = []
    if not args.skip_s3:
        from fer_ray import storage

        moto = start_moto()
        EXCLUDE.add(moto.pid)
        fs = storage.filesystem("s3://x")[0]
        fs.mkdir("bench")
        keys = [f"bench/images/{x}" for x in names]
        t, _ = timed(lambda: [fs.pipe({k: b for k, b in zip(keys[s : s + 500], blobs[s : s + 500])})
                              for s in range(0, len(keys), 500)])
        print(f"uploaded to local S3 ({os.environ['AWS_ENDPOINT_URL']}) in {t:.1f}s ({len(keys) / t:.0f} PUT/s)")
    try:
        cpus = args.cpus
        res["a_model"], cpu["a_model"] = model_rate(blobs, cpus, args.workers)
        res["a_model_1thread"], cpu["a_model_1thread"] = model_rate(blobs, 1, args.workers)
        res["b_decode"], cpu["b_decode"] = decode_rate(blobs, args.faces[0])
        for mode in args.faces[1:]:
            res[f"b_decode_{mode}"], cpu[f"b_decode_{mode}"] = decode_rate(blobs, mode)
        res["src_local"], cpu["src_local"] = local_read_rate(paths)
        if keys:
            res["src_s3"], cpu["src_s3"] = s3_get_rate(keys)
            res["src_s3_s3fs"], cpu["src_s3_s3fs"] = s3_get_rate(keys, "s3fs")
        res["c_naive_local"], cpu["c_naive_local"] = naive_loop(paths, os.path.join(tmp, "naive-local"), cpus)
        if keys:
            res["c_naive_s3"], cpu["c_naive_s3"] = naive_loop(
                [f"s3://{k}" for k in keys], os.path.join(tmp, "naive-s3"), cpus)
        start = naive_startup()
        for k in ("c_naive_local", "c_naive_s3"):
            if k in res:
                res[k + "_e2e"] = args.n / (args.n / res[k] + start)
        print(f"single-process figures done (naive start-up {start:.1f}s); load={load_avg()}", flush=True)
        ray_init(args)
        for rep in range(args.repeat):
            todo = [("local", folder, os.path.join(tmp, f"out-local-{rep}"))]
            if keys:
                todo.append(("s3", "s3://bench/images", f"s3://bench/out-{rep}"))
            todo += [(f"local_{mode}", folder, os.path.join(tmp, f"out-local-{mode}-{rep}")) for mode in args.faces[1:]]
            todo.append(("here", folder, os.path.join(tmp, f"out-here-{rep}")))
            for name, src, dest in todo:
                m = job(src, dest, args, name.split("_")[1] if "_" in name else args.faces[0], on_ray=name != "here")
                print(f"  job {name} #{rep}: {m['objects_per_second']} img/s, steady "
                      f"{m.get('steady_objects_per_second')}, {m['cpu_us_per_image']:.0f} CPU us/img", flush=True)
                if m["objects_per_second"] > res.get(f"d_job_{name}", 0):
                    res[f"d_job_{name}"] = m["objects_per_second"]
                    res[f"d_job_{name}_steady"] = m.get("steady_objects_per_second")
                    cpu[f"d_job_{name}"] = m["cpu_us_per_image"]
    finally:
        if moto:
            moto.terminate()
    res["cpu_us_per_image"] = cpu
    report(res, args)


def report(res, args):
    cpu = res.get("cpu_us_per_image", {})
    floor_local = min(res["a_model"], res["b_decode"], res["src_local"])
    floor_s3 = min(res["a_model"], res["b_decode"], res.get("src_s3", float("inf")))
    both = args.cpus / (1 / res["a_model_1thread"] + 1 / res["b_decode"])
    rows = [
        ("(a) model forward alone, %d threads" % args.cpus, "a_model", None),
        ("(a') model forward alone, 1 thread", "a_model_1thread", None),
        ("(b) decode + preprocess alone, 1 process", "b_decode", None),
        *[(f"(b) the same with --faces {m}", f"b_decode_{m}", None) for m in args.faces[1:]],
        ("source: local folder reads (16 threads)", "src_local", None),
        ("source: local S3 server GETs (job's fetcher)", "src_s3", None),
        ("  (same GETs through s3fs cat: not used)", "src_s3_s3fs", None),
        ("(c) naive loop, local folder", "c_naive_local", floor_local),
        ("(c) naive loop, local folder, incl. start-up", "c_naive_local_e2e", floor_local),
        ("(c) naive loop, local S3", "c_naive_s3", floor_s3),
        ("(c) naive loop, local S3, incl. start-up", "c_naive_s3_e2e", floor_s3),
        ("(d) Ray job, local folder, incl. start-up", "d_job_local", floor_local),
        ("(d) Ray job, local folder, steady state", "d_job_local_steady", floor_local),
        *[row for m in args.faces[1:] for row in (
            (f"(d) Ray job, local folder, --faces {m}, incl. start-up", f"d_job_local_{m}", floor_local),
            (f"(d) Ray job, local folder, --faces {m}, steady", f"d_job_local_{m}_steady", floor_local))],
        ("(e) the job in this process, local folder", "d_job_here", floor_local),
        ("(e) the job in this process, local folder, steady", "d_job_here_steady", floor_local),
        ("(d) Ray job, local S3, incl. start-up", "d_job_s3", floor_s3),
        ("(d) Ray job, local S3, steady state", "d_job_s3_steady", floor_s3),
    ]
    print()
    print(f"N={args.n} images, batch {args.batch_size or 'as fer-ray label'}, {args.cpus} CPUs, tuning {args.tune or 'default'}, "
          f"{args.busy} busy processes beside, Ray workers' niceness {args.ray_niceness if args.ray_niceness is not None else 'as fer-ray label'}, "
          f"load now {load_avg()}")
    print(f"{'':46s} {'img/s':>7s} {'x min(a,b,src)':>14s} {'x naive':>8s} {'CPU us/img':>11s}")
    for title, k, floor in rows:
        if res.get(k) is None:
            continue
        naive = None
        if k.startswith("d_"):  # like with like: steady vs the naive loop's rate, start-up vs start-up
            naive = res.get(("c_naive_s3" if "s3" in k else "c_naive_local") + ("" if k.endswith("steady") else "_e2e"))
        ratio = f"{res[k] / floor:14.2f}" if floor else " " * 14
        vs = f"{res[k] / naive:8.2f}" if naive else " " * 8
        c = f"{cpu[k]:11.0f}" if k in cpu else ""
        print(f"{title:46s} {res[k]:7.0f} {ratio} {vs} {c}")
    print(f"min(a,b,src): local {floor_local:.0f}/s, S3 {floor_s3:.0f}/s; decode and model sharing "
          f"{args.cpus} cores, {args.cpus}/(1/a'+1/b): {both:.0f}/s")
    print("incl. start-up: job from the start of the Ray Data execution (actors start) to the last row, "
          "naive loop plus a fresh process's torch import + model load; steady state: without each actor's "
          "first batch. CPU: all processes (driver, Ray), S3 server excluded")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(res, n=args.n, batch_size=args.batch_size, busy=args.busy, ray_niceness=args.ray_niceness,
                           cpus=args.cpus, tune=args.tune, load=os.getloadavg()), f, indent=2)


def main_memory(args):
    sizes = sorted(int(x) for x in args.memory.split(","))
    folder = os.path.join(args.tmp, "images")
    t, _ = timed(generate, folder, sizes[-1])
    print(f"generated {sizes[-1]} JPEGs in {t:.1f}s (10,000 a sub-folder)")
    ray_init(args)

    TUNED.update(args.tune)
    print(f"{'images':>8s} {'peak PSS, all processes':>24s} {'processes':>9s} {'driver peak RSS':>16s} "
          f"{'img/s':>7s} {'steady img/s':>12s} {'CPU us/img':>10s}")
    done, rows = [], []
    for n in sizes:
        if n % 10_000:
            raise SystemExit("--memory sizes must be multiples of 10000")
        src = folder if n == sizes[-1] else None
        if src is None:  # a smaller input: a manifest of its first n files
            src = os.path.join(args.tmp, f"manifest-{n}.txt")
            with open(src, "w") as f:
                for i in range(n):
                    f.write(os.path.join(folder, f"part{i // 10_000}/img{i:06d}.jpg") + "\n")
        with MemorySampler() as mem:
            m = job(src, os.path.join(args.tmp, f"out-{n}"), args)
        assert m["objects"] == n, m
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        done.append((n, m["labeling_seconds"], m["cpu_us_per_image"] * n / 1e6))
        rows.append({"n": n, "peak_pss_mib": round(mem.peak / 2**20), "processes": mem.peak_procs,
                     "driver_peak_rss_mib": round(rss / 2**20), "objects_per_second": m["objects_per_second"],
                     "steady_objects_per_second": m.get("steady_objects_per_second"),
                     "cpu_us_per_image": round(m["cpu_us_per_image"]), "batch_size": m["batch_size"],
                     "at_the_peak": mem.breakdown()})
        print(f"{n:8d} {mem.peak / 2**20:20.0f} MiB {mem.peak_procs:9d} {rss / 2**20:12.0f} MiB "
              f"{m['objects_per_second']:7.0f} {m.get('steady_objects_per_second') or 0:12.0f} "
              f"{m['cpu_us_per_image']:10.0f}", flush=True)
        print(f"         at the peak (PSS MiB): {mem.breakdown()}", flush=True)
    if len(done) >= 2:
        (n1, t1, c1), (n2, t2, c2) = done[0], done[-1]
        print(f"marginal ({n1}->{n2} images, start-up cancels out): {(n2 - n1) / (t2 - t1):.0f} img/s, "
              f"{(c2 - c1) / (n2 - n1) * 1e6:.0f} CPU us/img; load now {load_avg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"memory": rows, "tune": args.tune, "cpus": args.cpus, "load": os.getloadavg()}, f, indent=2)


def parse_tune(items):
    out = {}
    for item in items or []:
        k, _, v = item.partition("=")
        out[k] = float(v) if "." in v else int(v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--faces", default="crop,auto",
                    help="labeling modes: the first for every figure, the others for (b) and the local job only")
    ap.add_argument("--batch-size", type=int, default=None, help="objects per block (default: as fer-ray label)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=1, help="job runs per source (best is printed)")
    ap.add_argument("--skip-s3", action="store_true")
    ap.add_argument("--memory", default=None, metavar="N1,N2", help="peak-memory mode, e.g. 10000,50000")
    ap.add_argument("--tune", action="append", metavar="KEY=VALUE", help="a LabelConfig tuning setting (config.py), e.g. calls_per_actor=1")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    ap.add_argument("--busy", type=int, default=0, metavar="K",
                    help="measure everything beside K processes that each spin a core at normal priority")
    ap.add_argument("--ray-niceness", type=int, default=None, metavar="N",
                    help="Ray workers' nice value (default: as fer-ray label starts a local Ray; Ray's own is 15)")
    args = ap.parse_args()
    args.tune = parse_tune(args.tune)
    args.faces = [m.strip() for m in args.faces.split(",") if m.strip()]
    args.tmp = tempfile.mkdtemp(prefix="fer-bench-")
    busy = start_busy(args.busy)
    EXCLUDE.update(p.pid for p in busy)
    try:
        main_memory(args) if args.memory else main_speed(args)
    finally:
        for p in busy:
            p.kill()
        import ray

        if ray.is_initialized():
            ray.shutdown()  # before removing its temp dir
        if not args.keep:
            shutil.rmtree(args.tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
