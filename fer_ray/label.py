"""The labeling job: a bucket (or folder, or manifest) of images -> Parquet rows, with Ray Data.

    listing (driver, once) -> Dataset of URI rows in blocks of `batch_size`
      -> one fused map_batches stage in an actor pool:
         fetch the batch's bytes concurrently -> decode (per-row errors) -> faces.find
         -> to_gray48 -> one forward pass -> softmax -> rows in LABEL_SCHEMA
      -> the driver streams the result blocks into Parquet files in DEST/_staging/<run_id>/
      -> commit: files moved to DEST/run_id=<run_id>/, marker DEST/_runs/<run_id>.json last.

Every listed object yields at least one row; nothing raises out of a batch because of one object.
See runs.py for the commit protocol and what `incremental` means.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import datetime as _dt
import hashlib
import os
import sys
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__, faces as faces_mod, runs, storage
from .emotions import EMOTIONS
from .errors import FerRayError
from .schema import LABEL_SCHEMA, PROB_COLUMNS

INPUT_SCHEMA = pa.schema([("uri", pa.string()), ("size", pa.int64()), ("etag", pa.string())])
MAX_OBJECT_BYTES = 64 << 20  # larger objects are not fetched: one error row instead
FETCH_BYTES = 64 << 20  # at most this many bytes fetched at once per batch in flight
# Knobs measured by benchmarks/bench_label.py (see the README for the figures behind the defaults).
TUNING = {
    "calls_per_actor": 2,  # batches in flight in one actor: one fetches while the other computes
    "tasks_in_flight": 4,  # batches queued per actor by Ray Data
    "cpu_fraction": 0.9,  # share of its CPUs an actor reserves: never all of them (2-core hang)
    "forward_chunk": 64,  # images per forward call on CPU (cache-friendly activations)
    "fetch_threads": 16,  # GETs / local reads in flight per batch
    # trace + freeze the model for CPU inference: ~25% less CPU per image, but ~2-3 CPU-seconds
    # to compile in each actor, so only worth it from this many images per actor on
    "freeze_min_images": 20_000,
}
ROWS_PER_FILE = 500_000
FLUSH_SECONDS = 120.0  # a crashed run loses at most this much finished work (it resumes from the rest)


# ---------------------------------------------------------------------------- the source


def read_manifest(uri: str) -> list[str]:
    fs, path = storage.filesystem(uri)
    if uri.lower().endswith(".parquet"):
        afs, apath = storage.arrow_filesystem(uri)
        table = pq.read_table(apath, filesystem=afs)
        col = next((c for c in ("uri", "image_path", "url", "key") if c in table.column_names), None)
        if col is None:
            raise FerRayError(f"manifest {uri} has no 'uri' column (columns: {', '.join(table.column_names)})")
        items = [str(u) for u in table.column(col).to_pylist() if u]
    else:
        with fs.open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
        items = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    base = uri.rsplit("/", 1)[0] if storage.is_s3(uri) else os.path.dirname(os.path.abspath(path))
    out = []
    for item in items:  # relative entries are relative to the manifest's folder
        if storage.is_s3(item) or os.path.isabs(item) or item.startswith("file://"):
            out.append(item[len("file://"):] if item.startswith("file://") else item)
        else:
            out.append(storage.join(base, item))
    return list(dict.fromkeys(out))  # de-duplicated, order kept


def _manifest_infos(uris: list[str]) -> list[storage.ObjectInfo]:
    """Sizes and ETags for manifest entries: one listing per parent folder, not one HEAD per object.
    Entries that do not exist are kept (size -1, etag '') and become 'not found' rows."""
    by_parent: dict[str, list[str]] = collections.defaultdict(list)
    for u in uris:
        by_parent[u.rsplit("/", 1)[0] if storage.is_s3(u) else os.path.dirname(os.path.abspath(u))].append(u)
    known: dict[str, storage.ObjectInfo] = {}
    for parent, members in by_parent.items():
        fs, root = storage.filesystem(parent)
        entries = []
        try:
            if len(members) <= 16:  # a few entries in a folder that may hold millions: one HEAD each
                for u in members:
                    try:
                        entries.append(fs.info(storage.filesystem(u)[1]))
                    except FileNotFoundError:
                        pass
            else:
                entries = fs.ls(root, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        except PermissionError as exc:
            raise FerRayError(f"cannot list {parent}: access denied") from exc
        for info in entries:
            if info.get("type") == "directory":
                continue
            etag = info.get("ETag") or info.get("etag")
            if etag is None:
                etag = str(info.get("mtime_ns") or int(float(info.get("mtime", 0)) * 1e9))
            u = storage.to_uri(info["name"], parent)
            known[u] = storage.ObjectInfo(u, int(info.get("size") or 0), str(etag).strip('"'))
    return [known.get(u) or storage.ObjectInfo(u, -1, "") for u in uris]


def is_manifest(source: str) -> bool:
    return source.lower().endswith((".txt", ".parquet"))


def list_source(source: str) -> list[storage.ObjectInfo]:
    """SOURCE -> sorted ObjectInfo list. Folder/prefix: recursive listing with the image-extension
    filter. Manifest (.txt one URI a line, or .parquet with a `uri` column): exactly its entries."""
    try:
        if is_manifest(source):
            fs, path = storage.filesystem(source)
            if not fs.isfile(path):
                raise FerRayError(f"no such source: {source}")
            return sorted(_manifest_infos(read_manifest(source)), key=lambda o: o.uri)
        return storage.list_objects(source)
    except FileNotFoundError:
        raise FerRayError(f"no such source: {source}") from None
    except PermissionError:
        raise FerRayError(f"cannot read source {source}: access denied") from None
    except FerRayError:
        raise
    except Exception as exc:  # noqa: BLE001 - credentials, endpoint, network: one line, not a traceback
        raise FerRayError(f"cannot list source {source}: {type(exc).__name__}: {exc}") from None


def listing_digest(objs) -> str:
    h = hashlib.sha256()
    for o in objs:
        h.update(f"{o.uri}\t{o.etag}\t{o.size}\n".encode())
    return h.hexdigest()


def key(o) -> tuple[str, str, int]:
    return (o.uri, o.etag, int(o.size))


def not_labeled(listing, dest: str) -> list:
    """The listed objects whose (uri, etag, size) is in no committed run under DEST: an Arrow
    anti-join, so millions of labeled rows cost columns, not Python objects."""
    done = runs.labeled_table(dest)
    if not listing or done.num_rows == 0:
        return list(listing)
    keys = ["image_path", "object_etag", "object_size"]
    table = pa.table({"image_path": pa.array([o.uri for o in listing], pa.string()),
                      "object_etag": pa.array([o.etag for o in listing], pa.string()),
                      "object_size": pa.array([int(o.size) for o in listing], pa.int64()),
                      "i": pa.array(range(len(listing)), pa.int64())})
    keep = table.join(done, keys=keys, join_type="left anti").column("i").to_pylist()
    return [listing[i] for i in sorted(keep)]


# ---------------------------------------------------------------------------- the worker side


def _fetch_error(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, PermissionError):
        return "access denied"
    if isinstance(exc, IsADirectoryError):
        return "not a file"
    return f"fetch failed: {type(exc).__name__}"


class Fetcher:
    """Bytes for many URIs at once, each a plain GET, many in flight (a thread pool).

    S3 goes through one botocore client per actor (thread-safe, connection pool as large as the
    thread pool): exactly one GetObject per object. s3fs's `cat` costs about twice the server work
    per object (it sends extra requests) and ~2x the client CPU, which on a small machine that also
    runs the S3 server is the difference between S3-bound and client-bound (see the README's
    benchmark section). Failures come back as exceptions, one per URI."""

    def __init__(self, threads: int = 16):
        self.threads = max(1, int(threads))
        self.pool = cf.ThreadPoolExecutor(self.threads, thread_name_prefix="fetch")
        self._s3 = None

    @property
    def s3(self):
        if self._s3 is None:
            import botocore.config
            import botocore.session

            config = botocore.config.Config(max_pool_connections=self.threads,
                                            retries={"max_attempts": 5, "mode": "standard"})
            self._s3 = botocore.session.get_session().create_client(
                "s3", endpoint_url=storage.endpoint_url(), config=config)
        return self._s3

    @staticmethod
    def _read_local(path: str):
        try:
            with open(path, "rb") as f:
                return f.read()
        except Exception as exc:  # noqa: BLE001 - becomes an error row
            return exc

    def _get_s3(self, uri: str):
        bucket, _, key = uri.split("://", 1)[1].partition("/")
        try:
            return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:  # noqa: BLE001 - becomes an error row
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NoSuchBucket"):
                return FileNotFoundError(uri)
            if code in ("AccessDenied", "403"):
                return PermissionError(uri)
            return exc

    def fetch(self, uris: list[str]) -> list:
        jobs = [self._get_s3 if storage.is_s3(u) else self._read_local for u in uris]
        if len(uris) == 1:
            return [jobs[0](uris[0])]
        return list(self.pool.map(lambda ju: ju[0](ju[1]), zip(jobs, uris)))


class Labeler:
    """The fused stage: one instance per actor; called with a pyarrow batch of URI rows."""

    def __init__(self, model_uri, model_id, run_id, faces="crop", threads=1, gpu=False, forward_chunk=64,
                 fetch_threads=16, freeze=False, die_once=None, precision="auto"):
        import threading

        import torch

        from . import bundle

        torch.set_num_threads(max(1, int(threads)))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        self.torch = torch
        self.device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
        self.bundle = bundle.load(model_uri, gpu=gpu, precision=precision)
        self.bundle.model.to(self.device).eval()
        self.model = self.bundle.model
        if self.device.type == "cpu" and freeze and self.bundle.precision == "fp32":
            self.model = frozen(self.bundle.model, self.bundle.meta["preprocess"].get("input_size", 48))
        if self.bundle.model_id != model_id:
            raise RuntimeError(f"model changed under the run: {self.bundle.model_id} != {model_id}")
        self.model_id, self.run_id, self.faces = model_id, run_id, faces
        self.size = int(self.bundle.meta["preprocess"].get("input_size", 48))
        self.classes = self.bundle.classes
        self.chunk = forward_chunk if self.device.type == "cpu" else 1024
        self.fetcher = Fetcher(fetch_threads)
        self.compute = threading.Lock()  # batches fetch concurrently, but compute one at a time
        self.order = [self.classes.index(e) for e in EMOTIONS]  # prob_<emotion> columns whatever the bundle order
        self.die_once = die_once  # tests: the first actor to claim this file dies mid-batch

    def _crops(self, data, mode):
        """bytes -> (width, height, [(box, uint8 HxW)]) or raises DecodeError/ValueError."""
        from .preprocess import decode, to_gray48

        img = decode(data)
        width, height = img.size
        boxes = faces_mod.find(img, mode)
        crops = []
        for box in boxes:
            x, y, w, h = (int(v) for v in box)
            face = img if (x, y, w, h) == (0, 0, width, height) else img.crop((x, y, x + w, y + h))
            crops.append(((x, y, w, h), to_gray48(face, self.size)))
        return width, height, crops

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.die_once and _claim(self.die_once):
            os._exit(1)
        uris = batch.column("uri").to_pylist()
        sizes = batch.column("size").to_pylist()
        etags = batch.column("etag").to_pylist()
        rows = [(i, 0, None, None, None, None, f"file too large ({s} bytes)")
                for i, s in enumerate(sizes) if s > MAX_OBJECT_BYTES]
        probs = [np.full((len(rows), len(EMOTIONS)), np.nan, np.float32)]
        for group in _byte_groups([i for i, s in enumerate(sizes) if s <= MAX_OBJECT_BYTES], sizes):
            datas = self.fetcher.fetch([uris[i] for i in group])  # concurrent; no lock held
            with self.compute:
                r, p = self._label(list(zip(group, datas)))
            rows += r
            probs.append(p)
            del datas
        return self._table(rows, np.concatenate(probs), uris, sizes, etags)

    def _label(self, items):
        """[(object index, bytes or exception)] -> (rows, probs): rows are (object index,
        face_index, box, width, height, pixels, error); probs (rows, 7) with NaN for error rows."""
        from .preprocess import DecodeError

        rows = []
        for i, data in items:
            if isinstance(data, BaseException):
                rows.append((i, 0, None, None, None, None, _fetch_error(data)))
                continue
            try:
                width, height, crops = self._crops(data, self.faces)
            except DecodeError as exc:
                rows.append((i, 0, None, None, None, None, str(exc) or "cannot decode image"))
                continue
            except Exception as exc:  # noqa: BLE001 - any per-object failure is a row, never a crash
                rows.append((i, 0, None, None, None, None, f"cannot process image: {type(exc).__name__}"))
                continue
            if not crops:
                rows.append((i, 0, None, width, height, None, "no face detected"))
            for j, (box, px) in enumerate(crops):
                rows.append((i, j, box, width, height, px, None))
        good = [k for k, r in enumerate(rows) if r[5] is not None]
        probs = np.full((len(rows), len(EMOTIONS)), np.nan, np.float32)
        if good:
            px = np.stack([rows[k][5] for k in good])
            out = []
            with self.torch.inference_mode():
                for s in range(0, len(px), self.chunk):
                    x = self.bundle.inputs(px[s : s + self.chunk]).to(self.device)
                    out.append(self.torch.softmax(self.model(x).float(), dim=1).cpu().numpy())
            probs[good] = np.concatenate(out)[:, self.order]
        return rows, probs

    def _table(self, rows, probs, uris, sizes, etags) -> pa.Table:
        n = len(rows)
        ok = np.array([r[5] is not None for r in rows], bool)
        best = np.where(ok, probs.argmax(1) if n else 0, -1)
        labels = [EMOTIONS[b] if b >= 0 else None for b in best]
        conf = np.where(ok, probs.max(1) if n else 0, np.nan).astype(np.float32)
        box = [r[2] for r in rows]
        now = _dt.datetime.now(_dt.timezone.utc)
        mask = ~ok
        cols = {
            "image_path": [uris[r[0]] for r in rows],
            "face_index": pa.array([r[1] for r in rows], pa.int32()),
            "label": pa.array(labels, pa.string()),
            "confidence": pa.array(conf, pa.float32(), mask=mask),
            **{c: pa.array(probs[:, k], pa.float32(), mask=mask) for k, c in enumerate(PROB_COLUMNS)},
            "error": pa.array([r[6] for r in rows], pa.string()),
            "box_x": pa.array([b[0] if b else None for b in box], pa.int32()),
            "box_y": pa.array([b[1] if b else None for b in box], pa.int32()),
            "box_w": pa.array([b[2] if b else None for b in box], pa.int32()),
            "box_h": pa.array([b[3] if b else None for b in box], pa.int32()),
            "image_width": pa.array([r[3] for r in rows], pa.int32()),
            "image_height": pa.array([r[4] for r in rows], pa.int32()),
            "object_size": pa.array([sizes[r[0]] for r in rows], pa.int64()),
            "object_etag": pa.array([etags[r[0]] for r in rows], pa.string()),
            "model_id": pa.array([self.model_id] * n, pa.string()),
            "run_id": pa.array([self.run_id] * n, pa.string()),
            "labeled_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        }
        return pa.Table.from_pydict(cols, schema=LABEL_SCHEMA)


def frozen(model, size: int = 48):
    """The model traced, frozen and optimised for CPU inference by TorchScript (fused conv+ReLU,
    oneDNN layouts): ~1.3x less CPU per image for the small CNNs here. Falls back to the eager model unless the
    frozen one gives the same probabilities on a test batch."""
    import torch

    try:
        x = torch.randn(8, 1, size, size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            f = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x[:4])))
            ok = torch.allclose(torch.softmax(f(x), 1), torch.softmax(model(x), 1), atol=1e-4)
        return f if ok else model
    except Exception:  # noqa: BLE001 - any tracing problem: the eager model is always correct
        return model


def _byte_groups(indices: list[int], sizes: list[int], budget: int | None = None) -> list[list[int]]:
    """Split a batch so that one fetch holds at most `budget` bytes (by listed size): a batch of
    big photos never sits in memory whole; a batch of small crops stays one concurrent fetch."""
    budget = budget or FETCH_BYTES
    groups, cur, total = [], [], 0
    for i in indices:
        size = max(0, sizes[i])
        if cur and total + size > budget:
            groups.append(cur)
            cur, total = [], 0
        cur.append(i)
        total += size
    return groups + [cur] if cur else groups


def _claim(path: str) -> bool:
    try:
        os.rename(path, f"{path}.claimed")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------- the driver side


def error_reason(error: str) -> str:
    """Group error strings for the summary: 'image too large (9000x9000)' -> 'image too large'."""
    return error.split(" (", 1)[0]


class StagingWriter:
    """Streams result tables into part files of DEST/_staging/<run_id>/, one fixed schema.
    A file becomes visible only complete: an S3 multipart upload completes on close; a local
    file is written under a temporary name and renamed."""

    def __init__(self, d: runs.Dest, run_id: str, first_index: int = 0,
                 rows_per_file: int | None = None, flush_seconds: float | None = None):
        self.d, self.run_id = d, run_id
        self.afs, _ = storage.arrow_filesystem(d.uri)
        self.index = first_index
        self.rows_per_file = rows_per_file or ROWS_PER_FILE
        self.flush_seconds = flush_seconds or FLUSH_SECONDS
        self.writer = None
        self.files: list[str] = []

    def _open(self):
        final = self.d.path(runs.STAGING_DIR, self.run_id, runs.part_name(self.index))
        self.index += 1
        if self.d.s3:
            self.target, self.tmp = final, final
        else:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            self.target, self.tmp = final, f"{final}.tmp-{uuid.uuid4().hex[:6]}"
        self.writer = pq.ParquetWriter(self.tmp, LABEL_SCHEMA, filesystem=self.afs, compression="zstd")
        self.rows, self.opened = 0, time.monotonic()

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self._open()
        self.writer.write_table(table)
        self.rows += table.num_rows
        if self.rows >= self.rows_per_file or time.monotonic() - self.opened >= self.flush_seconds:
            self.close()

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        if self.tmp != self.target:
            os.replace(self.tmp, self.target)
        self.files.append(self.target)


def _ray_init():
    import ray

    if not ray.is_initialized():
        # RAY_ADDRESS (set by `ray job submit`, or `auto` for a running cluster) wins; otherwise a
        # private local Ray, never some other cluster that happens to run on this machine.
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", log_to_driver=True,
                 include_dashboard=False if not os.environ.get("RAY_ADDRESS") else None)
    return ray


def plan_workers(ray, workers: int | None, gpu: bool) -> tuple[int, float, int, float]:
    """(actors, CPUs reserved per actor, torch threads per actor, GPUs per actor).

    One actor per CPU core, each running torch with one thread (two small models side by side
    beat one model with two threads, and decode in one actor overlaps the forward in the other).
    Reservations are fractional (0.9 of a share) so the cluster never has all its CPUs held by
    the pool: a pool that holds every CPU starves Ray's own tasks and can hang on 2 cores."""
    res = ray.cluster_resources()
    cpus = float(res.get("CPU", 1)) or 1.0
    if gpu:
        # Decoding is CPU work and the fused stage does it in the actor: several actors share each
        # GPU (fractional GPUs) so decoding spreads over the CPU cores; a small CNN needs little
        # GPU memory per actor.
        gpus = int(res.get("GPU", 0))
        if gpus < 1:
            raise FerRayError("--gpu given but the Ray cluster has no GPU")
        n = workers or max(gpus, min(int(cpus * TUNING["cpu_fraction"]), 8 * gpus))
        share = cpus / n
        return n, max(0.01, round(min(1.0, share) * TUNING["cpu_fraction"], 2)), 1, int(gpus / n * 1000) / 1000
    n = workers or max(1, int(cpus))
    # An actor must fit on one node: never reserve more than the largest node's CPUs.
    largest = max((nd["Resources"].get("CPU", 0) for nd in ray.nodes() if nd["Alive"]), default=cpus)
    share = min(cpus / n, largest)
    threads = max(1, int(share))
    return n, max(0.01, round(min(float(threads), share) * TUNING["cpu_fraction"], 2)), threads, 0.0


def run(source, dest, model=None, faces="crop", incremental=False, batch_size=256, workers=None,
        gpu=False, run_id=None, progress=True, echo=None, precision="auto") -> dict:
    """Label every image under SOURCE into DEST; returns the commit marker (the run's summary)."""
    from . import bundle

    t0 = time.monotonic()
    say = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    source, dest = str(source), str(dest)
    if faces not in faces_mod.MODES:
        raise FerRayError(f"unknown faces mode {faces!r} (choose from {', '.join(faces_mod.MODES)})")
    if batch_size < 1 or (workers is not None and workers < 1):
        raise FerRayError("batch size and workers must be >= 1")
    if run_id is not None:
        try:
            runs.check_run_id(run_id)
        except ValueError as exc:
            raise FerRayError(str(exc)) from None
    if precision not in bundle.PRECISIONS:
        raise FerRayError(f"precision must be one of {', '.join(bundle.PRECISIONS)}, got {precision!r}")
    model_uri = model or bundle.default_path(gpu)
    checked = bundle.load(model_uri, gpu=gpu, precision=precision)  # validates before any work
    meta, precision = checked.meta, checked.precision  # what CPU (or GPU) actors will run
    del checked  # the driver keeps no model
    model_id = meta["model_id"]
    if faces == "detect":
        _check_detector()

    listing = list_source(source)
    started = runs.utcnow()
    d = runs.Dest(dest)
    todo_all = not_labeled(listing, dest) if incremental else listing
    want = {key(o) for o in todo_all}
    staged_keys: set = set()

    def resume_if(prev, parts):
        nonlocal staged_keys
        if (prev.get("source"), prev.get("model_id"), prev.get("faces")) != (source, model_id, faces):
            return False
        paths = [d.uri_of(f"{runs.STAGING_DIR}/{prev['run_id']}/{p}") for p in parts]
        try:
            got = runs.read_keys(paths, dest)
        except Exception:  # noqa: BLE001 - unreadable staging: start afresh
            return False
        if not got <= want:  # staged work that this run would not do (changed objects): start afresh
            return False
        staged_keys = got
        return True

    info = {"run_id": run_id, "source": source, "dest": dest, "model_id": model_id, "faces": faces,
            "started_at": started, "incremental": incremental}
    try:
        run_id, parts = runs.open_run(d, info, resume_if)
    except ValueError as exc:
        raise FerRayError(str(exc)) from None
    if not parts:
        staged_keys = set()
    todo = [o for o in todo_all if key(o) not in staged_keys]
    say(f"fer-ray label: run {run_id}: {len(listing)} objects listed in {source}, "
        f"{len(listing) - len(todo_all)} already labeled, {len(staged_keys)} resumed from staging, "
        f"{len(todo)} to label with {model_id}")

    counts = collections.Counter()
    errors = collections.Counter()
    writer = StagingWriter(d, run_id, first_index=len(parts))
    t_label = time.monotonic()
    batches = []  # (when the batch was labeled, objects in it): for the steady-state rate
    actors = 1
    if todo:
        ray = _ray_init()
        t_label = time.monotonic()
        ds, actors = build_dataset(ray, todo, model_uri, model_id, run_id, faces, batch_size, workers, gpu, precision,
                                   progress)
        try:
            for table in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=4):
                if table.num_rows == 0:
                    continue
                table = table.cast(LABEL_SCHEMA) if table.schema != LABEL_SCHEMA else table
                writer.write(table)
                before = counts["objects"]
                _count(table, counts, errors)
                batches.append((table.column("labeled_at")[0].value, counts["objects"] - before))
                if _TEST_HOOK:
                    _TEST_HOOK(writer)
        finally:
            writer.close()
    labeled_s = time.monotonic() - t_label
    if counts["objects"] != len(todo):
        raise FerRayError(
            f"run {run_id}: {counts['objects']} objects came back for {len(todo)} sent; nothing committed "
            f"(staging kept: a re-run resumes)"
        )
    rates = {
        "labeling_seconds": round(labeled_s, 3),
        "objects_per_second": round(len(todo) / labeled_s, 1) if todo and labeled_s > 0 else None,
        "rows_per_second": round(counts["rows"] / labeled_s, 1) if todo and labeled_s > 0 else None,
    }
    steady = steady_rate(batches, actors)
    if steady:
        rates["steady_objects_per_second"] = steady
    if staged_keys:  # add what the resumed files hold, so the marker describes the whole run
        _count_files([d.uri_of(f"{runs.STAGING_DIR}/{run_id}/{p}") for p in parts], dest, counts, errors)
    marker = {
        "run_id": run_id, "started_at": started, "source": source, "dest": dest,
        "model_id": model_id, "model": model or "shipped:" + os.path.basename(model_uri), "faces": faces,
        "precision": precision,
        "incremental": incremental, "objects_listed": len(listing),
        "objects_skipped": len(listing) - len(todo_all), "objects": counts["objects"], "rows": counts["rows"],
        "faces_labeled": counts["labeled"], "error_rows": counts["errors"], "errors": dict(sorted(errors.items())),
        "resumed_objects": len(staged_keys), "listing_digest": listing_digest(listing),
        **rates,
        "batch_size": batch_size, "fer_ray_version": __version__,
    }
    marker = runs.commit(d, run_id, dict(marker, finished_at=runs.utcnow(),
                                         total_seconds=round(time.monotonic() - t0, 3)))
    marker["output"] = d.uri_of(f"{runs.RUN_PREFIX}{run_id}")
    return marker


def steady_rate(batches, actors: int) -> float | None:
    """Objects per second once the pool is running, from the workers' own batch timestamps: the
    first batch of each actor (start-up included) is left out, the rest over the span they took."""
    batches = sorted(batches)
    if len(batches) <= actors:
        return None
    span = (batches[-1][0] - batches[actors - 1][0]) / 1e6  # labeled_at: microseconds
    done = sum(n for _, n in batches[actors:])
    return round(done / span, 1) if span > 0 else None


_TEST_HOOK = None  # tests: called with the StagingWriter after each written block (to simulate crashes)
_ACTOR_TEST_KWARGS: dict = {}  # tests: extra Labeler constructor arguments (die_once=...)


def _check_detector():
    from PIL import Image

    try:
        faces_mod.find(Image.new("RGB", (64, 64)), "detect")
    except (NotImplementedError, RuntimeError, ImportError) as exc:  # e.g. faces.DetectorUnavailable
        raise FerRayError(f"--faces detect is not available: {exc}") from None


def _count(table: pa.Table, counts, errors) -> None:
    import pyarrow.compute as pc

    counts["rows"] += table.num_rows
    counts["objects"] += pc.sum(pc.equal(table.column("face_index"), 0)).as_py() or 0
    err = table.column("error")
    n_err = table.num_rows - err.null_count
    counts["errors"] += n_err
    counts["labeled"] += table.num_rows - n_err
    if n_err:
        for e in err.drop_null().to_pylist():
            errors[error_reason(e)] += 1


def _count_files(paths, like, counts, errors) -> None:
    import pyarrow.dataset as pads

    afs, _ = storage.arrow_filesystem(like)
    t = pads.dataset([storage.arrow_filesystem(p)[1] for p in paths], format="parquet", filesystem=afs)
    _count(t.to_table(columns=["face_index", "error"]), counts, errors)


def build_dataset(ray, todo, model_uri, model_id, run_id, faces, batch_size, workers, gpu, precision, progress):
    """The Ray Dataset: URI rows in blocks of `batch_size` -> the fused labeling stage.
    Returns (dataset, number of actors)."""
    import warnings

    from ray.data import ActorPoolStrategy, DataContext

    DataContext.get_current().enable_progress_bars = bool(progress)
    n, cpus, threads, gpus = plan_workers(ray, workers, gpu)
    # Blocks of hundreds of URIs (no per-file read tasks), one block = one batch; small jobs get
    # smaller blocks so that every actor has work and the tail is short (>= 4 blocks per actor).
    block = max(1, min(batch_size, max(32, -(-len(todo) // (4 * n)))))
    n = min(n, -(-len(todo) // block))
    tables = []
    for s in range(0, len(todo), block):
        chunk = todo[s : s + block]
        tables.append(pa.Table.from_pydict(
            {"uri": [o.uri for o in chunk], "size": [int(o.size) for o in chunk], "etag": [o.etag for o in chunk]},
            schema=INPUT_SCHEMA))
    # from_blocks keeps exactly these blocks and reads their metadata here; from_arrow would run
    # one remote task per block just to read it back.
    make = getattr(ray.data, "from_blocks", None) or ray.data.from_arrow
    ds = make(tables)
    remote = {}
    env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")
           if os.environ.get(k)}
    if env and os.environ.get("RAY_ADDRESS"):  # a remote cluster: tell its workers where S3 is
        remote["runtime_env"] = {"env_vars": env}
    calls = int(TUNING["calls_per_actor"])
    with warnings.catch_warnings():  # max_task_retries has no named parameter (yet)
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        ds = ds.map_batches(
            Labeler,
            fn_constructor_kwargs=dict(model_uri=model_uri, model_id=model_id, run_id=run_id, faces=faces,
                                       threads=threads, gpu=gpu, precision=precision,
                                       forward_chunk=int(TUNING["forward_chunk"]),
                                       fetch_threads=int(TUNING["fetch_threads"]),
                                       freeze=len(todo) / n >= TUNING["freeze_min_images"], **_ACTOR_TEST_KWARGS),
            batch_size=block,
            batch_format="pyarrow",
            zero_copy_batch=True,
            compute=ActorPoolStrategy(
                size=n,
                max_tasks_in_flight_per_actor=max(int(TUNING["tasks_in_flight"]), calls),
                max_concurrent_calls_per_actor=calls,
                enable_true_multi_threading=calls > 1,
            ),
            num_cpus=cpus,
            num_gpus=gpus or None,
            # an actor that dies is restarted and its batch retried -- but not forever: an object
            # that kills the process every time (a decoder crash) fails the run instead of looping
            max_task_retries=3,
            **remote,
        )
    return ds, n


def summary_text(m: dict) -> str:
    lines = [
        f"run {m['run_id']}  committed  ({m.get('model_id')}, faces={m.get('faces')})",
        f"  source     {m.get('source')}",
        f"  output     {m.get('output') or m.get('dest')}",
        f"  objects    {m.get('objects_listed')} listed, {m.get('objects_skipped')} already labeled, "
        f"{m.get('objects')} labeled in this run" + (f" ({m['resumed_objects']} resumed)" if m.get("resumed_objects") else ""),
        f"  rows       {m.get('rows')} ({m.get('faces_labeled')} labeled faces, {m.get('error_rows')} error rows)",
    ]
    errs = m.get("errors") or {}
    if errs:
        lines.append("  errors     " + ", ".join(f"{r}: {c}" for r, c in sorted(errs.items(), key=lambda x: -x[1])[:8]))
        if len(errs) > 8:
            lines.append(f"             ... and {len(errs) - 8} more reasons (see {runs.RUNS_DIR}/{m['run_id']}.json)")
    if m.get("rows_per_second"):
        steady = f"; {m['steady_objects_per_second']} objects/s once started" if m.get("steady_objects_per_second") else ""
        lines.append(f"  speed      {m['objects_per_second']} objects/s, {m['rows_per_second']} rows/s "
                     f"({m['labeling_seconds']} s labeling, {m.get('total_seconds')} s total{steady})")
    lines.append(f"  files      {len(m.get('files', []))} Parquet file(s); marker {runs.RUNS_DIR}/{m['run_id']}.json")
    return "\n".join(lines)

