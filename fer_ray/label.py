"""The labeling job: a bucket (or folder, or manifest) of images -> Parquet rows, with Ray Data.

    listing (driver, once) -> Dataset of URI rows in blocks (Job.block_objects)
      -> one fused map_batches stage in an actor pool:
         fetch the batch's bytes concurrently -> decode (per-row errors) -> faces.faces
         -> one forward pass -> softmax -> rows in LABEL_SCHEMA
      -> the driver streams the result blocks into Parquet files in DEST/_staging/<run_id>/
      -> commit: files moved to DEST/run_id=<run_id>/, marker DEST/_runs/<run_id>.json last.

Every listed object yields at least one row; nothing raises out of a batch because of one object.
See runs.py for the commit protocol and what `incremental` means.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
import time

import pyarrow as pa

from . import __version__, faces as faces_mod, placement, runs, storage
from .config import LabelConfig
from .errors import FerRayError, UsageError, one_line
from .labeler import INPUT_SCHEMA, Labeler
from .sources import key, list_source, listing_digest, not_labeled
from .video import is_video

# Objects per Ray Data block, which is one labeling call in an actor (the model runs it in chunks
# of LabelConfig.forward_chunk), unless --batch-size says: about BLOCK_SECONDS of work by the
# estimates in LabelConfig, within BLOCK_OBJECTS. Each block pays Ray's hand-offs and the driver's
# Parquet writes once, so larger blocks run faster at steady state (docs/benchmarks.md, "Objects
# per block"). Photos stay at the lower bound: a block of them is long already, and it is what
# Ray redoes when an actor dies.
BLOCK_OBJECTS = (1024, 4096)
BLOCK_SECONDS = 2.5

@dataclasses.dataclass
class Job:
    """A labeling run: what (SOURCE, DEST), with which model (resolved), and how (LabelConfig)."""

    source: str
    dest: str
    model_uri: str
    model_id: str
    precision: str  # as the model loads: auto, fp32 or int8
    cfg: LabelConfig

    def uses_ray(self, todo: list) -> bool:
        if self.cfg.ray is not None:
            return self.cfg.ray
        if self.cfg.gpu or self.cfg.workers is not None or os.environ.get("RAY_ADDRESS"):
            return True  # asked for actors, or submitted to a cluster
        return self.work_seconds(todo) > self.cfg.in_process_seconds

    def block_objects(self, todo: list) -> int:
        """Objects per block: --batch-size, or about BLOCK_SECONDS of estimated work."""
        if self.cfg.batch_size:
            return self.cfg.batch_size
        each = self.work_seconds(todo) / max(1, len(todo))
        if not each:  # nothing to label
            return BLOCK_OBJECTS[0]
        return min(BLOCK_OBJECTS[1], max(BLOCK_OBJECTS[0], round(BLOCK_SECONDS / each)))

    def work_seconds(self, todo: list) -> float:
        """Estimated labeling time of these objects in this process."""
        return sum(map(self._seconds, todo)) * (10 if self.cfg.tta else 1)

    def _seconds(self, obj) -> float:
        """Estimated labeling time of one listed object in this process."""
        cfg = self.cfg
        if is_video(obj.uri):
            return cfg.seconds_per_object["video"]
        if cfg.faces == "auto" and 0 <= obj.size <= cfg.auto_crop_bytes:
            return cfg.seconds_per_auto_crop
        return cfg.seconds_per_object.get(cfg.faces, 0.01)

    def labeler_args(self, run_id: str, **placement) -> dict:
        """What a Labeler is built with: the model, the run, its settings and where it runs."""
        return dict(model_uri=self.model_uri, model_id=self.model_id, run_id=run_id, cfg=self.cfg,
                    precision=self.precision, **placement)


# ---------------------------------------------------------------------------- the driver side


def _ray_init():
    import ray

    if not ray.is_initialized():
        placement.ray_init(ray, log_to_driver=True)
    return ray


def plan_workers(ray, workers: int | None, gpu: bool, cpu_fraction: float = 0.9) -> tuple[int, float, int, float]:
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
        n = workers or max(gpus, min(int(cpus * cpu_fraction), 8 * gpus))
        share = cpus / n
        return n, max(0.01, round(min(1.0, share) * cpu_fraction, 2)), 1, int(gpus / n * 1000) / 1000
    n = workers or max(1, int(cpus))
    share = min(cpus / n, placement.largest_node_cpus(ray, cpus))
    threads = max(1, int(share))
    return n, max(0.01, round(min(float(threads), share) * cpu_fraction, 2)), threads, 0.0


def run(source, dest, config: LabelConfig | None = None, echo=None, **settings) -> dict:
    """Label every image and video under SOURCE into DEST; returns the commit marker (the run's
    summary). `config` (a LabelConfig) and/or its settings by name: `run(src, dest, faces="crop")`."""
    from . import bundle

    t0 = time.monotonic()
    say = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        cfg = dataclasses.replace(config, **settings) if config else LabelConfig(**settings)
    except TypeError as exc:  # a setting that is not in the table
        raise UsageError(f"label: {exc}") from None
    source, dest = str(source), str(dest)
    model_uri = cfg.model or bundle.default_path(cfg.gpu)
    checked = bundle.load(model_uri, gpu=cfg.gpu, precision=cfg.precision)  # validates before any work
    precision = checked.precision if checked.precision in bundle.PRECISIONS else "auto"  # ensembles: auto
    if cfg.faces != "crop":
        _check_detector(cfg.faces)
    job = Job(source, dest, model_uri, checked.model_id, precision, cfg)

    with runs.terminate_as_interrupt():
        return _run_with_lease(job, runs.Dest(dest), say, t0, checked)


def _run_with_lease(job: Job, d, say, t0, checked) -> dict:
    dest, run_id = job.dest, job.cfg.run_id
    lease = runs.Lease(d, job.cfg.lease_seconds, run=run_id or "")
    try:
        lease.acquire()  # one run at a time per DEST: two would both label what is new
    except runs.LeaseHeld as exc:
        raise FerRayError(str(exc)) from None
    except OSError as exc:
        raise FerRayError(f"cannot write to {dest}: {exc.strerror or type(exc).__name__}") from None
    except Exception as exc:  # noqa: BLE001 - S3: missing bucket, missing or refused credentials, ...
        why = storage.error_code(exc) or type(exc).__name__
        raise FerRayError(f"cannot write to {dest}: {why}") from None
    try:
        return _run_leased(job, d, lease, run_id, say, t0, checked)
    finally:
        lease.release()


def _run_leased(job: Job, d, lease, run_id, say, t0, checked) -> dict:
    not_images = collections.Counter()  # what the listing left out (neither image nor video), by extension
    listing = list_source(job.source, skipped=not_images)
    started = runs.utcnow()
    cfg = job.cfg
    todo_all = not_labeled(listing, job.dest) if cfg.incremental else listing
    info = {"run_id": run_id, "source": job.source, "dest": job.dest, "model_id": job.model_id, "faces": cfg.faces,
            "video_fps": cfg.video_fps, "started_at": started, "incremental": cfg.incremental}
    try:
        run_id, parts, staged_keys = runs.start(d, info, want={key(o) for o in todo_all})
    except ValueError as exc:
        raise FerRayError(str(exc)) from None
    except OSError as exc:  # a full disk, a read-only folder: one line, nothing left half-written
        raise FerRayError(f"cannot start a run in {job.dest}: {exc.strerror or type(exc).__name__}") from None
    todo = [o for o in todo_all if key(o) not in staged_keys]
    on_ray = bool(todo) and job.uses_ray(todo)
    per_block = job.block_objects(todo)  # objects; small runs cut theirs smaller (block_size)
    left_out = sum(not_images.values())
    say(f"fer-ray label: run {run_id}: {len(listing)} objects listed in {job.source}"
        + (f" ({left_out} left out, neither images nor videos or unreadable: {_by_ext(not_images)})"
           if left_out else "") + ", "
        f"{len(listing) - len(todo_all)} already labeled, {len(staged_keys)} resumed from staging, "
        f"{len(todo)} to label with {job.model_id}" + (" on Ray" if on_ray else " in this process" if todo else ""))

    tally = runs.Tally()
    t_label = time.monotonic()
    batches = []  # (when the batch was labeled, objects in it): for the steady-state rate
    actors = 1
    first_rows = None  # seconds from the start of the run to its first labeled rows
    if todo:
        if on_ray:
            ray = _ray_init()
            t_label = time.monotonic()
            ds, actors = build_dataset(ray, todo, job, run_id, per_block)
            tables = ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=4)
        else:
            tables = label_here(todo, job, run_id, checked, per_block)
        del checked  # an actor pool loads its own; in this process the Labeler holds it
        try:
            with runs.StagingWriter(d, run_id, first_index=runs.next_part_index(parts)) as writer:
                for table in tables:
                    if table.num_rows:
                        first_rows = first_rows or round(time.monotonic() - t0, 3)
                        writer.write(table)
                        batches.append((table.column("labeled_at")[0].value, tally.add(table)))
        except FerRayError:
            raise
        except Exception as exc:  # noqa: BLE001 - S3 that kept failing, a lost cluster, a full disk: one line
            raise FerRayError(f"run {run_id} stopped: {_why(exc)}; nothing committed "
                              f"(what is staged is kept: the next run resumes)") from exc
    labeled_s = time.monotonic() - t_label
    counts = tally.counts
    if counts["objects"] != len(todo):
        raise FerRayError(
            f"run {run_id}: {counts['objects']} objects came back for {len(todo)} sent; nothing committed "
            f"(staging kept: a re-run resumes)"
        )
    rates = {
        "first_rows_seconds": first_rows,
        "labeling_seconds": round(labeled_s, 3),
        "objects_per_second": round(len(todo) / labeled_s, 1) if todo and labeled_s > 0 else None,
        "rows_per_second": round(counts["rows"] / labeled_s, 1) if todo and labeled_s > 0 else None,
    }
    steady = steady_rate(batches, actors)
    if steady:
        rates["steady_objects_per_second"] = steady
    if staged_keys:  # add what the resumed files hold, so the marker describes the whole run
        tally.add_files(runs.staged_uris(d, run_id, parts), job.dest)
    marker = {
        "run_id": run_id, "started_at": started, "source": job.source, "dest": job.dest,
        "model_id": job.model_id, "model": cfg.model or "shipped:" + os.path.basename(job.model_uri),
        "faces": cfg.faces, "video_fps": cfg.video_fps, "precision": job.precision, "tta": cfg.tta, "ray": on_ray,
        "incremental": cfg.incremental, "objects_listed": len(listing),
        "objects_skipped": len(listing) - len(todo_all), "objects": counts["objects"], "rows": counts["rows"],
        "not_images": dict(sorted(not_images.items())),
        "videos": sum(is_video(o.uri) for o in todo), "video_frames": counts["frames"],
        "faces_labeled": counts["labeled"], "error_rows": counts["errors"], "errors": dict(sorted(tally.errors.items())),
        "resumed_objects": len(staged_keys), "listing_digest": listing_digest(listing),
        **rates,
        "batch_size": per_block, "fer_ray_version": __version__,
        "config": dict(cfg.to_dict(), run_id=run_id),  # every setting the run ran with
    }
    lease.check()
    try:
        marker = runs.commit(d, run_id, dict(marker, finished_at=runs.utcnow(),
                                             total_seconds=round(time.monotonic() - t0, 3)))
    except Exception as exc:  # noqa: BLE001 - DEST gone, unwritable, credentials revoked: one line
        raise FerRayError(_commit_failed(d, run_id, job.dest, exc)) from exc
    marker["output"] = d.uri_of(f"{runs.RUN_PREFIX}{run_id}")
    return marker


def _commit_failed(d, run_id: str, dest: str, exc: BaseException) -> str:
    """The one line for a commit that failed: true whether or not the marker made it (a write the
    store applied may have failed on the client)."""
    try:
        landed = any(m["run_id"] == run_id for m in runs.committed_runs(d.uri))
    except Exception:  # noqa: BLE001 - the store is still failing: say so
        return (f"run {run_id} could not commit to {dest}: {_why(exc)}; whether it committed, "
                f"{runs.RUNS_DIR}/{run_id}.json will tell: run again with --incremental, which labels only "
                f"what no committed run holds")
    if landed:
        return f"run {run_id} committed to {dest}, but then: {_why(exc)}"
    return (f"run {run_id} could not commit to {dest}: {_why(exc)}; nothing committed "
            f"(a marker is written last: the next run resumes or starts afresh)")


def _by_ext(counts: dict) -> str:
    return ", ".join(f"{ext} {n}" for ext, n in sorted(counts.items(), key=lambda x: (-x[1], x[0])))


def _why(exc: BaseException) -> str:
    """The first line of what stopped a run, through Ray's wrappers (a task error carries the
    actor's exception as its cause)."""
    while exc.__cause__ is not None and type(exc).__module__.startswith("ray"):
        exc = exc.__cause__
    return f"{type(exc).__name__}: {one_line(exc)}"


def steady_rate(batches, actors: int) -> float | None:
    """Objects per second once the pool is running, from the workers' own batch timestamps: the
    first batch of each actor (start-up included) is left out, the rest over the span they took."""
    batches = sorted(batches)
    if len(batches) <= actors:
        return None
    span = (batches[-1][0] - batches[actors - 1][0]) / 1e6  # labeled_at: microseconds
    done = sum(n for _, n in batches[actors:])
    return round(done / span, 1) if span > 0 else None


def _check_detector(mode: str):
    from PIL import Image

    try:
        faces_mod.detector.detect(Image.new("RGB", (64, 64)))
    except (NotImplementedError, RuntimeError, ImportError) as exc:  # e.g. faces.DetectorUnavailable
        raise FerRayError(f"--faces {mode} is not available: {exc}") from None


def _uri_table(chunk) -> pa.Table:
    return pa.Table.from_pydict(
        {"uri": [o.uri for o in chunk], "size": [int(o.size) for o in chunk], "etag": [o.etag for o in chunk]},
        schema=INPUT_SCHEMA)


def label_here(todo, job: Job, run_id: str, loaded, per_block: int):
    """The labeling stage in this process: the Labeler an actor runs, over the same batches, with
    the bundle the driver already loaded. The stages overlap: this thread fetches, decodes and
    frames the next batch while `model_threads_here` others run the model on the last ones
    (torch releases the GIL), the cores split between them. The model is the slower stage on CPUs
    without fast int8 units, so it gets every core; split, no core waits for another at each
    layer while decoding takes its turn, which beats one model thread on all of them
    (docs/benchmarks.md, "Two forward passes at once in the run's own process").
    Yields result tables in order."""
    import concurrent.futures as cf

    from .placement import available_cores

    cfg = job.cfg
    cores = available_cores()
    k = 1 if cfg.gpu else max(1, min(cfg.model_threads_here, cores))
    stage = Labeler(**job.labeler_args(run_id, threads=max(1, cores // k), forward_chunk=cfg.batch_here,
                                       loaded=loaded, overlap=k, freeze=len(todo) >= cfg.freeze_min_images))
    size = block_size(len(todo), per_block, cfg.batch_here, cfg.blocks_here)
    with cf.ThreadPoolExecutor(k, thread_name_prefix="model") as model:
        pending = collections.deque()
        for chunk in blocks(todo, size):
            prepared = stage.prepare(_uri_table(chunk))
            done = pending.popleft().result() if len(pending) >= k else None
            pending.append(model.submit(stage.finish, prepared))  # before the caller writes `done`:
            if done is not None:                                   # the model never waits on the writer
                yield done
        while pending:
            yield pending.popleft().result()


def block_size(objects: int, batch_size: int, at_least: int, count: int) -> int:
    """Objects per block: `batch_size`, but a small run is cut into at least `count` blocks (of no
    fewer than `at_least` objects): the first block's fetching and the last block's forward pass
    overlap nothing, so blocks that are large next to the run make it wait."""
    return max(1, min(batch_size, max(at_least, -(-objects // count))))


def blocks(todo: list, size: int) -> list[list]:
    """Batches of at most `size` images, and each video alone: a video is many images' work, and
    a batch of several would keep one actor busy while the others wait."""
    images = [o for o in todo if not is_video(o.uri)]
    return [images[s : s + size] for s in range(0, len(images), size)] + [[o] for o in todo if is_video(o.uri)]


def build_dataset(ray, todo, job: Job, run_id: str, per_block: int):
    """The Ray Dataset: URI rows in blocks of at most `per_block` -> the fused labeling stage.
    Returns (dataset, number of actors)."""
    import warnings

    from ray.data import ActorPoolStrategy, DataContext

    cfg = job.cfg
    DataContext.get_current().enable_progress_bars = cfg.progress
    n, cpus, threads, gpus = plan_workers(ray, cfg.workers, cfg.gpu, cfg.cpu_fraction)
    # Blocks of hundreds of URIs (no per-file read tasks), one block = one batch; small jobs get
    # smaller blocks so that every actor has work and the tail is short (>= 4 blocks per actor).
    block = block_size(len(todo), per_block, 32, 4 * n)
    tables = [_uri_table(chunk) for chunk in blocks(todo, block)]
    n = min(n, len(tables))
    # from_blocks keeps exactly these blocks and reads their metadata here; from_arrow would run
    # one remote task per block just to read it back.
    make = getattr(ray.data, "from_blocks", None) or ray.data.from_arrow
    ds = make(tables)
    remote = {}
    env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")
           if os.environ.get(k)}
    if env and os.environ.get("RAY_ADDRESS"):  # a remote cluster: tell its workers where S3 is
        remote["runtime_env"] = {"env_vars": env}
    calls = cfg.calls_per_actor
    with warnings.catch_warnings():  # max_task_retries has no named parameter (yet)
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        ds = ds.map_batches(
            Labeler,
            fn_constructor_kwargs=job.labeler_args(run_id, threads=threads,
                                                   freeze=len(todo) / n >= cfg.freeze_min_images),
            batch_size=None,  # one block, one batch: blocks() decided what goes together
            batch_format="pyarrow",
            zero_copy_batch=True,
            compute=ActorPoolStrategy(
                size=n,
                max_tasks_in_flight_per_actor=max(cfg.tasks_in_flight, calls),
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
        *([f"  videos     {m['videos']} ({m.get('video_frames')} frames sampled at {m.get('video_fps')} fps)"]
          if m.get("videos") else []),
        *([f"  left out   {sum(m['not_images'].values())} (neither images nor videos, or unreadable folders): "
           f"{_by_ext(m['not_images'])}"] if m.get("not_images") else []),
        f"  rows       {m.get('rows')} ({m.get('faces_labeled')} labeled faces, {m.get('error_rows')} error rows)",
    ]
    errs = m.get("errors") or {}
    if errs:
        lines.append("  errors     " + ", ".join(f"{r}: {c}" for r, c in sorted(errs.items(), key=lambda x: -x[1])[:8]))
        if len(errs) > 8:
            lines.append(f"             ... and {len(errs) - 8} more reasons (see {runs.RUNS_DIR}/{m['run_id']}.json)")
    if m.get("rows_per_second"):
        steady = f"; {m['steady_objects_per_second']} objects/s once started" if m.get("steady_objects_per_second") else ""
        first = f", first rows after {m['first_rows_seconds']} s" if m.get("first_rows_seconds") else ""
        lines.append(f"  speed      {m['objects_per_second']} objects/s, {m['rows_per_second']} rows/s "
                     f"({m['labeling_seconds']} s labeling, {m.get('total_seconds')} s total{first}{steady})")
    lines.append(f"  files      {len(m.get('files', []))} Parquet file(s); marker {runs.RUNS_DIR}/{m['run_id']}.json")
    return "\n".join(lines)
