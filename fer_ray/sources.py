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
            u = storage.to_uri(info["name"], parent)
            known[u] = storage.object_info(u, info)
    return [known.get(u) or storage.ObjectInfo(u, -1, "") for u in uris]


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
