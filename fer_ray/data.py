"""The prepared FER dataset: one Parquet file per split, written by `fer-ray prepare` (ingest.py).

    DIR/Training.parquet, DIR/PublicTest.parquet, DIR/PrivateTest.parquet
    DIR/prepare.json   summary: source, options, counts per split/class, bad rows, defects, checksum
    DIR/sources.csv    (raw image folders only) source_row -> file, to trace a row to its image

DIR may be a local folder or an s3:// URI (read, checksum and write alike).

Columns: pixels (binary, 48*48 uint8 row-major, the output of preprocess.to_gray48; or, written
with png=True, the same pixels as a lossless PNG: smaller, for moving data to a GPU machine;
docs/training.md, "Preparing it"), label (int8, 0..6 in EMOTIONS order), split (string),
source_row (int64, 0-based data row of the raw data prepare's --source named: CSV data rows after
the header, blank lines not counted; for an image folder, the index in the sorted file list),
in_training (bool: pixel-identical to some row of the *written* Training split; for leakage-free
reporting), votes (list<float32> of 7, FER+ annotator votes mapped to EMOTIONS order; null without
FER+, or where none of the 7 emotions got a vote).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .emotions import NUM_CLASSES
from .errors import FerRayError
from .preprocess import INPUT_SIZE

SPLITS = ("Training", "PublicTest", "PrivateTest")
SUMMARY_FILE = "prepare.json"
SOURCES_FILE = "sources.csv"
NUM_PIXELS = INPUT_SIZE * INPUT_SIZE

PREPARED_SCHEMA = pa.schema(
    [
        pa.field("pixels", pa.binary(INPUT_SIZE * INPUT_SIZE), nullable=False),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("in_training", pa.bool_(), nullable=False),
        pa.field("votes", pa.list_(pa.float32(), NUM_CLASSES)),
    ]
)
PNG_SCHEMA = PREPARED_SCHEMA.set(0, pa.field("pixels", pa.binary(), nullable=False))

# --------------------------------------------------------------------------------------------
# Prepared data: write / read (local folders or s3:// URIs)


def split_path(directory: str, split: str) -> str:
    return storage.join(directory, f"{split}.parquet")


def remove(directory: str, name: str) -> None:
    storage.remove(storage.join(directory, name))


def write_bytes(directory: str, name: str, payload: bytes) -> None:
    storage.write_bytes(storage.join(directory, name), payload)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, "L").save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _unpng(payload: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(payload)) as im:
        im = im.convert("L")
        if im.size != (INPUT_SIZE, INPUT_SIZE):
            raise FerRayError(f"prepared PNG pixels must be {INPUT_SIZE}x{INPUT_SIZE}, got {im.size}")
        return np.asarray(im, np.uint8)


def write_split(directory, split, pixels, labels, source_rows=None, in_training=None, votes=None,
                png: bool = False) -> str:
    """pixels: uint8 (N,48,48); labels: (N,) ints; votes: (N,7) floats or None (a row of NaN: null);
    png: store each image as PNG bytes (lossless, smaller) instead of raw pixels."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(len(pixels), INPUT_SIZE, INPUT_SIZE)
    n = len(pixels)
    source_rows = np.arange(n) if source_rows is None else np.asarray(source_rows)
    in_training = np.zeros(n, bool) if in_training is None else np.asarray(in_training, bool)
    if png:
        with ThreadPoolExecutor() as pool:
            pix = pa.array(list(pool.map(_png, pixels, chunksize=256)), pa.binary())
    else:
        pix = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(NUM_PIXELS), n, [None, pa.py_buffer(pixels.tobytes())]
        )
    if votes is None:
        vote_arr = pa.nulls(n, PREPARED_SCHEMA.field("votes").type)
    else:
        votes = np.asarray(votes, np.float32).reshape(n, NUM_CLASSES)
        missing = np.isnan(votes).all(axis=1)
        flat = pa.array(np.nan_to_num(votes, nan=0.0).reshape(-1))
        mask = pa.array(missing) if missing.any() else None
        vote_arr = pa.FixedSizeListArray.from_arrays(flat, NUM_CLASSES, mask=mask)
    table = pa.table(
        [pix, pa.array(np.asarray(labels), pa.int8()), pa.array([split] * n, pa.string()),
         pa.array(source_rows, pa.int64()), pa.array(in_training), vote_arr],
        schema=PNG_SCHEMA if png else PREPARED_SCHEMA,
    )
    if not storage.is_s3(directory):
        os.makedirs(directory, exist_ok=True)
    fs, path = storage.arrow_filesystem(split_path(directory, split))
    pq.write_table(table, path, filesystem=fs)
    return split_path(directory, split)


class Split:
    """A split in memory: pixels uint8 (N,48,48), labels int64 (N,), source_rows, in_training,
    votes float32 (N,7) or None when the split has no FER+ votes at all. Where only some rows
    lack votes, their votes are all zero and has_votes (N,) bool says which rows have them."""

    def __init__(self, table: pa.Table):
        n = table.num_rows
        pixels = table.column("pixels").combine_chunks()
        if pa.types.is_fixed_size_binary(pixels.type):
            buf = pixels.buffers()[1]
            start = pixels.offset * NUM_PIXELS
            self.pixels = np.frombuffer(buf, np.uint8, n * NUM_PIXELS, start).reshape(n, INPUT_SIZE, INPUT_SIZE)
        else:
            with ThreadPoolExecutor() as pool:
                decoded = list(pool.map(_unpng, pixels.to_pylist(), chunksize=256))
            self.pixels = np.stack(decoded) if decoded else np.zeros((0, INPUT_SIZE, INPUT_SIZE), np.uint8)
        self.labels = table.column("label").to_numpy().astype(np.int64)
        self.source_rows = table.column("source_row").to_numpy()
        self.in_training = table.column("in_training").to_numpy(zero_copy_only=False)
        votes = table.column("votes").combine_chunks()
        if n == 0 or votes.null_count == n:
            self.votes = None
            self.has_votes = np.zeros(n, bool)
        else:
            # .values keeps the slots behind null entries (flatten() would drop them)
            values = votes.values.slice(votes.offset * NUM_CLASSES, n * NUM_CLASSES)
            flat = values.to_numpy(zero_copy_only=False).astype(np.float32)
            self.votes = flat.reshape(n, NUM_CLASSES).copy()
            self.has_votes = votes.is_valid().to_numpy(zero_copy_only=False)
            self.votes[~self.has_votes] = 0.0

    def __len__(self) -> int:
        return len(self.labels)


def load_split(directory: str, split: str) -> Split:
    path = split_path(directory, split)
    if not storage.exists(path):
        raise FerRayError(f"prepared data has no {split} split: {path} (run `fer-ray prepare` first)")
    fs, fpath = storage.arrow_filesystem(path)
    stored = pq.read_schema(fpath, filesystem=fs)
    png = "pixels" in stored.names and pa.types.is_binary(stored.field("pixels").type)
    return Split(pq.read_table(fpath, schema=PNG_SCHEMA if png else PREPARED_SCHEMA, filesystem=fs))


def checksum(directory: str) -> str:
    """sha256 over the prepared split files: identifies exactly what a model was trained on.
    The same bytes give the same checksum locally and on S3."""
    h = hashlib.sha256()
    for split in SPLITS:
        path = split_path(directory, split)
        if not storage.exists(path):
            continue
        fs, p = storage.filesystem(path)
        with fs.open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def write_summary(directory: str, summary: dict) -> None:
    write_bytes(directory, SUMMARY_FILE, json.dumps(summary, indent=2).encode())


def read_summary(directory: str) -> dict:
    """DIR/prepare.json as a dict ({} when DIR has none, e.g. data written by write_split alone)."""
    return storage.read_json(storage.join(directory, SUMMARY_FILE)) or {}
