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

import datetime as _dt
import json
import os
import posixpath
import uuid

from . import storage

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

    # -- small fs helpers that behave the same on local disk and S3
    def ls_names(self, path: str) -> list[str]:
        try:
            entries = self.fs.ls(path, detail=False, refresh=True) if self.s3 else self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)

    def read_json(self, path: str) -> dict | None:
        try:
            with self.fs.open(path, "rb") as f:
                return json.loads(f.read().decode())
        except FileNotFoundError:
            return None
        except ValueError:
            return None

    def write_json(self, path: str, obj: dict) -> None:
        """Write whole-or-nothing: a PUT on S3; write-then-rename on local disk."""
        data = json.dumps(obj, indent=2, sort_keys=True).encode()
        if self.s3:
            self.fs.pipe_file(path, data)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:6]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def rm(self, path: str) -> None:
        try:
            if self.s3:
                self.fs.rm(path, recursive=True)
            elif os.path.isdir(path):
                import shutil

                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.remove(path)
        except FileNotFoundError:
            pass
        if self.s3:
            self.fs.invalidate_cache()


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


def staged_parts(d: Dest, run_id: str) -> list[str]:
    return [n for n in d.ls_names(d.staging(run_id)) if n.startswith(PART_PREFIX) and n.endswith(PART_SUFFIX)]


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
    d.write_json(d.marker(run_id), marker)
    d.rm(d.staging(run_id))
    if not d.s3:
        try:
            os.rmdir(d.staging())  # only when empty: nothing else is running or left over
        except OSError:
            pass
    return marker
