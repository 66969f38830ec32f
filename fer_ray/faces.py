"""Where the faces are in an image: `detect(img)` -> face boxes. How a box becomes the model's
input (and the auto/crop/detect modes) is framing.py's job.

The detector is OpenCV's Haar cascade `haarcascade_frontalface_alt2.xml`, which ships inside the
opencv-python-headless 4.x wheel (cv2.data.haarcascades); nothing is downloaded at run time.
OpenCV 5 dropped CascadeClassifier and the XML files, hence the `<5` pin in pyproject.toml.
Why alt2: on FER-2013 PublicTest crops it finds about as many faces as `default` and more than
`alt`, and, unlike `default`, reports no face in scikit-learn's flower photo (`default` finds
three or four) or in generated noise, gradients and shapes.

Boxes are (x, y, w, h) in pixels of the upright image (decode applied EXIF orientation), sorted
left-to-right then top-to-bottom. Small images (shorter side under SMALL_SIDE: face crops) are
scanned with a border of repeated edge pixels and upsampled, so a face that fills or overflows
the crop is found, and its box may reach past the image. Margin: none by default (MARGIN = 0);
`detect(img, margin=m)` grows each side by m * the box side.

Limits: frontal and near-frontal faces only (profiles, strong tilts, heavy occlusion and faces
under 32 px are missed). Recall at IoU > 0.5 on 300 PublicTest crops: 0.73 pasted on a plain
canvas, 0.75 in a blurred surround. False positives on textured backgrounds are possible. Large photos are downscaled to
MAX_SIDE on their longer side before detection (for speed), so there faces smaller than about
MIN_FACE_PX * side / MAX_SIDE pixels of the original are missed. Cost: ~120 ms of one core per
640x480 photo.
"""

from __future__ import annotations

import os
import threading

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # x, y, w, h in pixels of the upright image

CASCADE_FILE = "haarcascade_frontalface_alt2.xml"
MAX_SIDE = 1024          # longer side of the image the detector scans (bigger images are downscaled)
# Smallest face reported, in detector pixels (the cascade window is 20x20). 32, not 24: a face under
# 32 px is a poor 48x48 model input anyway, and the smallest scales cost the most (640x480 photo,
# one thread: 155 ms at 24 px, 117 ms at 32 px).
MIN_FACE_PX = 32
MIN_FACE_FRACTION = 0.04  # ... and at least this fraction of the image's shorter side
SCALE_FACTOR = 1.1       # pyramid step: smaller finds more sizes, slower
MIN_NEIGHBORS = 4        # overlapping hits needed to keep a face: higher = fewer false positives
MARGIN = 0.0             # see the module docstring
SMALL_SIDE = 160         # images with a shorter side below this are crops: padded and upsampled first
SMALL_PAD = 0.25         # ... by this fraction of their shorter side on every edge
UPSAMPLE_TO = 216        # ... to this shorter side (3x a 48-px crop with its border)
# In a crop, only faces of 0.35-1.6x its side matter (a smaller one is a poor model input anyway):
# scanning only those scales cut detection from 19 to 5 ms per 48-px crop (3x upsampled) at the same hit rate.
SMALL_FACE_RANGE = (0.35, 1.6)

_local = threading.local()  # CascadeClassifier keeps per-call scratch state: one per thread
_import_lock = threading.Lock()  # threads importing cv2 at once can see a half-initialised module


class DetectorUnavailable(RuntimeError):
    """The cascade cannot be loaded (an OpenCV build without it); a per-image error, not a crash."""


def _cascade():
    cascade = getattr(_local, "cascade", None)
    if cascade is None:
        with _import_lock:
            return _load_cascade()
    return cascade


def _load_cascade():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - opencv-python-headless is a dependency
        raise DetectorUnavailable(f"face detection needs opencv-python-headless: {exc}") from None
    root = getattr(getattr(cv2, "data", None), "haarcascades", "") or ""
    path = os.path.join(root, CASCADE_FILE)
    if not hasattr(cv2, "CascadeClassifier") or not os.path.exists(path):
        raise DetectorUnavailable(f"OpenCV {cv2.__version__} has no Haar cascades (need opencv-python-headless<5)")
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise DetectorUnavailable(f"cannot load {path}")
    _local.cascade = cascade
    return cascade


def _gray(img: Image.Image) -> Image.Image:
    from .preprocess import to_gray  # the same grayscale the model's input is made from

    return to_gray(img)


def _scan_image(gray: Image.Image) -> tuple[np.ndarray, float, int, tuple | None]:
    """The array the cascade scans, its scale from the image, the border added around it and the
    largest face to look for (None: any).
    Small images (crops) get a border of repeated edge pixels, so that a face filling or
    overflowing the frame can still be found, and are upsampled: the cascade's smallest window is
    20 px and it misses faces that fill less than ~1.5 windows."""
    width, height = gray.size
    if min(width, height) < SMALL_SIDE:
        pad = max(1, round(SMALL_PAD * min(width, height)))
        arr = np.pad(np.asarray(gray, dtype=np.uint8), pad, mode="edge")
        scale = UPSAMPLE_TO / min(arr.shape)
        big = Image.fromarray(arr).resize((round(arr.shape[1] * scale), round(arr.shape[0] * scale)), Image.BICUBIC)
        return np.asarray(big, dtype=np.uint8), scale, pad, min(width, height) * scale
    scale = min(1.0, MAX_SIDE / max(width, height))
    if scale < 1.0:
        gray = gray.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                           Image.BILINEAR, reducing_gap=2.0)
    return np.asarray(gray, dtype=np.uint8), scale, 0, None


def detect(img: Image.Image, margin: float = MARGIN) -> list[Box]:
    """Face boxes (x, y, w, h) in pixels of `img`; in small images a box may reach past the frame
    (a face cut by the border), so callers clip or pad."""
    arr, scale, pad, crop_side = _scan_image(_gray(img))
    min_side = max(MIN_FACE_PX, int(MIN_FACE_FRACTION * min(arr.shape)))
    max_side = (0, 0)  # no limit
    if crop_side is not None:
        min_side = max(min_side, int(SMALL_FACE_RANGE[0] * crop_side))
        max_side = (int(SMALL_FACE_RANGE[1] * crop_side),) * 2
    if min(arr.shape) < min_side:
        return []
    # No histogram equalisation: measured, it lowered recall on FER crops (0.75 vs 0.77 at IoU > 0.5)
    # and added false boxes on plain backgrounds.
    found = _cascade().detectMultiScale(
        arr, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS, minSize=(min_side, min_side), maxSize=max_side)
    boxes = []
    for x, y, w, h in (found if len(found) else []):
        x, y, w, h = (float(v) / scale for v in (x, y, w, h))
        x, y = x - pad, y - pad
        x, y, w, h = x - margin * w, y - margin * h, w * (1 + 2 * margin), h * (1 + 2 * margin)
        boxes.append((round(x), round(y), round(w), round(h)))
    return sorted(_drop_nested(boxes), key=lambda b: (b[0], b[1]))


def _drop_nested(boxes: list[Box], inside: float = 0.6) -> list[Box]:
    """Drop a box lying mostly (>= `inside` of its area) within a larger one: the cascade
    sometimes adds a second, smaller hit on the same face (eyes-and-nose); two real faces
    rarely overlap that much."""
    kept: list[Box] = []
    for b in sorted(boxes, key=lambda b: -b[2] * b[3]):
        bx, by, bw, bh = b
        if not any(
            max(0, min(bx + bw, kx + kw) - max(bx, kx)) * max(0, min(by + bh, ky + kh) - max(by, ky))
            >= inside * bw * bh
            for kx, ky, kw, kh in kept
        ):
            kept.append(b)
    return kept
