"""Labeling runs: ids, staging, commit markers, and what has already been labeled.

Layout under a DEST (local folder or s3:// prefix):

    DEST/_staging/<run_id>/_run.json       a run in progress (what it labels, with which model)
    DEST/_staging/<run_id>/part-NNNNN.parquet   its finished output files so far
    DEST/run_id=<run_id>/part-NNNNN.parquet     a run's output, copied there at commit
    DEST/_runs/<run_id>.json               the commit marker, written LAST

A run exists for readers only once its marker exists; the marker lists the run's files, so a
reader that takes `committed_files(dest)` never sees half a run (a crash during the copy
leaves an unlisted `run_id=` folder that the next run removes). The incremental state --
which (image_path, object_etag, object_size) are already labeled -- is read back from the
committed files themselves, so it cannot disagree with them.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import json
import os
import posixpath
import time
import uuid

from . import storage
from .schema import LABEL_SCHEMA, error_reason

RUNS_DIR = "_runs"
STAGING_DIR = "_staging"
RUN_PREFIX = "run_id="
IN_PROGRESS = "_run.json"
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"


# ---------------------------------------------------------------- ids and paths


def new_run_id(now: _dt.datetime | None = None) -> str:
    """Sortable by start time: 20261121T091500Z-3fa2c1."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def check_run_id(run_id: str) -> str:
    ok = run_id and all(c.isalnum() or c in "-_." for c in run_id) and not run_id.startswith((".", "_"))
    if not ok:
        raise ValueError(f"bad run id {run_id!r}: use letters, digits, '-', '_' and '.'")
    return run_id


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class Dest:
    """A DEST location: fsspec filesystem + root path inside it, and the layout above."""

    def __init__(self, uri: str):
        self.uri = str(uri).rstrip("/") if storage.is_s3(uri) else str(uri)
        self.fs, self.root = storage.filesystem(self.uri)
        self.s3 = storage.is_s3(self.uri)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts) if self.s3 else os.path.join(self.root, *parts)

    def uri_of(self, rel: str) -> str:
        """URI (s3://... or local absolute path) of a path relative to DEST."""
        return storage.to_uri(self.path(rel), self.uri)

    def runs_dir(self) -> str:
        return self.path(RUNS_DIR)

    def marker(self, run_id: str) -> str:
        return self.path(RUNS_DIR, f"{run_id}.json")

    def staging(self, run_id: str = "") -> str:
        return self.path(STAGING_DIR, run_id) if run_id else self.path(STAGING_DIR)

    def run_dir(self, run_id: str) -> str:
        return self.path(f"{RUN_PREFIX}{run_id}")

    # -- files under DEST, through the one storage layer (paths as `path()` gives them)
    def ls_names(self, path: str) -> list[str]:
        return storage.ls_names(storage.to_uri(path, self.uri))

    def read_json(self, path: str) -> dict | None:
        return storage.read_json(storage.to_uri(path, self.uri))

    def write_json(self, path: str, obj: dict) -> None:
        """Whole or nothing: a PUT on S3; write-then-rename on local disk."""
        storage.write_json(storage.to_uri(path, self.uri), obj)

    def rm(self, path: str) -> None:
        storage.remove(storage.to_uri(path, self.uri))


# ---------------------------------------------------------------- readers' view


def committed_runs(dest: str) -> list[dict]:
    """The commit markers under DEST, oldest first (by finish time, then run id)."""
    d = Dest(dest)
    markers = []
    for name in d.ls_names(d.runs_dir()):
        if not name.endswith(".json"):
            continue
        m = d.read_json(d.path(RUNS_DIR, name))
        if isinstance(m, dict) and m.get("run_id") == name[: -len(".json")]:
            markers.append(m)
    return sorted(markers, key=lambda m: (m.get("finished_at") or "", m["run_id"]))


def committed_files(dest: str, run_ids: list[str] | None = None) -> list[str]:
    """URIs of every Parquet file of every committed run (or of the given runs), in run order.
    Local DEST -> absolute paths; s3 DEST -> s3:// URIs."""
    d = Dest(dest)
    out = []
    for m in committed_runs(dest):
        if run_ids is not None and m["run_id"] not in run_ids:
            continue
        out.extend(d.uri_of(rel) for rel in m.get("files", []))
    return out


KEY_COLUMNS = ["image_path", "object_etag", "object_size"]


def labeled_table(dest: str):
    """The distinct (image_path, object_etag, object_size) of every object in a committed run, as
    an Arrow table: the incremental state, read back from the committed files themselves."""
    return _key_table(committed_files(dest), dest)


def labeled_keys(dest: str) -> set[tuple[str, str, int]]:
    """labeled_table as a set of tuples."""
    return _as_set(labeled_table(dest))


def read_keys(files: list[str], like: str) -> set[tuple[str, str, int]]:
    return _as_set(_key_table(files, like))


def _key_table(files: list[str], like: str):
    import pyarrow as pa
    import pyarrow.dataset as pads

    if not files:
        return pa.table({"image_path": pa.array([], pa.string()), "object_etag": pa.array([], pa.string()),
                         "object_size": pa.array([], pa.int64())})
    afs, _ = storage.arrow_filesystem(like)
    paths = [storage.arrow_filesystem(f)[1] for f in files]
    table = pads.dataset(paths, format="parquet", filesystem=afs).to_table(columns=KEY_COLUMNS)
    return table.group_by(KEY_COLUMNS).aggregate([])


def _as_set(table) -> set[tuple[str, str, int]]:
    cols = [table.column(c).to_pylist() for c in KEY_COLUMNS]
    return {(p, e or "", int(s or 0)) for p, e, s in zip(*cols)}


# ---------------------------------------------------------------- writers' side


def part_name(index: int) -> str:
    return f"{PART_PREFIX}{index:05d}{PART_SUFFIX}"


def next_part_index(parts: list[str]) -> int:
    """The index a run's next part file takes: after the highest staged one, not after their
    count (a crash during a local commit moves away some parts and leaves the others)."""
    return 1 + max((int(p[len(PART_PREFIX):-len(PART_SUFFIX)]) for p in parts), default=-1)


def staged_parts(d: Dest, run_id: str) -> list[str]:
    return [n for n in d.ls_names(d.staging(run_id)) if n.startswith(PART_PREFIX) and n.endswith(PART_SUFFIX)]


def staged_uris(d: Dest, run_id: str, parts: list[str]) -> list[str]:
    return [d.uri_of(f"{STAGING_DIR}/{run_id}/{p}") for p in parts]


# What must match for a staged run to be resumed rather than started afresh.
RESUME_KEYS = ("source", "model_id", "faces", "video_fps")


def start(d: Dest, info: dict, want: set) -> tuple[str, list[str], set]:
    """open_run with the labeling rule for resuming: a staged run is resumed when it labels the
    same source with the same model, faces mode and video sampling rate, and every object it staged is still `want`ed
    (an object changed since would be labeled twice). Returns (run_id, staged part names, the
    keys of the objects those parts hold)."""
    staged: set = set()

    def resume_if(prev: dict, parts: list[str]) -> bool:
        nonlocal staged
        if any(prev.get(k) != info.get(k) for k in RESUME_KEYS):
            return False
        try:
            got = read_keys(staged_uris(d, prev["run_id"], parts), d.uri)
        except Exception:  # noqa: BLE001 - unreadable staging: start afresh
            return False
        if not got <= want:
            return False
        staged = got
        return True

    run_id, parts = open_run(d, info, resume_if)
    return run_id, parts, staged if parts else set()


def open_run(d: Dest, info: dict, resume_if=None) -> tuple[str, list[str]]:
    """Clean up after crashed runs and start (or resume) one.

    Uncommitted `run_id=` folders are removed. A staging folder whose run has a marker is
    leftover cleanup and removed. Of the other staging folders, the newest one for which
    `resume_if(its _run.json, its staged part names)` is true is resumed: its finished files are
    kept and its run id reused; all others are removed. Returns (run_id, staged part names)."""
    committed = {m["run_id"] for m in committed_runs(d.uri)}
    wanted = info.get("run_id")
    if wanted in committed:
        raise ValueError(f"run {wanted} is already committed in {d.uri}: choose another run id")
    for name in d.ls_names(d.root):
        if name.startswith(RUN_PREFIX) and name[len(RUN_PREFIX) :] not in committed:
            d.rm(d.path(name))
    resumed, parts = None, []
    for name in reversed(d.ls_names(d.staging())):
        if name in committed:
            d.rm(d.staging(name))
            continue
        prev = d.read_json(d.path(STAGING_DIR, name, IN_PROGRESS))
        staged = staged_parts(d, name)
        if resumed is None and prev and (wanted in (None, name)) and resume_if and resume_if(prev, staged):
            resumed, parts = name, staged
            continue
        d.rm(d.staging(name))
    run_id = resumed or wanted or new_run_id()
    info = dict(info, run_id=run_id)
    if resumed:
        prev = d.read_json(d.path(STAGING_DIR, run_id, IN_PROGRESS)) or {}
        info["started_at"] = prev.get("started_at", info.get("started_at"))
        info["resumed_at"] = utcnow()
    d.write_json(d.path(STAGING_DIR, run_id, IN_PROGRESS), info)
    return run_id, parts


def commit(d: Dest, run_id: str, marker: dict) -> dict:
    """Move the staged parts to run_id=<run_id>/, then write the marker (last), then drop staging."""
    parts = staged_parts(d, run_id)
    target = d.run_dir(run_id)
    if not d.s3:
        os.makedirs(target, exist_ok=True)
    for name in parts:
        src, dst = d.path(STAGING_DIR, run_id, name), d.path(f"{RUN_PREFIX}{run_id}", name)
        if d.s3:
            d.fs.copy(src, dst)  # server-side copy; staging is removed after the marker
        else:
            os.replace(src, dst)
    marker = dict(marker, run_id=run_id, files=[f"{RUN_PREFIX}{run_id}/{n}" for n in parts])
    marker.setdefault("finished_at", utcnow())
    try:
        d.write_json(d.marker(run_id), marker)
    except Exception:
        if not _marker_written(d, run_id, marker):  # else: the PUT was applied, only its reply was lost
            raise
    # From here the run is committed: what is left of its staging, the next run removes (open_run)
    with contextlib.suppress(Exception):
        d.rm(d.staging(run_id))
    if not d.s3:
        try:
            os.rmdir(d.staging())  # only when empty: nothing else is running or left over
        except OSError:
            pass
    return marker


def _marker_written(d: Dest, run_id: str, marker: dict) -> bool:
    """Whether DEST holds exactly this marker (a write that failed on the client may have been
    applied by the store)."""
    try:
        return d.read_json(d.marker(run_id)) == json.loads(json.dumps(marker))
    except Exception:  # noqa: BLE001 - cannot tell: the caller says so
        return False


ROWS_PER_FILE = 500_000
FLUSH_SECONDS = 120.0  # a crashed run loses at most this much finished work (it resumes from the rest)


class StagingWriter:
    """Streams result tables into part files of DEST/_staging/<run_id>/, one fixed schema.
    A file becomes visible only complete: an S3 multipart upload completes on close; a local
    file is written under a temporary name and renamed."""

    def __init__(self, d: Dest, run_id: str, first_index: int = 0, schema=LABEL_SCHEMA,
                 rows_per_file: int | None = None, flush_seconds: float | None = None):
        self.d, self.run_id, self.schema = d, run_id, schema
        self.afs, _ = storage.arrow_filesystem(d.uri)
        self.index = first_index
        self.rows_per_file = rows_per_file or ROWS_PER_FILE
        self.flush_seconds = flush_seconds or FLUSH_SECONDS
        self.writer = None
        self.files: list[str] = []

    def _open(self):
        import pyarrow.parquet as pq

        final = self.d.path(STAGING_DIR, self.run_id, part_name(self.index))
        self.index += 1
        if self.d.s3:
            self.target, self.tmp = final, final
        else:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            self.target, self.tmp = final, f"{final}.tmp-{uuid.uuid4().hex[:6]}"
        self.writer = pq.ParquetWriter(self.tmp, self.schema, filesystem=self.afs, compression="zstd")
        self.rows, self.opened = 0, time.monotonic()

    def write(self, table) -> None:
        if self.writer is None:
            self._open()
        try:
            self.writer.write_table(table if table.schema == self.schema else table.cast(self.schema))
        except BaseException:  # a part cut mid-batch is never kept: its objects are labeled again
            self.abandon()
            raise
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

    def abandon(self) -> None:
        """After a failed write (a full disk): drop the part being written, keep the finished ones."""
        writer, self.writer = self.writer, None
        with contextlib.suppress(Exception):
            writer and writer.close()
        if writer is not None and self.tmp != self.target:
            with contextlib.suppress(OSError):
                os.remove(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        try:
            self.close()  # the finished batches of a run that stopped are kept: the next run resumes
        except BaseException:
            self.abandon()
            if exc_type is None:
                raise
        return False


class Tally:
    """What a run's rows hold: objects, rows, labeled faces, error rows, errors by reason and
    sampled video frames. An object's first row has face_index 0 and, for a video, frame_index 0
    (or null). The commit marker is written from it."""

    def __init__(self):
        self.counts = collections.Counter()
        self.errors = collections.Counter()

    def add(self, table) -> int:
        """Counts one table of rows; returns the objects in it."""
        import pyarrow.compute as pc

        first_face = pc.equal(table.column("face_index"), 0)
        frame = table.column("frame_index")
        objects = pc.sum(pc.and_(first_face, pc.equal(pc.fill_null(frame, 0), 0))).as_py() or 0
        frames = pc.sum(pc.and_(first_face, pc.and_(pc.is_valid(frame), pc.is_null(table.column("error"))))).as_py()
        err = table.column("error")
        n_err = table.num_rows - err.null_count
        self.counts.update(rows=table.num_rows, objects=objects, errors=n_err,
                           labeled=table.num_rows - table.column("label").null_count, frames=frames or 0)
        for e in err.drop_null().to_pylist() if n_err else ():
            self.errors[error_reason(e)] += 1
        return objects

    def add_files(self, uris: list[str], like: str) -> None:
        import pyarrow.dataset as pads

        afs, _ = storage.arrow_filesystem(like)
        t = pads.dataset([storage.arrow_filesystem(u)[1] for u in uris], schema=LABEL_SCHEMA, format="parquet",
                         filesystem=afs)
        self.add(t.to_table(columns=["face_index", "frame_index", "error", "label"]))


# ---------------------------------------------------------------- one writer at a time

LEASE_FILE = "_lease.json"


class LeaseHeld(RuntimeError):
    """Another run holds DEST's lease; the message says whose and until when."""


class Lease:
    """One labeling run at a time per DEST: DEST/_lease.json names its owner and an expiry.

    Taking it is atomic (storage.create_if_absent: a hard link on local disk, a conditional PUT on
    S3), and so is taking over a lease past its expiry (its run crashed) or one whose holder's
    process is gone from this host (storage.replace_if_unchanged), so of two runs that find it
    stale only one wins. While the run goes on, a thread renews it every ttl/3 seconds; a run that
    can no longer renew (its lease was taken over) stops before committing. Released at the end.
    The lease never talks to the disk or S3 itself: storage.py does, the same way for both."""

    def __init__(self, d: Dest, ttl: float = 300.0, run: str = ""):
        import socket

        self.d, self.ttl = d, float(ttl)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.run = run
        self.uri = d.uri_of(LEASE_FILE)
        self._stop = None
        self.lost = False

    def _body(self) -> bytes:
        import time

        return json.dumps({"owner": self.owner, "run": self.run, "expires": time.time() + self.ttl,
                           "written_at": utcnow()}).encode()

    def _read(self) -> tuple[dict | None, str | None]:
        """(lease content, its version), or (None, None) when there is none."""
        data, version = storage.read_versioned(self.uri)
        return (None, None) if data is None else (_json_or_empty(data), version)

    # -- the protocol
    def acquire(self) -> "Lease":
        import time

        for _ in range(3):
            if storage.create_if_absent(self.uri, self._body()):
                break
            held, etag = self._read()
            if held is None:
                continue  # released meanwhile: try again
            if held.get("owner") == self.owner:
                break  # our own write, applied by the store, its reply lost and the retry refused
            if float(held.get("expires", 0)) > time.time() and not _holder_gone(held):
                left = float(held["expires"]) - time.time()
                raise LeaseHeld(f"{self.d.uri} is being labeled by another run ({held.get('run') or 'unknown'} "
                                f"on {held.get('owner', '?')}, lease expires in {left:.0f} s)")
            if storage.replace_if_unchanged(self.uri, self._body(), etag):
                break
        else:
            raise LeaseHeld(f"{self.d.uri}: could not take the labeling lease (other runs keep taking it)")
        self._start_renewing()
        return self

    def _start_renewing(self) -> None:
        import threading

        self._stop = threading.Event()
        self._renewing = threading.Lock()

        def renew():
            while not self._stop.wait(self.ttl / 3):
                with self._renewing:
                    if self._stop.is_set():
                        return
                    try:
                        held, etag = self._read()
                        if not held or held.get("owner") != self.owner:
                            self.lost = True
                            return
                        storage.replace_if_unchanged(self.uri, self._body(), etag)
                        if self._stop.is_set():  # released while this renewal was in flight
                            self._delete_if_ours()
                            return
                    except Exception:  # noqa: BLE001 - a failed renewal is retried; expiry is far off
                        continue

        threading.Thread(target=renew, name="fer-ray-lease", daemon=True).start()

    def check(self) -> None:
        """Raise when the lease was lost (taken over after it expired): do not commit then."""
        if self.lost:
            raise LeaseHeld(f"{self.d.uri}: this run's lease expired and another run took it; nothing committed")

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            # A renewal in flight (retrying through an S3 outage, say) would write the lease back
            # after it was released: let it finish first (for at most a renewal period; past
            # that, it deletes what it wrote itself).
            if self._renewing.acquire(timeout=self.ttl / 3):
                self._renewing.release()
        self._delete_if_ours()

    def _delete_if_ours(self) -> None:
        try:
            held, _ = self._read()
            if held and held.get("owner") == self.owner:
                storage.remove(self.uri)
        except Exception:  # noqa: BLE001 - an unreleased lease expires by itself
            pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def _holder_gone(held: dict) -> bool:
    """Whether the lease's holder ran on this host and its process no longer exists (killed
    without a chance to release): then there is no need to wait for the lease to expire."""
    import socket

    host, _, rest = str(held.get("owner", "")).partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, but another user's
        return False
    return False


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM (what `kill`, schedulers and container runtimes send) raises SystemExit(143) in the
    main thread, like Ctrl-C raises KeyboardInterrupt, so that `finally` blocks run and the lease
    is released; Python's default would end the process on the spot."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _json_or_empty(data: bytes) -> dict:
    try:
        value = json.loads(data.decode())
        return value if isinstance(value, dict) else {}
    except ValueError:
        return {}  # a torn or foreign file: treated as expired
