"""The one storage layer: local paths, file:// and s3:// (AWS or any S3-compatible endpoint).

Every module reads and writes files through here: exists, read/write bytes and JSON (whole or
nothing), put a local folder, remove, list objects with their ETag. Filesystems are built once
per root: fsspec caches its S3 filesystem per settings, the pyarrow one is cached below.

S3 settings come from the standard AWS chain: AWS_ENDPOINT_URL (for MinIO, moto, Ceph...),
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, profiles or instance roles.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import heapq
import json
import os
import posixpath
import shutil
import stat
import tempfile
import uuid
from dataclasses import dataclass

import fsspec

from .errors import FerRayError

RETRIES = 8  # attempts per S3 request (botocore and pyarrow clients), with exponential backoff
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
# Images larger than this are never read whole (one error row instead). Checked at listing and
# again while reading: a file may grow after it was listed.
MAX_OBJECT_BYTES = 64 << 20


def is_s3(uri: str) -> bool:
    return str(uri).startswith(("s3://", "s3a://"))


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_client(pool: int = 10):
    """A plain botocore S3 client (thread-safe) for what fsspec does not offer: one GetObject per
    object, conditional writes. Standard retries: 503 SlowDown, 500 and resets are retried."""
    import botocore.config
    from botocore.session import get_session

    config = botocore.config.Config(max_pool_connections=pool, retries={"max_attempts": RETRIES, "mode": "standard"})
    return get_session().create_client("s3", endpoint_url=endpoint_url(), config=config)


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key)."""
    bucket, _, key = str(uri).split("://", 1)[1].partition("/")
    return bucket, key


class UnsupportedURI(FerRayError, ValueError):
    """A URI of a scheme fer-ray does not read (http://, gs://, ...): said as such, not 'not found'."""


def check_uri(uri: str) -> str:
    """`uri` if it is a local path, file:// or s3://; else UnsupportedURI naming its scheme."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme and scheme not in ("s3", "file") and scheme.isascii() and scheme.replace("+", "").isalnum():
        raise UnsupportedURI(f"{uri}: {scheme}:// is not supported (local paths and s3:// URIs are): download it first")
    return uri


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path within it). s3 paths come back as 'bucket/key'."""
    uri = check_uri(str(uri))
    if is_s3(uri):
        import s3fs

        kwargs = {"config_kwargs": {"retries": {"max_attempts": RETRIES, "mode": "standard"}}}
        if endpoint_url():
            kwargs["client_kwargs"] = {"endpoint_url": endpoint_url()}
        fs = s3fs.S3FileSystem(**kwargs, **_env_credentials())
        return fs, uri.split("://", 1)[1].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return fsspec.filesystem("file"), os.path.abspath(uri)


def arrow_filesystem(uri: str):
    """(pyarrow filesystem, path) for pyarrow datasets and Ray Data readers/writers."""
    import pyarrow.fs as pafs

    uri = str(uri)
    if is_s3(uri):
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        return (_arrow_s3(endpoint_url(), region, RETRIES, **_env_credentials()),
                uri.split("://", 1)[1].rstrip("/"))
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def _env_credentials() -> dict:
    """Credentials set in the environment, passed explicitly: filesystems are cached, and a key
    rotated in the environment (after one was revoked) must give a new filesystem, not the old
    one. Without them in the environment the usual chain (profiles, roles) applies."""
    env = {"key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY", "token": "AWS_SESSION_TOKEN"}
    got = {k: os.environ[v] for k, v in env.items() if os.environ.get(v)}
    return got if "key" in got and "secret" in got else {}


@functools.lru_cache(maxsize=8)
def _arrow_s3(endpoint: str | None, region: str | None, retries: int, key=None, secret=None, token=None):
    """One pyarrow S3 filesystem per endpoint, region and credentials (building one resolves
    credentials)."""
    import pyarrow.fs as pafs

    # throttling (503 SlowDown), 5xx and broken connections are retried, as botocore's clients do
    kwargs = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=retries)}
    if key:
        kwargs.update(access_key=key, secret_key=secret, session_token=token)
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host, scheme=scheme or "https")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def to_uri(fs_path: str, like: str) -> str:
    """Turn a path from `filesystem(like)` back into a URI of the same kind as `like`."""
    return f"s3://{fs_path}" if is_s3(like) else fs_path


def sha256_file(path: str) -> str:
    """Hex sha256 of a local file, read in chunks (sources of hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def join(uri: str, *parts: str) -> str:
    if is_s3(uri):
        return posixpath.join(str(uri).rstrip("/"), *parts)
    return os.path.join(uri, *parts)


# ---------------------------------------------------------------- whole files


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    """The whole object; FileNotFoundError when there is none."""
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Whole or nothing: one PUT on S3; on local disk a temporary file, fsync, rename."""
    fs, path = filesystem(uri)
    if is_s3(uri):
        fs.pipe_file(path, data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _aside(path, data) as tmp:
        os.replace(tmp, path)


@contextlib.contextmanager
def _aside(path: str, data: bytes):
    """`data` in a new file beside `path`, on disk (fsync), for the caller to move into place;
    removed on the way out if it is still there (a full disk, a size limit, a failed condition):
    nothing half-written is left behind."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:6]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


# -- conditional writes: what a lease needs (runs.Lease), the same on local disk and S3. A version
# is the S3 ETag, or on local disk a digest of the content.

# What S3 (and compatibles) answer when a condition does not hold, or a write raced another
_CONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey")


def read_versioned(uri: str) -> tuple[bytes | None, str | None]:
    """(content, version), or (None, None) when there is no such object."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            r = _small_client().get_object(Bucket=bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            if error_code(exc) in ("NoSuchKey", "404"):
                return None, None
            raise
        return r["Body"].read(), r["ETag"]
    try:
        with open(filesystem(uri)[1], "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, None
    return data, hashlib.sha256(data).hexdigest()


def create_if_absent(uri: str, data: bytes) -> bool:
    """Write `data` only if nothing is there; False when something was. Never shows a half-written
    object: on S3 a PUT with If-None-Match: *, on local disk a file written aside and hard-linked
    into place (the link appears with its content or not at all)."""
    if is_s3(uri):
        return _put_if(uri, data, IfNoneMatch="*")
    path = filesystem(uri)[1]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _aside(path, data) as tmp:
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: exclusive create, then write
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True


def replace_if_unchanged(uri: str, data: bytes, version: str) -> bool:
    """Replace the object with `data` only if it is still at `version` (read_versioned); False when
    it changed or is gone. S3: a PUT with If-Match; local disk: compare and replace under an flock
    (released by the kernel if the process dies), the new content renamed into place."""
    if is_s3(uri):
        return _put_if(uri, data, IfMatch=version)
    import fcntl

    path = filesystem(uri)[1]
    with open(f"{path}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if read_versioned(uri)[1] != version:
            return False
        with _aside(path, data) as tmp:
            os.replace(tmp, path)
        return True


def _small_client():
    """A client for the occasional conditional write, one per endpoint and credentials in the
    environment (a lease renews every few minutes: a new client each time would cost more)."""
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    return _client_for(endpoint_url(), tuple(os.environ.get(k) for k in keys))


@functools.lru_cache(maxsize=8)
def _client_for(endpoint, credentials):
    return s3_client(2)


def _put_if(uri: str, data: bytes, **condition) -> bool:
    bucket, key = split_s3(uri)
    try:
        _small_client().put_object(Bucket=bucket, Key=key, Body=data, **condition)
        return True
    except Exception as exc:  # noqa: BLE001
        if error_code(exc) in _CONDITION_FAILED:
            return False
        raise


def read_json(uri: str) -> dict | None:
    """The JSON object stored at `uri`; None when there is none or it is not a JSON object."""
    try:
        value = json.loads(read_bytes(uri).decode())
    except (FileNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(uri: str, obj) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode())


def put_folder(local: str, uri: str) -> None:
    """Copy a local folder (sub-folders included) to a local path or an s3:// prefix."""
    fs, path = filesystem(uri)
    if not is_s3(uri):
        shutil.copytree(local, path, dirs_exist_ok=True)
        return
    for folder, _, names in os.walk(local):
        rel = os.path.relpath(folder, local)
        for name in sorted(names):
            fs.put_file(os.path.join(folder, name), posixpath.normpath(posixpath.join(path, rel, name)))


def remove(uri: str) -> None:
    """A file or a folder/prefix with everything under it; nothing when it does not exist."""
    fs, path = filesystem(uri)
    try:
        if not is_s3(uri):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.remove(path)
            return
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
    finally:
        if is_s3(uri):
            fs.invalidate_cache()


def ls_names(uri: str) -> list[str]:
    """Names directly under a folder/prefix, sorted; [] when it does not exist. Fresh on S3."""
    fs, path = filesystem(uri)
    try:
        entries = fs.ls(path, detail=False, refresh=True) if is_s3(uri) else fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)


# ---------------------------------------------------------------- many objects at once


class TransientError(OSError):
    """The store kept failing (throttling, 5xx, broken connections) after its retries: not a
    property of the object, so no error row is written for it; the run stops and a re-run resumes."""


# What S3 (and compatibles) answer when the failure is theirs, not the object's
TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                   "ServiceUnavailable", "RequestTimeTooSkewed", "503", "500"}


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError ('' for anything else)."""
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def fetch_error(exc: BaseException) -> str:
    """Why an object could not be fetched, in the words of an error row."""
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, PermissionError):
        return "access denied"
    if isinstance(exc, IsADirectoryError):
        return "not a file"
    if isinstance(exc, (TooLarge, NotAFile)):
        return str(exc)
    return f"fetch failed: {type(exc).__name__}"


class TooLarge(OSError):
    """An object over the read limit: its error row says so."""


class NotAFile(OSError):
    """A FIFO, device or socket: never read (a FIFO blocks forever, /dev/zero never ends)."""


def read_local(path: str, limit: int = MAX_OBJECT_BYTES) -> bytes:
    """A regular file's bytes, at most `limit` of them (TooLarge beyond that); anything that is not
    a regular file raises NotAFile without a byte read. O_NONBLOCK: opening a FIFO must not wait
    for a writer."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if "\\x" not in path:
            raise
        fd = os.open(raw_path(path), flags)  # a name printable_path escaped: the file's own name
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(mode):
            raise NotAFile("not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"file too large (over {limit} bytes)")
    return data


class Fetcher:
    """Bytes for many URIs at once, each a plain GET, many in flight (a thread pool): how every
    consumer (labeling actors, `predict`, report thumbnails) reads images.

    S3 goes through one botocore client per fetcher (thread-safe, connection pool as large as the
    thread pool): exactly one GetObject per object. s3fs's `cat` sends extra requests per object,
    more work for the server and more client CPU, which on a small machine that also runs the S3
    server is the difference between S3-bound and client-bound (docs/benchmarks.md, "Local folder
    and local S3, Intel Xeon"). Failures come back as exceptions, one per URI."""

    def __init__(self, threads: int = 16):
        self.threads = max(1, int(threads))
        self.pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="fetch")
        self._s3 = None

    @property
    def s3(self):
        if self._s3 is None:
            self._s3 = s3_client(self.threads)
        return self._s3

    @staticmethod
    def _read_local(path: str):
        try:
            return read_local(path)
        except Exception as exc:  # noqa: BLE001 - becomes an error row
            return exc

    def _get_s3(self, uri: str, attempts: int = 3, sink: str | None = None):
        """The object's bytes (or, given `sink`, the path of a local file it was streamed into),
        or the exception that is its error row; a TransientError when the store kept failing
        (botocore retries each request; a body cut off mid-read is retried here, botocore does not)."""
        bucket, key = split_s3(uri)
        for attempt in range(attempts):
            try:
                body = self.s3.get_object(Bucket=bucket, Key=key)["Body"]
                if sink is None:
                    data = body.read(MAX_OBJECT_BYTES + 1)
                    if len(data) > MAX_OBJECT_BYTES:
                        body.close()
                        return TooLarge(f"file too large (over {MAX_OBJECT_BYTES} bytes)")
                    return data
                with open(sink, "wb") as f:
                    for chunk in body.iter_chunks(1 << 20):
                        f.write(chunk)
                return sink
            except Exception as exc:  # noqa: BLE001 - sorted below
                code = error_code(exc)
                if code in ("NoSuchKey", "404", "NoSuchBucket"):
                    return FileNotFoundError(uri)
                if code in ("AccessDenied", "403"):
                    return PermissionError(uri)
                if code and code not in TRANSIENT_CODES and not code.startswith("5"):
                    return exc  # a permanent answer about this object (e.g. InvalidObjectState)
                if attempt == attempts - 1:
                    return TransientError(f"{uri}: {code or type(exc).__name__} after retries")

    @contextlib.contextmanager
    def local_copy(self, uri: str):
        """A local path holding the object, for readers that need a file (videos): the file
        itself on local disk; from S3 a temporary file the object is streamed into (a large video
        never sits in memory), removed afterwards. Raises what `fetch` would return."""
        if not is_s3(uri):
            if not os.path.isfile(uri):
                raise FileNotFoundError(uri)
            yield uri
            return
        with tempfile.TemporaryDirectory(prefix="fer-ray-") as tmp:
            got = self._get_s3(uri, sink=os.path.join(tmp, "object" + posixpath.splitext(uri)[1].lower()))
            if isinstance(got, BaseException):
                raise got
            yield got

    def fetch(self, uris: list[str]) -> list:
        # Local files are read right here: a read from the page cache is quicker than the GIL
        # hand-offs of a hop through the pool; S3 GETs wait on the network.
        out = [None if is_s3(u) else self._read_local(u) for u in uris]
        remote = [i for i, u in enumerate(uris) if is_s3(u)]
        got = self.pool.map(self._get_s3, [uris[i] for i in remote]) if len(remote) > 1 else \
            [self._get_s3(uris[i]) for i in remote]
        for i, data in zip(remote, got):
            out[i] = data
        return out


# ---------------------------------------------------------------- listings


def object_info(uri: str, info: dict) -> "ObjectInfo":
    """The one ETag rule: S3's ETag without its quotes; for a local file its mtime in ns, which
    changes whenever the content is replaced; '' for what could not be stat'ed (UNKNOWN)."""
    etag = info.get("ETag", info.get("etag"))
    if etag is None:
        etag = str(info.get("mtime_ns") or int(float(info.get("mtime", 0)) * 1e9))
    return ObjectInfo(uri, int(info.get("size") or 0), str(etag).strip('"'))


# Listed, but nothing could be stat'ed (a dangling link, a name in a folder that cannot be
# searched): size -1 and no ETag, as a manifest entry that does not exist; reading it gives the row.
UNKNOWN = {"size": -1, "ETag": "", "type": "file"}


def _local_info(stat) -> dict:
    """fsspec's fields for a local file (mtime in float seconds, as fsspec gives it), so a
    version (ETag) is the same whichever lists it, and as in runs committed before; UNKNOWN
    when `stat()` fails."""
    try:
        st = stat()
    except OSError:
        return UNKNOWN
    return {"size": st.st_size, "mtime": st.st_mtime, "type": "file"}


def printable_path(path: str) -> str:
    """A local path as Parquet and JSON can hold it (UTF-8): bytes that are not UTF-8, which
    os.fsdecode keeps as lone surrogates, become \\xNN; reading such a path (read_local) opens the
    file by its own name (raw_path). A file named with a literal backslash-x wins over it."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def raw_path(path: str) -> bytes:
    """The file name printable_path escaped: each \\xNN back to its byte."""
    import re

    return re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), path.encode("utf-8"))


def _path_entry(path: str) -> tuple[str, dict]:
    return printable_path(path), _local_info(functools.partial(os.stat, path))


def local_object(path: str) -> ObjectInfo:
    """One local path (a manifest entry) as a folder's listing gives it."""
    return object_info(*_path_entry(path))


def _scan(folder: str, root: str, skipped) -> list:
    """A folder's entries. A sub-folder that cannot be read is counted in `skipped` under its
    name (a run's marker names it); one gone since it was listed has nothing to lose. At the
    root the error is raised: nothing at all could be listed."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as exc:
        if folder == root:
            raise
        if skipped is not None and not isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            skipped[f"(unreadable folder) {printable_path(folder)}"] += 1
        return []


def _walk_local(root: str, skipped=None):
    """(path, {size, mtime}) for every entry under a local folder that is not a folder: os.scandir,
    cheaper per file than fsspec's `find` (docs/benchmarks.md, "Listing and planning at scale").
    FIFOs, devices and dangling links are listed too: reading them gives their error row.

    Each folder is walked once, keyed by (st_dev, st_ino): a link to a folder is followed only
    when its target is walked by no other path (real folders first, then links in name order, so
    the paths are the same every time). A link to '.' or two links to each other list nothing
    twice and end."""
    seen = set()
    stack, links = [(root, os.stat(root))], []  # (path, stat of the folder it leads to)
    while stack or links:
        folder, st = stack.pop() if stack else heapq.heappop(links)
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        for e in _scan(folder, root, skipped):
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append((e.path, e.stat(follow_symlinks=False)))
                    continue
                if e.is_symlink() and e.is_dir():
                    heapq.heappush(links, (e.path, e.stat()))
                    continue
            except FileNotFoundError:  # gone since it was listed
                continue
            except OSError:  # a link loop, a link into a folder that cannot be searched: a row says so
                pass
            yield printable_path(e.path), _local_info(e.stat)


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    etag: str  # S3 ETag, or mtime_ns for local files: changes when the content is replaced


def list_objects(uri: str, extensions=IMAGE_EXTENSIONS, skipped=None) -> list[ObjectInfo]:
    """Recursive listing, filtered by extension (case-insensitive), sorted by URI. `skipped`, a
    Counter, counts what is left out: files by extension ("(none)" for names without one), and
    local sub-folders that cannot be read, by name."""
    fs, root = filesystem(uri)
    if not fs.exists(root):
        raise FileNotFoundError(f"no such source: {uri}")
    if not is_s3(uri):
        found = dict(_walk_local(root, skipped) if os.path.isdir(root) else [_path_entry(root)])
    elif fs.isfile(root):
        found = {root: fs.info(root)}
    else:
        found = fs.find(root, detail=True)
    out = []
    for path, info in found.items():
        if info.get("type") == "directory":
            continue
        if extensions and not path.lower().endswith(tuple(extensions)):
            if skipped is not None:
                ext = posixpath.splitext(posixpath.basename(path))[1].lower()
                skipped[ext or "(none)"] += 1
            continue
        out.append(object_info(to_uri(path, uri), info))
    return sorted(out, key=lambda o: o.uri)
