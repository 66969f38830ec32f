"""URIs -> filesystems. Local paths, file:// and s3:// (AWS or any S3-compatible endpoint).

S3 settings come from the standard AWS chain: AWS_ENDPOINT_URL (for MinIO, moto, Ceph...),
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, profiles or instance roles.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import dataclass

import fsspec

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm")


def is_s3(uri: str) -> bool:
    return str(uri).startswith(("s3://", "s3a://"))


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_client(pool: int = 10):
    """A plain botocore S3 client (thread-safe) for what fsspec does not offer: one GetObject per
    object, conditional writes. Standard retries: 503 SlowDown, 500 and resets are retried."""
    import botocore.config
    import botocore.session

    config = botocore.config.Config(max_pool_connections=pool, retries={"max_attempts": 5, "mode": "standard"})
    return botocore.session.get_session().create_client("s3", endpoint_url=endpoint_url(), config=config)


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key)."""
    bucket, _, key = str(uri).split("://", 1)[1].partition("/")
    return bucket, key


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path within it). s3 paths come back as 'bucket/key'."""
    uri = str(uri)
    if is_s3(uri):
        import s3fs

        kwargs = {}
        if endpoint_url():
            kwargs["client_kwargs"] = {"endpoint_url": endpoint_url()}
        fs = s3fs.S3FileSystem(**kwargs)
        return fs, uri.split("://", 1)[1].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return fsspec.filesystem("file"), os.path.abspath(uri)


def arrow_filesystem(uri: str):
    """(pyarrow filesystem, path) for pyarrow datasets and Ray Data readers/writers."""
    import pyarrow.fs as pafs

    uri = str(uri)
    if is_s3(uri):
        kwargs = {}
        endpoint = endpoint_url()
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs.update(endpoint_override=host, scheme=scheme or "https")
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), uri.split("://", 1)[1].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return pafs.LocalFileSystem(), os.path.abspath(uri)


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


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    etag: str  # S3 ETag, or mtime_ns for local files: changes when the content is replaced


def list_objects(uri: str, extensions=IMAGE_EXTENSIONS) -> list[ObjectInfo]:
    """Recursive listing, filtered by extension (case-insensitive), sorted by URI."""
    fs, root = filesystem(uri)
    if not fs.exists(root):
        raise FileNotFoundError(f"no such source: {uri}")
    if fs.isfile(root):
        found = {root: fs.info(root)}
    else:
        found = fs.find(root, detail=True)
    out = []
    for path, info in found.items():
        if info.get("type") == "directory":
            continue
        if extensions and not path.lower().endswith(tuple(extensions)):
            continue
        etag = info.get("ETag") or info.get("etag")
        if etag is None:
            etag = str(info.get("mtime_ns") or int(float(info.get("mtime", 0)) * 1e9))
        out.append(ObjectInfo(to_uri(path, uri), int(info.get("size") or 0), str(etag).strip('"')))
    return sorted(out, key=lambda o: o.uri)
