"""From a decoded image to the model's inputs: which faces, framed the way FER-2013 frames them.

    faces(img, mode) -> [Face(box, pixels, source)]   the one path every consumer uses
    from_bytes(data, mode) -> (width, height, faces)  the same from image bytes
    frame(gray, box) -> uint8 48x48                     a face box -> the crop the model expects
    frame_crops(pixels, mode) -> (uint8 (N,48,48), counts)   a batch of crops from elsewhere

FER-2013 was made by registering detected faces to one framing, and a model trained on it knows
that framing only. We measured where this project's detector (faces.detect) puts the face box
inside FER-2013 Training crops (`benchmarks/bench_faces.py --framing DATA`, 1,000 random crops, each
padded by a quarter of its side so that boxes may reach past the frame, upsampled 3x): the box
centre sits at (0.500, 0.497) of the crop side (quartiles 0.486-0.517 across, 0.479-0.510 down)
and the box side is 0.965 of the crop side (quartiles 0.90-1.02; 5-95 %: 0.70-1.12). So a face
box becomes a square of side box/0.965 around the box centre; what falls outside the image
repeats the border pixels (as training's augmentation does), never black.

Modes:
- `auto` (default): find faces; a small image whose one face already sits where FER-2013 puts it
  goes in as it is (`as-framed`); otherwise every face found is re-framed (`detected`); an image
  with no face found goes in whole (`whole-image`) - labelled, never dropped.
- `crop`: the image is a face crop: it goes in whole (`whole-image`).
- `detect`: every face found, re-framed (`detected`); none found -> no face (the caller's row says so).
"""

from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import faces as detector
from .preprocess import INPUT_SIZE, decode, to_gray

MODES = ("auto", "crop", "detect")
SOURCES = ("as-framed", "detected", "whole-image")

# Measured on FER-2013 Training (see the module docstring): the face box in the crop's frame.
CENTRE_X, CENTRE_Y = 0.500, 0.497
SIDE = 0.965
# An image counts as framed like FER-2013 when its one face box lies within these bounds (about the
# 10th-90th percentiles of the measurement): centre offset from the canonical one, side ratio.
CANONICAL_OFFSET = 0.05
CANONICAL_SIDE = (0.85, 1.15)
# Images below this size (shorter side) are crops, not photos: "as-framed" is only considered there.
CROP_MAX_SIDE = 256

Box = tuple[int, int, int, int]


@dataclass
class Face:
    box: Box  # x, y, w, h in pixels of the upright image, clipped to it
    pixels: np.ndarray  # uint8 (48, 48): the model's input before normalisation
    source: str  # one of SOURCES


def frame_box(box, size: int | None = None) -> tuple[float, float, float]:
    """A face box (x, y, w, h; may reach past the image) -> the square crop (x0, y0, side) that
    frames it as FER-2013 does."""
    x, y, w, h = (float(v) for v in box)
    side = max(w, h) / SIDE
    cx, cy = x + w / 2, y + h / 2
    return cx - CENTRE_X * side, cy - CENTRE_Y * side, side


def frame(gray: np.ndarray, box, size: int = INPUT_SIZE) -> np.ndarray:
    """uint8 (H, W) grayscale image + face box -> uint8 (size, size), the canonical crop (borders
    repeated where the crop reaches past the image)."""
    h, w = gray.shape
    x0, y0, side = frame_box(box)
    ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
    ix1, iy1 = int(np.ceil(x0 + side)), int(np.ceil(y0 + side))
    inner = gray[max(0, iy0):max(0, min(h, iy1)), max(0, ix0):max(0, min(w, ix1))]
    if inner.size == 0:  # the box lies wholly outside the image: nothing of it to show
        raise ValueError("face box outside the image")
    pad = ((max(0, -iy0), max(0, iy1 - h)), (max(0, -ix0), max(0, ix1 - w)))
    region = np.pad(inner, pad, mode="edge") if any(p for pair in pad for p in pair) else inner
    crop = Image.fromarray(np.ascontiguousarray(region))
    # the integer region is at most a pixel larger than the exact square: crop it to the exact one
    exact = (x0 - ix0, y0 - iy0, x0 - ix0 + side, y0 - iy0 + side)
    return np.asarray(crop.resize((size, size), Image.BILINEAR, box=exact, reducing_gap=3.0), dtype=np.uint8)


def is_canonical(box, width: int, height: int) -> bool:
    """Whether a face box sits in the image the way FER-2013 crops hold their face."""
    x, y, w, h = (float(v) for v in box)
    side = min(width, height)
    cx, cy = (x + w / 2) / width, (y + h / 2) / height
    ratio = max(w, h) / side
    return (abs(cx - CENTRE_X) <= CANONICAL_OFFSET and abs(cy - CENTRE_Y) <= CANONICAL_OFFSET
            and CANONICAL_SIDE[0] <= ratio <= CANONICAL_SIDE[1] and max(width, height) <= 1.25 * side)


def _clip(box, width: int, height: int) -> Box:
    x, y, w, h = (float(v) for v in box)
    x0, y0 = max(0, round(x)), max(0, round(y))
    x1, y1 = min(width, round(x + w)), min(height, round(y + h))
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


def _whole(gray: Image.Image, size: int) -> np.ndarray:
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    return np.asarray(gray, dtype=np.uint8)


def faces(img: Image.Image, mode: str = "auto", size: int = INPUT_SIZE) -> list[Face]:
    """The model inputs of one decoded image, one per face (see the module docstring for modes)."""
    if mode not in MODES:
        raise ValueError(f"unknown faces mode {mode!r} (choose from {', '.join(MODES)})")
    gray = to_gray(img)
    width, height = gray.size
    whole = (0, 0, width, height)
    if mode == "crop":
        return [Face(whole, _whole(gray, size), "whole-image")]
    boxes = detector.detect(gray)
    if mode == "auto":
        if not boxes:
            return [Face(whole, _whole(gray, size), "whole-image")]
        if len(boxes) == 1 and min(width, height) <= CROP_MAX_SIDE and is_canonical(boxes[0], width, height):
            return [Face(whole, _whole(gray, size), "as-framed")]
    arr = np.asarray(gray, dtype=np.uint8)
    return [Face(_clip(b, width, height), frame(arr, b, size), "detected") for b in boxes]


def from_bytes(data: bytes, mode: str = "auto", size: int = INPUT_SIZE) -> tuple[int, int, list[Face]]:
    """Image bytes -> (width, height, faces): what the labeler and the server do with each image.
    Raises preprocess.DecodeError for bytes that are no usable image."""
    img = decode(data)
    return img.width, img.height, faces(img, mode, size)


def frame_crops(pixels, mode: str = "auto", threads: int | None = None) -> tuple[np.ndarray, dict]:
    """uint8 (N, H, W) crops -> each through `faces` (the first face; the whole crop where `detect`
    finds none) as uint8 (N, 48, 48), and how many came from each source."""
    from .evaluate import available_cores

    def one(px):
        found = faces(Image.fromarray(np.ascontiguousarray(px)), mode)
        return (found[0].pixels, found[0].source) if found else (_whole(Image.fromarray(px), INPUT_SIZE), "whole-image")

    with cf.ThreadPoolExecutor(threads or available_cores()) as pool:  # OpenCV releases the GIL
        done = list(pool.map(one, np.asarray(pixels)))
    sources = {s: 0 for s in SOURCES}
    for _, s in done:
        sources[s] += 1
    return np.stack([p for p, _ in done]).astype(np.uint8), sources
