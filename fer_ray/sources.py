"""What a labeling run reads: the listing of a bucket prefix, local folder or manifest, and which
of its objects a destination has not labeled yet (key + ETag + size against the committed runs)."""

from __future__ import annotations

import collections
import hashlib
import os

import pyarrow as pa
import pyarrow.parquet as pq

from . import runs, storage
from .errors import FerRayError



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
    for item in items:
        item = item.removeprefix("file://")
        if not storage.is_s3(item) and not os.path.isabs(item):
            item = storage.join(base, item)  # relative entries are relative to the manifest's folder
        out.append(item if storage.is_s3(item) else _normal_path(item))
    return list(dict.fromkeys(out))  # de-duplicated, order kept


def _normal_path(path: str) -> str:
    """One spelling per local file (a/./x, a//x, ../a/x): the folder listing's, so a file listed
    twice is labeled once and `--incremental` finds it. S3 keys are left alone: a//x is a key of
    its own there."""
    path = os.path.abspath(path)
    return path[1:] if path.startswith("//") else path  # POSIX keeps a leading '//'; Linux reads '/'


def _manifest_infos(uris: list[str]) -> list[storage.ObjectInfo]:
    """Sizes and ETags for manifest entries. Entries that do not exist, or cannot be stat'ed (in a
    folder that cannot be read), are kept (size -1, etag '') and get their row when read."""
    known = _s3_infos([u for u in uris if storage.is_s3(u)])
    return [(known.get(u) or storage.ObjectInfo(u, -1, "")) if storage.is_s3(u) else storage.local_object(u)
            for u in uris]


def _s3_infos(uris: list[str]) -> dict[str, storage.ObjectInfo]:
    """S3 entries: one listing per parent prefix, not one HEAD per object (local files are stat'ed
    one by one instead: microseconds each)."""
    by_parent: dict[str, list[str]] = collections.defaultdict(list)
    for u in uris:
        by_parent[u.rsplit("/", 1)[0]].append(u)
    known: dict[str, storage.ObjectInfo] = {}
    for parent, members in by_parent.items():
        fs, root = storage.filesystem(parent)
        entries = []
        try:
            if len(members) <= 16:  # a few entries in a prefix that may hold millions: one HEAD each
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
            u = storage.to_uri(info["name"], parent)
            known[u] = storage.object_info(u, info)
    return known


def is_manifest(source: str) -> bool:
    return source.lower().endswith((".txt", ".parquet"))


def list_source(source: str, skipped=None) -> list[storage.ObjectInfo]:
    """SOURCE -> sorted ObjectInfo list. Folder/prefix: recursive listing of images and videos (by
    extension). Manifest (.txt one URI a line, or .parquet with a `uri` column): exactly its entries."""
    try:
        if is_manifest(source):
            fs, path = storage.filesystem(source)
            if not fs.isfile(path):
                raise FerRayError(f"no such source: {source}")
            return sorted(_manifest_infos(read_manifest(source)), key=lambda o: o.uri)
        return storage.list_objects(source, storage.IMAGE_EXTENSIONS + storage.VIDEO_EXTENSIONS, skipped)
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
