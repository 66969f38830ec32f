"""The worker side of labeling: one Labeler per Ray actor turns a batch of URI rows into label
rows (fetch the bytes concurrently -> decode with per-row errors -> Recognizer: faces, then one
forward pass -> rows in LABEL_SCHEMA). A video goes the same way a sampled frame at a time
(video.Clip). Nothing raises out of a batch because of one object."""

from __future__ import annotations

import datetime as _dt
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from . import storage
from .config import LabelConfig
from .emotions import EMOTIONS
from .faces import NO_FACE, crop_like, faces, framer
from .preprocess import full_size
from .schema import LABEL_SCHEMA, PROB_COLUMNS
from .video import Clip, is_video

INPUT_SCHEMA = pa.schema([("uri", pa.string()), ("size", pa.int64()), ("etag", pa.string())])
MAX_OBJECT_BYTES = storage.MAX_OBJECT_BYTES  # larger objects are not fetched: one error row instead
FETCH_BYTES = 64 << 20  # at most this many bytes fetched at once per batch in flight
GPU_CHUNK = 1024  # faces per forward call on a GPU, which needs large calls to be kept busy


class Labeler:
    """The fused stage: one instance per actor; called with a pyarrow batch of URI rows."""

    def __init__(self, model_uri, model_id, run_id, cfg: LabelConfig | None = None, *, precision="auto",
                 threads=1, forward_chunk=None, freeze=False, loaded=None, overlap=0):
        """`cfg`: the run's settings. The rest is what the driver decides for this run and process:
        the model (`model_id` catches a bundle replaced under the run) and its `precision` as it
        loaded there; torch `threads`, faces per forward call (default: cfg.forward_chunk, an
        actor's), `freeze` (CPU: TorchScript, worth its start-up in long runs only), `loaded` (the
        bundle already in the driver's memory) and `overlap` (in the driver's process: that many
        model threads beside the decoding one)."""
        import threading

        import torch

        from .recognizer import Recognizer

        self.cfg = cfg = cfg or LabelConfig()
        _torch_threads(threads)
        gpu = cfg.gpu and torch.cuda.is_available()
        chunk = GPU_CHUNK if gpu else forward_chunk or cfg.forward_chunk
        self.rec = Recognizer(model_uri, cfg.faces, cfg.tta, "cuda" if gpu else "cpu", precision, freeze and not gpu,
                              chunk, loaded=loaded)
        if self.rec.bundle.model_id != model_id:
            raise RuntimeError(f"model changed under the run: {self.rec.bundle.model_id} != {model_id}")
        self.model_id, self.run_id = model_id, run_id
        self.chunk = self.rec.batch_size
        self.fetcher = storage.Fetcher(cfg.fetch_threads)
        # Batches in flight in an actor fetch concurrently but compute one at a time; in the
        # driver's process the model runs on some batches while the next one decodes.
        self.decoding = threading.RLock()
        self.modeling = threading.BoundedSemaphore(int(overlap)) if overlap else self.decoding
        if cfg.faces == "auto":  # the framer reads the crops: load it while the first batch is fetched
            threading.Thread(target=framer.load, daemon=True).start()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.finish(self.prepare(batch))

    def prepare(self, batch: pa.Table) -> "Prepared":
        """Everything but the model for the batch's images: fetch, decode, find and frame faces.
        Videos go all the way here (their frames stream through the model a chunk at a time)."""
        uris = batch.column("uri").to_pylist()
        sizes = batch.column("size").to_pylist()
        etags = batch.column("etag").to_pylist()
        images = [i for i, u in enumerate(uris) if not is_video(u)]
        rows = [Row(i, error=f"file too large ({sizes[i]} bytes)") for i in images if sizes[i] > MAX_OBJECT_BYTES]
        for group in _byte_groups([i for i in images if sizes[i] <= MAX_OBJECT_BYTES], sizes):
            datas = self.fetcher.fetch([uris[i] for i in group])  # concurrent; no lock held
            for data in datas:  # the store, not the object, failed: no error row, the batch fails
                if isinstance(data, storage.TransientError):
                    raise data
            with self.decoding:
                rows += self._faces(list(zip(group, datas)))
            del datas
        done = [self._label_video(i, u) for i, u in enumerate(uris) if is_video(u)]
        return Prepared(uris, sizes, etags, rows, [r for d in done for r in d[0]], [d[1] for d in done])

    def finish(self, prep: "Prepared") -> pa.Table:
        """The model over the prepared faces, and the batch's rows as a table."""
        rows, probs = self._forward(prep.rows)
        return self._table(rows + prep.video_rows, np.concatenate([probs, *prep.video_probs]),
                           prep.uris, prep.sizes, prep.etags)

    def _faces(self, items) -> list:
        """[(object index, bytes or exception)] -> rows, with the model's input in `pixels`.
        Crop-sized images are framed together (one framer batch); photos one at a time, so that
        a batch of large photos is never held decoded at once."""
        from .preprocess import PHOTO_SIDE, DecodeError, decode

        done, crops = {}, []
        for i, data in items:
            if isinstance(data, BaseException):
                done[i] = [Row(i, error=storage.fetch_error(data))]
                continue
            try:
                img = decode(data, reduce_to=PHOTO_SIDE)
            except DecodeError as exc:
                done[i] = [Row(i, error=str(exc) or "cannot decode image")]
                continue
            except Exception as exc:  # noqa: BLE001 - any per-object failure is a row, never a crash
                done[i] = [Row(i, error=f"cannot process image: {type(exc).__name__}")]
                continue
            if crop_like(img.width, img.height):
                crops.append((i, img))
            else:
                done[i] = _rows(i, img, self.rec.find([img])[0])
        for (i, img), found in zip(crops, self.rec.find([img for _, img in crops]) if crops else []):
            done[i] = _rows(i, img, found)
        return [r for i, _ in items for r in done[i]]

    def _label_video(self, i: int, uri: str):
        """One video object -> (rows, probs): its sampled frames a chunk at a time (memory flat in
        the video's length), then an error row if it could not be read to the end."""
        from PIL import Image

        mode = "crop" if self.cfg.faces == "crop" else "detect"  # a frame with no face stays unlabelled
        rows, probs, pending = [], [], []

        def flush():
            r, p = self._forward(pending)
            rows.extend(x._replace(pixels=None) for x in r)
            probs.append(p)
            pending.clear()

        try:
            with self.fetcher.local_copy(uri) as path:  # S3: streamed to a temporary file
                clip = Clip(path, self.cfg.video_fps)
                with self.decoding:
                    for f in clip.frames():
                        h, w = f.gray.shape
                        found = faces(Image.fromarray(f.gray), mode, self.rec.size)
                        pending.extend(Row(i, j, c.box, w, h, c.pixels, None, c.face_source, f.index, f.time_s)
                                       for j, c in enumerate(found))
                        if not found:
                            pending.append(Row(i, 0, None, w, h, None, None, NO_FACE, f.index, f.time_s))
                        if len(pending) >= self.chunk:
                            flush()
                    flush()
            error = clip.error
            frame, time_s = clip.stopped_at
        except storage.TransientError:
            raise
        except OSError as exc:
            error, frame, time_s, clip = storage.fetch_error(exc), None, None, None
        except Exception as exc:  # noqa: BLE001 - a decoder failure is this object's error row
            error, frame, time_s, clip = f"cannot process video: {type(exc).__name__}", None, None, None
        if error:
            size = (clip.width, clip.height) if clip else (None, None)
            rows.append(Row(i, 0, None, *size, None, error, None, frame, time_s))
            probs.append(_nan(1))
        return rows, np.concatenate(probs) if probs else _nan(0)

    def _forward(self, rows):
        """The model over the rows that hold pixels: (rows, probs in EMOTIONS order, NaN elsewhere)."""
        good = [k for k, r in enumerate(rows) if r.pixels is not None]
        probs = _nan(len(rows))
        if good:
            pixels = np.stack([rows[k].pixels for k in good])
            with self.modeling:
                probs[good] = self.rec.probabilities(pixels)
        return rows, probs

    def _table(self, rows, probs, uris, sizes, etags) -> pa.Table:
        n = len(rows)
        ok = ~np.isnan(probs).any(1) if n else np.zeros(0, bool)
        best = np.where(ok, probs.argmax(1) if n else 0, -1)
        labels = [EMOTIONS[b] if b >= 0 else None for b in best]
        conf = np.where(ok, probs.max(1) if n else 0, np.nan).astype(np.float32)
        box = [r.box for r in rows]
        now = _dt.datetime.now(_dt.timezone.utc)
        mask = ~ok
        cols = {
            "image_path": [uris[r.obj] for r in rows],
            "face_index": pa.array([r.face for r in rows], pa.int32()),
            "frame_index": pa.array([r.frame for r in rows], pa.int32()),
            "timestamp_s": pa.array([r.time_s for r in rows], pa.float64()),
            "label": pa.array(labels, pa.string()),
            "confidence": pa.array(conf, pa.float32(), mask=mask),
            **{c: pa.array(probs[:, k], pa.float32(), mask=mask) for k, c in enumerate(PROB_COLUMNS)},
            "error": pa.array([r.error for r in rows], pa.string()),
            "box_x": pa.array([b[0] if b else None for b in box], pa.int32()),
            "box_y": pa.array([b[1] if b else None for b in box], pa.int32()),
            "box_w": pa.array([b[2] if b else None for b in box], pa.int32()),
            "box_h": pa.array([b[3] if b else None for b in box], pa.int32()),
            "face_source": pa.array([r.face_source for r in rows], pa.string()),
            "image_width": pa.array([r.width for r in rows], pa.int32()),
            "image_height": pa.array([r.height for r in rows], pa.int32()),
            "object_size": pa.array([sizes[r.obj] for r in rows], pa.int64()),
            "object_etag": pa.array([etags[r.obj] for r in rows], pa.string()),
            "model_id": pa.array([self.model_id] * n, pa.string()),
            "run_id": pa.array([self.run_id] * n, pa.string()),
            "labeled_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        }
        return pa.Table.from_pydict(cols, schema=LABEL_SCHEMA)


class Prepared(NamedTuple):
    """A batch between Labeler.prepare and Labeler.finish."""

    uris: list
    sizes: list
    etags: list
    rows: list  # image rows, faces with their pixels
    video_rows: list  # video rows, labeled already
    video_probs: list  # their probabilities, one array per video


class Row(NamedTuple):
    """One output row before the model: which object (index in the batch), face and frame."""

    obj: int
    face: int = 0
    box: tuple | None = None
    width: int | None = None
    height: int | None = None
    pixels: np.ndarray | None = None  # the model's input; None for rows without a label
    error: str | None = None
    face_source: str | None = None  # faces.FACE_SOURCES or NO_FACE
    frame: int | None = None  # video frame index
    time_s: float | None = None


def _rows(i: int, img, found) -> list:
    """One image's rows from what framing found in it (faces, none, or the exception it raised)."""
    if isinstance(found, Exception):
        return [Row(i, error=f"cannot process image: {type(found).__name__}")]
    width, height = full_size(img)
    if not found:  # a photo without a face found: a row that says so, no label and no error
        return [Row(i, width=width, height=height, face_source=NO_FACE)]
    return [Row(i, j, face.box, width, height, face.pixels, None, face.face_source) for j, face in enumerate(found)]


def _torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # torch ran parallel work in this process already (the driver's): keep it
        pass


def _nan(n: int) -> np.ndarray:
    return np.full((n, len(EMOTIONS)), np.nan, np.float32)


def _byte_groups(indices: list[int], sizes: list[int], budget: int | None = None) -> list[list[int]]:
    """Split a batch so that one fetch holds at most `budget` bytes (by listed size): a batch of
    big photos never sits in memory whole; a batch of small crops stays one concurrent fetch."""
    budget = budget or FETCH_BYTES
    groups, cur, total = [], [], 0
    for i in indices:
        size = max(0, sizes[i])
        if cur and total + size > budget:
            groups.append(cur)
            cur, total = [], 0
        cur.append(i)
        total += size
    return groups + [cur] if cur else groups
