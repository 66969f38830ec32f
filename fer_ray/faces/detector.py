"""Where the faces are in an image: `detect(img)` -> [Detection(box, landmarks, score)].

The detector is YuNet (2023mar, "n" model), a 75 k-parameter CNN run by OpenCV's
`cv2.FaceDetectorYN`; its ONNX file ships in fer_ray/bundles/yunet (licence, origin and checksum
beside it). It gives a score and five landmarks per face (eyes, nose tip, mouth corners), which
align.py uses to level and frame each face. It replaced a Haar cascade that missed most faces in
crowd and street photos (docs/benchmarks.md, "Faces").

How an image is scanned, so that the work is bounded by pixels whatever the file:
- at most MAX_SIDE on its longer side (larger images are shrunk first; a face must then be about
  MIN_FACE_PX * side / MAX_SIDE pixels of the original to be found);
- small, roughly square images (face crops: framing.crop_like) get a border of repeated edge
  pixels, so that a face filling or overflowing the frame is found, and are enlarged to
  CROP_SCAN_SIDE; nothing else is ever enlarged (a 60000x1 image is shrunk to 1024x1, and found
  empty);
- images whose shorter side is under MIN_FACE_PX after that hold no face worth labelling.

Boxes and landmarks are in pixels of the image given (decode applied EXIF orientation), sorted
left-to-right then top-to-bottom; in a padded crop they may reach past the frame.
"""

from __future__ import annotations

import os
import threading
from typing import NamedTuple

import numpy as np
from PIL import Image

MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles", "yunet",
                     "yunet_n_640_640.onnx")
MAX_SIDE = 800         # longer side of the image the detector scans: as many faces found as at
                       # 1024, fewer false ones, in less time (docs/benchmarks.md, "Faces")
MIN_FACE_PX = 16       # shorter sides below this (in scanned pixels) are not scanned at all
SCORE = 0.6            # faces below this score are dropped (OpenCV Zoo's default for YuNet)
NMS = 0.3              # overlap at which two boxes are one face
MAX_FACES = 1000       # at most this many faces per image (a crowd photo of 300 faces fits)
CROP_SIDE = 256        # crops: shorter side at most this ...
CROP_ASPECT = 1.25     # ... and at most this long side / short side
CROP_PAD = 0.25        # a crop is scanned with this fraction of its side of repeated border ...
CROP_SCAN_SIDE = 192   # ... at this shorter side (a 48-px face crop becomes a ~128-px face)

_local = threading.local()  # a FaceDetectorYN keeps per-call state: one per thread
_import_lock = threading.Lock()  # threads importing cv2 at once can see a half-initialised module


class DetectorUnavailable(RuntimeError):
    """The detector cannot be loaded (its file is missing or OpenCV lacks FaceDetectorYN); a
    per-image error, not a crash."""


class Detection(NamedTuple):
    box: tuple[float, float, float, float]  # x, y, w, h
    landmarks: np.ndarray  # (5, 2) x, y: right eye, left eye (as seen), nose tip, mouth corners
    score: float


def crop_like(width: int, height: int) -> bool:
    """Whether an image of this size is a face crop, not a photo: shorter side <= CROP_SIDE and
    roughly square. The one rule every path uses (labeling, `predict`, the server, the API)."""
    return min(width, height) <= CROP_SIDE and max(width, height) <= CROP_ASPECT * min(width, height)


def _net(width: int, height: int):
    net = getattr(_local, "net", None)
    if net is None:
        with _import_lock:
            net = _local.net = _load()
    net.setInputSize((width, height))
    return net


def _load():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - opencv-python-headless is a dependency
        raise DetectorUnavailable(f"face detection needs opencv-python-headless: {exc}") from None
    if not hasattr(cv2, "FaceDetectorYN"):
        raise DetectorUnavailable(f"OpenCV {cv2.__version__} has no FaceDetectorYN (need 4.8 or newer)")
    if not os.path.exists(MODEL):
        raise DetectorUnavailable(f"face detector weights missing: {MODEL}")
    return cv2.FaceDetectorYN.create(MODEL, "", (320, 320), SCORE, NMS, MAX_FACES)


def _bgr(img: Image.Image) -> np.ndarray:
    """Any PIL image -> uint8 (H, W, 3) BGR, what YuNet was trained on; grey images are repeated
    into three channels."""
    from ..preprocess import to_gray

    if img.mode != "RGB":
        rgb = img.convert("RGB") if img.mode in ("CMYK", "YCbCr", "P", "RGBX") and "transparency" not in img.info else None
        if rgb is None:
            gray = np.asarray(to_gray(img), dtype=np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)
        img = rgb
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8)[:, :, ::-1])


def _scan(img: Image.Image) -> tuple[np.ndarray | None, float, int]:
    """The BGR array the detector scans (None: nothing to scan), its scale from the image and
    the border added around it, before scaling."""
    width, height = img.size
    if crop_like(width, height):
        pad = max(1, round(CROP_PAD * min(width, height)))
        scale = CROP_SCAN_SIDE / (min(width, height) + 2 * pad)
        arr = np.pad(_bgr(img), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        size = (round(arr.shape[1] * scale), round(arr.shape[0] * scale))
        return _resize(arr, size), scale, pad
    scale = min(1.0, MAX_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if min(size) < MIN_FACE_PX:
        return None, scale, 0
    # shrink before converting: the full-size colour copy of a large photo is never made
    small = img if scale == 1.0 else img.resize(size, Image.BILINEAR, reducing_gap=2.0)
    return _bgr(small), scale, 0


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    if (arr.shape[1], arr.shape[0]) == size:
        return arr
    shrink = size[0] < arr.shape[1]
    return cv2.resize(arr, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def detect(img: Image.Image) -> list[Detection]:
    """The faces in `img` (a PIL image of any mode), with their landmarks and scores."""
    arr, scale, pad = _scan(img)
    if arr is None:
        return []
    _, found = _net(arr.shape[1], arr.shape[0]).detect(arr)
    out = []
    for row in (found if found is not None else []):
        pts = row[:14].astype(np.float64) / scale - pad
        box = tuple(float(v) for v in (pts[0], pts[1], row[2] / scale, row[3] / scale))
        out.append(Detection(box, pts[4:14].reshape(5, 2), float(row[14])))
    return sorted(out, key=lambda d: (d.box[0], d.box[1]))
