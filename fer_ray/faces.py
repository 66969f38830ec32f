"""Where the faces are in an image.

`crop` mode: the image is already a face crop (FER-style) -> one box, the whole image.
`detect` mode: photos in the wild -> one box per detected face (may be none).

The detector is OpenCV's Haar cascade `haarcascade_frontalface_alt2.xml`, which ships inside the
opencv-python-headless 4.x wheel (cv2.data.haarcascades); nothing is downloaded at run time.
OpenCV 5 dropped CascadeClassifier and the XML files, hence the `<5` pin in pyproject.toml.
Why alt2: on FER-2013 PublicTest crops it finds about as many faces as `default` and more than
`alt`, and, unlike `default`, reports no face in scikit-learn's flower photo (`default` finds
three or four) or in generated noise, gradients and shapes.

Boxes are (x, y, w, h) in pixels of the upright image (decode applied EXIF orientation), sorted
left-to-right then top-to-bottom, clipped to the image. Margin: none by default (MARGIN = 0).
Measured (benchmarks/bench_faces.py --recall 300) on FER-2013 PublicTest crops upscaled to 140 px,
the alt2 box already frames a face the way FER-2013 crops do: its side is a median 0.98-1.01x the
crop side (quartiles 0.92-1.08x), centred within 1-2 %. Growing it would make faces smaller than
the model saw in training. `detect(img, margin=m)` grows each side by m * the box side for
callers that want more context.

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

MODES = ("crop", "detect")

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

_local = threading.local()  # CascadeClassifier keeps per-call scratch state: one per thread


class DetectorUnavailable(RuntimeError):
    """The cascade cannot be loaded (an OpenCV build without it); a per-image error, not a crash."""


def _cascade():
    cascade = getattr(_local, "cascade", None)
    if cascade is None:
        try:
            import cv2
        except ImportError as exc:  # pragma: no cover - opencv-python-headless is a dependency
            raise DetectorUnavailable(f"face detection needs opencv-python-headless: {exc}") from None
        root = getattr(getattr(cv2, "data", None), "haarcascades", "") or ""
        path = os.path.join(root, CASCADE_FILE)
        if not hasattr(cv2, "CascadeClassifier") or not os.path.exists(path):
            raise DetectorUnavailable(
                f"OpenCV {cv2.__version__} has no Haar cascades (need opencv-python-headless<5)")
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise DetectorUnavailable(f"cannot load {path}")
        _local.cascade = cascade
    return cascade


def _gray(img: Image.Image) -> Image.Image:
    from .preprocess import to_gray  # the same grayscale the model's input is made from

    return to_gray(img)


def detect(img: Image.Image, margin: float = MARGIN) -> list[Box]:
    import cv2

    width, height = img.size
    gray = _gray(img)
    scale = min(1.0, MAX_SIDE / max(width, height))
    if scale < 1.0:
        gray = gray.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                           Image.BILINEAR, reducing_gap=2.0)
    arr = np.asarray(gray, dtype=np.uint8)
    min_side = max(MIN_FACE_PX, int(MIN_FACE_FRACTION * min(arr.shape)))
    if min(arr.shape) < min_side:
        return []
    # No histogram equalisation: measured, it lowered recall on FER crops (0.75 vs 0.77 at IoU > 0.5)
    # and added false boxes on plain backgrounds.
    found = _cascade().detectMultiScale(
        arr, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS, minSize=(min_side, min_side))
    boxes = []
    for x, y, w, h in (found if len(found) else []):
        x, y, w, h = (float(v) / scale for v in (x, y, w, h))
        x, y, w, h = x - margin * w, y - margin * h, w * (1 + 2 * margin), h * (1 + 2 * margin)
        x0, y0 = max(0, round(x)), max(0, round(y))
        x1, y1 = min(width, round(x + w)), min(height, round(y + h))
        if x1 > x0 and y1 > y0:
            boxes.append((x0, y0, x1 - x0, y1 - y0))
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


def find(img: Image.Image, mode: str = "crop") -> list[Box]:
    if mode == "crop":
        return [(0, 0, img.width, img.height)]
    if mode == "detect":
        return detect(img)
    raise ValueError(f"unknown faces mode {mode!r} (choose from {', '.join(MODES)})")
