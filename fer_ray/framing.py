"""From a decoded image to the model's inputs: which faces, framed the way FER-2013 frames them.

    faces(img, mode) -> [Face(box, pixels, source)]   the one path every consumer uses
    faces_many(imgs, mode) -> [[Face], ...]             the same for a batch of images
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
- `auto` (default): a crop-sized image (shorter side <= 256 px, roughly square) is first read by
  the framer (framer.py, one batch for many crops): a face smaller than FER-2013's or tilted is
  re-framed from that reading (`detected`); any other face goes in as it is (`as-framed`). Photos, and crops the framer takes for no face (or for a face
  smaller than it knows), go to the detector: every face found is re-framed (`detected`); a crop
  whose one face already sits where FER-2013 puts it goes in as it is (`as-framed`); an image
  with no face found goes in whole (`whole-image`) - labelled, never dropped.
- `crop`: the image is a face crop: it goes in whole (`whole-image`).
- `detect`: every face found, re-framed (`detected`); none found -> no face (the caller's row says so).
"""

from __future__ import annotations

import concurrent.futures as cf
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import faces as detector
from . import framer
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
# The framer (framer.py) reads crops first: a face (probability >= FRAMER_FACE) smaller than
# FER-2013's by more than FRAMER_ZOOM, or tilted by more than FRAMER_ANGLE, is re-framed from the
# reading (worth_reframing); any other face goes in as it is; a crop it takes for no face, or for
# a face smaller than its training range, goes to the detector.
FRAMER_FACE = 0.5
FRAMER_MIN_ZOOM = 0.5
FRAMER_ZOOM = math.log(1.15)  # log of the zoom
FRAMER_ANGLE = 8.0  # degrees

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
    return faces_many([img], mode, size)[0]


def faces_many(imgs: list, mode: str = "auto", size: int = INPUT_SIZE) -> list[list[Face]]:
    """`faces` of several images: in `auto`, the framer looks at all the crop-like ones in one batch."""
    if mode not in MODES:
        raise ValueError(f"unknown faces mode {mode!r} (choose from {', '.join(MODES)})")
    grays = [to_gray(img) for img in imgs]
    hints = _framings(grays) if mode == "auto" else {}
    return [_faces(g, mode, size, hints.get(k)) for k, g in enumerate(grays)]


def crop_like(width: int, height: int) -> bool:
    """Whether an image of this size is read by the framer first (in `auto`): a face crop, not a photo."""
    return min(width, height) <= CROP_MAX_SIDE and max(width, height) <= 1.25 * min(width, height)


def _framings(grays: list) -> dict:
    """{index: (the framer's reading, the crop at the framer's 48 px)} for the crop-like images
    among `grays` (empty without a framer)."""
    picked = [k for k, g in enumerate(grays) if crop_like(*g.size)]
    if not picked:
        return {}
    small = np.stack([_whole(grays[k], framer.SIZE) for k in picked])
    read = framer.predict(small)
    if read is None:
        return {}
    rows = np.stack(read, 1).tolist()  # plain floats: cheaper to test one by one than numpy scalars
    return {k: (framer.Framing(*rows[j]), small[j]) for j, k in enumerate(picked)}


def _faces(gray: Image.Image, mode: str, size: int, hint=None) -> list[Face]:
    width, height = gray.size
    whole = (0, 0, width, height)
    if mode == "crop":
        return [Face(whole, _whole(gray, size), "whole-image")]
    if hint is not None and hint[0].face >= FRAMER_FACE and hint[0].scale >= FRAMER_MIN_ZOOM:
        read, small = hint
        if not worth_reframing(read):
            return [Face(whole, small if size == framer.SIZE else _whole(gray, size), "as-framed")]
        box = framer_box(width, height, read.scale, read.dx, read.dy)
        pixels = framer.reframe(np.asarray(gray, dtype=np.uint8), read.scale, read.angle, read.dx, read.dy, size)
        return [Face(_clip(box, width, height), pixels, "detected")]
    boxes = detector.detect(gray)
    if mode == "auto":
        if not boxes:
            return [Face(whole, _whole(gray, size), "whole-image")]
        if len(boxes) == 1 and min(width, height) <= CROP_MAX_SIDE and is_canonical(boxes[0], width, height):
            return [Face(whole, _whole(gray, size), "as-framed")]
    arr = np.asarray(gray, dtype=np.uint8)
    return [Face(_clip(b, width, height), frame(arr, b, size), "detected") for b in boxes]


def framer_box(width: int, height: int, scale: float, dx: float, dy: float) -> tuple[float, float, float, float]:
    """The face box (x, y, w, h; may reach past the image) of a crop as the framer reads it:
    FER-2013's canonical crop spans `scale` times the crop's side around the read centre, and
    holds its face box where CENTRE_X/Y and SIDE say."""
    side_w, side_h = scale * width, scale * height
    x0 = width / 2 * (1 + 2 * dx) - side_w / 2
    y0 = height / 2 * (1 + 2 * dy) - side_h / 2
    fw, fh = SIDE * side_w, SIDE * side_h
    return x0 + CENTRE_X * side_w - fw / 2, y0 + CENTRE_Y * side_h - fh / 2, fw, fh


def worth_reframing(hint) -> bool:
    """Whether re-framing a crop from the framer's reading gains the model anything: a face smaller
    than FER-2013's (more of its pixels to use), or tilted. A tighter or off-centre face stays as
    it is: re-framing it would have to invent what lies past the crop's border, and the model,
    trained with zoom and shifts, reads it better as it is (chosen on PublicTest under shifts)."""
    zoom = math.log(hint.scale)
    return zoom < -FRAMER_ZOOM or (abs(hint.angle) > FRAMER_ANGLE and zoom <= FRAMER_ZOOM)


def from_bytes(data: bytes, mode: str = "auto", size: int = INPUT_SIZE) -> tuple[int, int, list[Face]]:
    """Image bytes -> (width, height, faces): what the labeler and the server do with each image.
    Raises preprocess.DecodeError for bytes that are no usable image."""
    img = decode(data)
    return img.width, img.height, faces(img, mode, size)


def frame_crops(pixels, mode: str = "auto", threads: int | None = None) -> tuple[np.ndarray, dict]:
    """uint8 (N, H, W) crops -> each through `faces` (the first face; the whole crop where `detect`
    finds none) as uint8 (N, 48, 48), and how many came from each source."""
    from .evaluate import available_cores

    imgs = [Image.fromarray(np.ascontiguousarray(px)) for px in np.asarray(pixels)]
    hints = _framings(imgs) if mode == "auto" else {}

    def one(k):
        found = _faces(imgs[k], mode, INPUT_SIZE, hints.get(k))
        return (found[0].pixels, found[0].source) if found else (_whole(imgs[k], INPUT_SIZE), "whole-image")

    with cf.ThreadPoolExecutor(threads or available_cores()) as pool:  # OpenCV releases the GIL
        done = list(pool.map(one, range(len(imgs))))
    sources = {s: 0 for s in SOURCES}
    for _, s in done:
        sources[s] += 1
    return np.stack([p for p, _ in done]).astype(np.uint8), sources
