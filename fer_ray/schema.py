"""The labeling job's output: one fixed Arrow schema for every file of every run.

One row per (image, face), and for a video per (sampled frame, face): `frame_index` and
`timestamp_s` say which frame (null for images). Error rows have `error` set and null
label/probabilities. A sampled video frame without a face is one row with face_source `no-face`
and no label and no error: the video's timeline stays complete.
Never name a column `path`: Ray Data's read_parquet drops it."""

import pyarrow as pa

from .emotions import EMOTIONS

PROB_COLUMNS = [f"prob_{e}" for e in EMOTIONS]

LABEL_SCHEMA = pa.schema(
    [
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("face_index", pa.int32(), nullable=False),
        pa.field("frame_index", pa.int32()),
        pa.field("timestamp_s", pa.float64()),
        pa.field("label", pa.string()),
        pa.field("confidence", pa.float32()),
        *[pa.field(c, pa.float32()) for c in PROB_COLUMNS],
        pa.field("error", pa.string()),
        pa.field("box_x", pa.int32()),
        pa.field("box_y", pa.int32()),
        pa.field("box_w", pa.int32()),
        pa.field("box_h", pa.int32()),
        # how the model's input was cut: as-framed | detected | whole-image (faces.FACE_SOURCES), or
        # NO_FACE (a photo or video frame without a face found: no label, no error); null in
        # error rows and in outputs written before the column existed (so are frame_index and
        # timestamp_s)
        pa.field("face_source", pa.string()),
        pa.field("image_width", pa.int32()),
        pa.field("image_height", pa.int32()),
        pa.field("object_size", pa.int64()),
        pa.field("object_etag", pa.string()),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("labeled_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


NO_FACE = "no-face"
FACE_MODES = ("auto", "crop", "detect")  # --faces: fer_ray.faces.framing says what each does
PRECISIONS = ("auto", "fp32", "int8")  # --precision: how a bundle's model runs (bundle.load)


def error_reason(error: str) -> str:
    """Group error strings for summaries: 'image too large (9000x9000)' -> 'image too large'."""
    return error.split(" (", 1)[0]
