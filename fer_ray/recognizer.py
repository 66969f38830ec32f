"""`Recognizer`: the one place where a model meets pictures.

    from fer_ray import Recognizer
    rec = Recognizer()                       # the shipped `fast` model, faces found and framed
    rec.detect_emotions("group.jpg")         # [{"box": [x, y, w, h], "emotions": {...}, "label": ...}]

The same object serves `fer-ray label` (its workers), `fer-ray predict`, `fer-ray serve`,
`fer-ray evaluate` and the shift suite: pictures -> faces (fer_ray.faces) -> the model's
probabilities in EMOTIONS order. Each answer has the shape the `fer` package returns (box and
emotions per face), plus the label, its confidence and how the face was framed.

Pictures may be a path, bytes, a PIL image or a numpy array. A 3-channel array is BGR by default,
as OpenCV reads images (and as `fer` and DeepFace take them): pass channels="RGB" for arrays from
PIL, imageio or matplotlib. 2-D arrays are greyscale; 4-channel ones BGRA (or RGBA). A picture
that is no usable image raises ImageError naming it.
"""

from __future__ import annotations

import io
import os
import threading

import numpy as np

from .emotions import EMOTIONS
from .errors import FerRayError


class ImageError(FerRayError, ValueError):
    """A picture given to the Recognizer is no usable image; the message names it."""


class Recognizer:
    """Faces and their emotions in pictures. Loading is lazy (the first call) and thread-safe.

    model: fast, accurate (shipped), a bundle folder or s3:// URI. faces: auto, crop or detect
    (fer_ray.faces). tta: 10-view test-time augmentation. device: None (cpu, or cuda for
    gpu=True bundles), "cpu" or "cuda". precision: auto (int8 on CPU where calibrated), fp32,
    int8. freeze: run the CPU model as frozen TorchScript (worth its start-up in long runs)."""

    def __init__(self, model: str | None = "fast", faces: str = "auto", tta: bool = False, device: str | None = None,
                 precision: str = "auto", freeze: bool = False, batch_size: int = 256, loaded=None):
        from .faces import MODES

        if faces not in MODES:
            raise ValueError(f"unknown faces mode {faces!r} (choose from {', '.join(MODES)})")
        if device not in (None, "cpu", "cuda"):
            raise ValueError(f"device must be None, 'cpu' or 'cuda', got {device!r}")
        self.model_name, self.faces, self.tta = model, faces, bool(tta)
        self.device_name, self.precision, self.freeze = device, precision, freeze
        self.batch_size = int(batch_size)
        self._bundle, self._model, self._order = loaded, None, None
        self._lock = threading.Lock()

    # -- the model, loaded once ------------------------------------------------------------------

    def _load(self):
        with self._lock:
            if self._model is not None:
                return
            import torch

            from . import bundle

            gpu = self.device_name == "cuda"
            if gpu and not torch.cuda.is_available():
                raise FerRayError("device='cuda' but no CUDA device is available")
            b = self._bundle or bundle.load(self.model_name, gpu=gpu, precision=self.precision)
            self.device = torch.device("cuda" if gpu else "cpu")
            b.model.to(self.device).eval()
            size = b.meta["preprocess"].get("input_size", 48)
            model = frozen(b.model, size) if self.freeze and self.device.type == "cpu" else b.model
            self._order = [b.classes.index(e) for e in EMOTIONS]
            self._bundle, self._model = b, model

    @property
    def bundle(self):
        self._load()
        return self._bundle

    @property
    def model(self):
        """The torch module that runs (frozen TorchScript with freeze=True on CPU)."""
        self._load()
        return self._model

    @property
    def size(self) -> int:
        return int(self.bundle.meta["preprocess"].get("input_size", 48))

    # -- the two halves: faces, then probabilities ----------------------------------------------

    def find(self, images: list) -> list:
        """Decoded PIL images -> for each, its faces (fer_ray.faces.Face) or the exception that
        finding them raised (that image's error, never the batch's)."""
        from .faces import faces, faces_many

        try:
            return faces_many(images, self.faces, self.size)
        except Exception:  # noqa: BLE001 - retry one by one so one bad image fails alone
            out = []
            for img in images:
                try:
                    out.append(faces(img, self.faces, self.size))
                except Exception as exc:  # noqa: BLE001
                    out.append(exc)
            return out

    def probabilities(self, pixels) -> np.ndarray:
        """uint8 (N, 48, 48) framed faces -> float32 (N, 7) probabilities in EMOTIONS order."""
        import torch

        from .inference import predict_probs

        pixels = np.asarray(pixels, dtype=np.uint8)
        if len(pixels) == 0:
            return np.zeros((0, len(EMOTIONS)), np.float32)
        x = self.bundle.inputs(pixels)
        with torch.inference_mode():
            probs = predict_probs(self.model, x, batch_size=self.batch_size, tta=self.tta)
        return probs[:, self._order]

    # -- the user's API ----------------------------------------------------------------------------

    def detect_emotions(self, image, channels: str = "BGR") -> list[dict]:
        """One picture -> one dict per face found (none: an empty list), left to right."""
        return self.predict_batch([image], channels)[0]

    def predict_batch(self, images, channels: str = "BGR") -> list[list[dict]]:
        """Many pictures -> for each, its faces' dicts; one batched forward pass for all faces."""
        imgs = [to_image(x, channels, name=_name(x, k)) for k, x in enumerate(images)]
        found = self.find(imgs)
        for k, f in enumerate(found):
            if isinstance(f, Exception):
                raise ImageError(f"cannot find faces in {_name(images[k], k)}: {type(f).__name__}: {f}")
        flat = [face for f in found for face in f]
        probs = self.probabilities(np.stack([face.pixels for face in flat])) if flat else None
        out, at = [], 0
        for f in found:
            out.append([answer(face, probs[at + j]) for j, face in enumerate(f)])
            at += len(f)
        return out


def answer(face, probs: np.ndarray) -> dict:
    """One face's dict: box [x, y, w, h], emotions {name: probability}, label, confidence, face_source."""
    best = int(np.argmax(probs))
    return {"box": [int(v) for v in face.box], "emotions": {e: round(float(p), 4) for e, p in zip(EMOTIONS, probs)},
            "label": EMOTIONS[best], "confidence": float(probs[best]), "face_source": face.face_source}


def _name(image, k: int) -> str:
    if isinstance(image, (str, os.PathLike)):
        return repr(os.fspath(image))
    return f"image {k} ({type(image).__name__})"


def to_image(image, channels: str = "BGR", name: str = "image"):
    """A path, bytes, PIL image or numpy array -> a decoded PIL image (upright, size-checked)."""
    from PIL import Image

    from . import preprocess, storage

    if channels not in ("BGR", "RGB"):
        raise ValueError(f"channels must be 'BGR' or 'RGB', got {channels!r}")
    try:
        if isinstance(image, (str, os.PathLike)):
            path = storage.check_uri(os.fspath(image))
            data = storage.read_bytes(path) if storage.is_s3(path) else storage.read_local(path)
            return preprocess.decode(data, reduce_to=preprocess.PHOTO_SIDE)
        if isinstance(image, (bytes, bytearray, memoryview)):
            return preprocess.decode(bytes(image), reduce_to=preprocess.PHOTO_SIDE)
        if isinstance(image, io.IOBase):
            return preprocess.decode(image.read(storage.MAX_OBJECT_BYTES + 1), reduce_to=preprocess.PHOTO_SIDE)
        if isinstance(image, Image.Image):
            preprocess.check_size(*image.size)
            return image
        if isinstance(image, np.ndarray):
            return _from_array(image, channels)
    except (preprocess.DecodeError, OSError, ValueError) as exc:
        reason = storage.fetch_error(exc) if isinstance(exc, OSError) else str(exc)
        raise ImageError(f"cannot read {name}: {reason}") from None
    raise ImageError(f"cannot read {name}: expected a path, bytes, a PIL image or a numpy array")


def _from_array(arr: np.ndarray, channels: str):
    from PIL import Image

    from . import preprocess

    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f" and arr.size and 0.0 <= float(arr.min()) and float(arr.max()) <= 1.0:
            arr = (arr * 255.0 + 0.5).astype(np.uint8)  # floats in [0, 1], as matplotlib reads PNGs
        else:
            raise ValueError(f"array of {arr.dtype}: give uint8 (0-255) or floats in [0, 1]")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        preprocess.check_size(arr.shape[1], arr.shape[0])
        return Image.fromarray(np.ascontiguousarray(arr), "L")
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"array of shape {arr.shape}: give (H, W), (H, W, 3) or (H, W, 4)")
    preprocess.check_size(arr.shape[1], arr.shape[0])
    if channels == "BGR":
        arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]
    return Image.fromarray(np.ascontiguousarray(arr), "RGB" if arr.shape[2] == 3 else "RGBA")


def frozen(model, size: int = 48):
    """The model traced, frozen and optimised for CPU inference by TorchScript: less CPU per image
    (fused conv+ReLU, oneDNN layouts; docs/labeling.md, "How it is built (design)"), and the whole forward
    runs without the GIL.
    Falls back to the eager model unless the frozen one gives the same probabilities on a test
    batch of another size than the one traced."""
    import torch

    try:
        x = torch.randn(8, 1, size, size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            f = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x[:4]).eval()))
            ok = torch.allclose(torch.softmax(f(x), 1), torch.softmax(model(x), 1), atol=1e-4)
        return f if ok else model
    except Exception:  # noqa: BLE001 - any tracing problem: the eager model is always correct
        return model


class EmotionLabeler:
    """The Recognizer as a Ray Data stage, for pipelines of your own:

        ds = ray.data.read_images("s3://bucket/photos/", include_paths=True)   # or read_binary_files
        labels = ds.map_batches(EmotionLabeler, fn_constructor_kwargs={"model": "fast"},
                                compute=ray.data.ActorPoolStrategy(size=2), batch_size=64)

    Each batch's `image` column (arrays, RGB as read_images gives them; `channels="BGR"` for
    arrays from OpenCV) or `bytes` column (encoded images) becomes rows with the labeling job's
    columns: one per face, one `no-face` row for a photo without a face, one error row for a
    picture that cannot be read (never a failed batch). `path` is kept as `image_path`."""

    COLUMNS = ("image_path", "face_index", "label", "confidence", "prob_angry", "prob_disgust", "prob_fear",
               "prob_happy", "prob_sad", "prob_surprise", "prob_neutral", "error", "box_x", "box_y", "box_w",
               "box_h", "face_source", "image_width", "image_height", "model_id")

    def __init__(self, model: str = "fast", faces: str = "auto", tta: bool = False, precision: str = "auto",
                 threads: int = 1, channels: str = "RGB"):
        import torch

        torch.set_num_threads(max(1, int(threads)))
        self.rec = Recognizer(model, faces, tta, precision=precision)
        self.channels = channels

    def __call__(self, batch) -> "pyarrow.Table":  # noqa: F821
        from .schema import NO_FACE

        column = next((c for c in ("image", "bytes") if c in batch), None)
        if column is None:
            raise ValueError(f"EmotionLabeler needs an 'image' or 'bytes' column, got {sorted(batch)}")
        items, paths = list(batch[column]), batch.get("path")
        names = [str(paths[k]) if paths is not None else None for k in range(len(items))]
        imgs, errors = {}, {}
        for k, x in enumerate(items):
            try:
                imgs[k] = to_image(x if column == "image" else bytes(x), self.channels, name=names[k] or f"row {k}")
            except ImageError as exc:
                errors[k] = str(exc).split(": ", 1)[-1]
        found = dict(zip(imgs, self.rec.find(list(imgs.values()))))
        rows = []  # (item, face index, face or None, error, width, height)
        for k in range(len(items)):
            img, f = imgs.get(k), found.get(k)
            size = (img.width, img.height) if img is not None else (None, None)
            if k in errors or isinstance(f, Exception):
                rows.append((k, 0, None, errors.get(k) or f"cannot process image: {type(f).__name__}", *size))
            elif not f:
                rows.append((k, 0, NO_FACE, None, *size))
            else:
                rows.extend((k, j, face, None, *size) for j, face in enumerate(f))
        faced = [r[2] for r in rows if r[2] is not None and r[2] != NO_FACE]
        probs = iter(self.rec.probabilities(np.stack([face.pixels for face in faced])) if faced else [])
        return self._table(rows, probs, names)

    def _table(self, rows, probs, names):
        import pyarrow as pa

        from .schema import LABEL_SCHEMA, NO_FACE

        cols = {c: [] for c in self.COLUMNS}
        for k, j, face, error, width, height in rows:
            p = next(probs) if face is not None and face != NO_FACE else None
            a = answer(face, p) if p is not None else None
            box = a["box"] if a else [None] * 4
            values = {"image_path": names[k], "face_index": j, "label": a and a["label"],
                      "confidence": a and a["confidence"], "error": error, "box_x": box[0], "box_y": box[1],
                      "box_w": box[2], "box_h": box[3], "image_width": width, "image_height": height,
                      "face_source": a["face_source"] if a else (NO_FACE if face == NO_FACE else None),
                      "model_id": self.rec.bundle.model_id,
                      **{f"prob_{e}": (float(p[i]) if p is not None else None) for i, e in enumerate(EMOTIONS)}}
            for c in self.COLUMNS:
                cols[c].append(values[c])
        schema = pa.schema([LABEL_SCHEMA.field(c) for c in self.COLUMNS])
        return pa.Table.from_pydict(cols, schema=schema)
