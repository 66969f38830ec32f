"""The prepared FER dataset: one Parquet file per split, written by `fer-ray prepare`.

    DIR/Training.parquet, DIR/PublicTest.parquet, DIR/PrivateTest.parquet
    DIR/prepare.json   summary: source, options, counts per split/class, bad rows, checksum

Columns: pixels (binary, 48*48 uint8 row-major, the output of preprocess.to_gray48),
label (int8, 0..6 in EMOTIONS order), split (string), source_row (int64, 0-based data row of the
source), in_training (bool: pixel-identical to some Training row; for leakage-free reporting),
votes (list<float32> of 7, FER+ annotator votes mapped to EMOTIONS order; null without FER+).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .emotions import NUM_CLASSES
from .errors import FerRayError
from .preprocess import INPUT_SIZE

SPLITS = ("Training", "PublicTest", "PrivateTest")
SUMMARY_FILE = "prepare.json"

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


def split_path(directory: str, split: str) -> str:
    return os.path.join(directory, f"{split}.parquet")


def write_split(directory, split, pixels, labels, source_rows=None, in_training=None, votes=None) -> str:
    """pixels: uint8 (N,48,48); labels: (N,) ints; votes: (N,7) floats or None."""
    os.makedirs(directory, exist_ok=True)
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(len(pixels), -1)
    n = len(pixels)
    source_rows = np.arange(n) if source_rows is None else np.asarray(source_rows)
    in_training = np.zeros(n, bool) if in_training is None else np.asarray(in_training, bool)
    pix = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(INPUT_SIZE * INPUT_SIZE), n, [None, pa.py_buffer(pixels.tobytes())]
    )
    if votes is None:
        vote_arr = pa.nulls(n, PREPARED_SCHEMA.field("votes").type)
    else:
        flat = pa.array(np.asarray(votes, np.float32).reshape(-1))
        vote_arr = pa.FixedSizeListArray.from_arrays(flat, NUM_CLASSES)
    table = pa.table(
        [pix, pa.array(np.asarray(labels), pa.int8()), pa.array([split] * n), pa.array(source_rows, pa.int64()),
         pa.array(in_training), vote_arr],
        schema=PREPARED_SCHEMA,
    )
    path = split_path(directory, split)
    pq.write_table(table, path)
    return path


class Split:
    """A split in memory: pixels uint8 (N,48,48), labels int64 (N,), votes float32 (N,7) or None."""

    def __init__(self, table: pa.Table):
        n = table.num_rows
        buf = table.column("pixels").combine_chunks().buffers()[1]
        self.pixels = np.frombuffer(buf, np.uint8, n * INPUT_SIZE * INPUT_SIZE).reshape(n, INPUT_SIZE, INPUT_SIZE)
        self.labels = table.column("label").to_numpy().astype(np.int64)
        self.source_rows = table.column("source_row").to_numpy()
        self.in_training = table.column("in_training").to_numpy(zero_copy_only=False)
        votes = table.column("votes")
        if votes.null_count == n:
            self.votes = None
        else:
            flat = votes.combine_chunks().flatten().to_numpy(zero_copy_only=False)
            self.votes = flat.astype(np.float32).reshape(n, NUM_CLASSES)

    def __len__(self) -> int:
        return len(self.labels)


def load_split(directory: str, split: str) -> Split:
    path = split_path(directory, split)
    if not os.path.isfile(path):
        raise FerRayError(f"prepared data has no {split} split: {path} (run `fer-ray prepare` first)")
    return Split(pq.read_table(path, schema=PREPARED_SCHEMA))


def checksum(directory: str) -> str:
    """sha256 over the prepared split files: identifies exactly what a model was trained on."""
    h = hashlib.sha256()
    for split in SPLITS:
        path = split_path(directory, split)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def write_summary(directory: str, summary: dict) -> None:
    with open(os.path.join(directory, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)
