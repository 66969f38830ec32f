"""From a decoded image to the model's inputs: which faces, framed the way FER-2013 frames them.

    faces(img, mode) -> [Face(box, pixels, face_source, score)]   the one path every consumer uses
    faces_many(imgs, mode) -> [[Face], ...]                       the same for a batch of images
    frame_crops(pixels, mode) -> (uint8 (N,48,48), counts)        a batch of crops from elsewhere

Crops and photos (detector.crop_like): an image whose shorter side is at most 256 px and whose
longer side is at most 1.25 times that is a face crop; anything else is a photo.

Modes:
- `auto` (default): a crop is first read by the framer (framer.py, one batch for many crops): a
  face smaller than FER-2013's or tilted is re-framed from that reading (`detected`); any other
  face goes in as it is (`as-framed`). Crops the framer takes for no face (or for a face smaller
  than it knows) go to the detector: a face found is aligned (align.py) unless it already sits
  where FER-2013 puts it (`as-framed`); a crop without a face found goes in whole
  (`whole-image`): the user said it is a face. A photo goes to the detector, and every face found
  is aligned (`detected`); a photo without a face found has no face to label: the caller writes
  one row with face_source NO_FACE and no label.
- `crop`: the image is a face crop: it goes in whole (`whole-image`).
- `detect`: every face found, aligned (`detected`); none found -> no face (NO_FACE), crops too.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..preprocess import INPUT_SIZE, full_size, to_gray, to_gray48
from ..schema import FACE_MODES
from . import align, detector, framer
from .detector import crop_like

MODES = FACE_MODES
FACE_SOURCES = ("as-framed", "detected", "whole-image")

# Where the detector's face box sits in a FER-2013 crop (medians over 3,000 Training crops, as
# fractions of the side; benchmarks/bench_faces.py --framing): the box the framer path reports.
BOX_CENTRE = (0.503, 0.516)
BOX_SIZE = (0.766, 1.018)
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
    face_source: str  # how the face was found, one of FACE_SOURCES: the output's face_source column
    score: float | None = None  # the detector's score (None: not from the detector)


def _clip(box, width: int, height: int) -> Box:
    x, y, w, h = (float(v) for v in box)
    x0, y0 = max(0, round(x)), max(0, round(y))
    x1, y1 = min(width, round(x + w)), min(height, round(y + h))
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


def faces(img: Image.Image, mode: str = "auto", size: int = INPUT_SIZE) -> list[Face]:
    """The model inputs of one decoded image, one per face (see the module docstring for modes)."""
    return faces_many([img], mode, size)[0]


def faces_many(imgs: list, mode: str = "auto", size: int = INPUT_SIZE) -> list[list[Face]]:
    """`faces` of several images: in `auto`, the framer looks at all the crops in one batch."""
    if mode not in MODES:
        raise ValueError(f"unknown faces mode {mode!r} (choose from {', '.join(MODES)})")
    grays = [to_gray(img) for img in imgs]
    hints = _framings(grays) if mode == "auto" else {}
    return [_in_full_size(_faces(img, g, mode, size, hints.get(k)), img) for k, (img, g) in enumerate(zip(imgs, grays))]


def _in_full_size(found: list[Face], img: Image.Image) -> list[Face]:
    """Boxes in pixels of the file, where decode reduced a large JPEG (preprocess.full_size)."""
    width, height = full_size(img)
    if (width, height) != img.size:
        kx, ky = width / img.width, height / img.height
        for f in found:
            x, y, w, h = f.box
            f.box = _clip((x * kx, y * ky, w * kx, h * ky), width, height)
    return found


def _framings(grays: list) -> dict:
    """{index: (the framer's reading, the crop at the framer's 48 px)} for the crops among
    `grays` (empty without a framer)."""
    picked = [k for k, g in enumerate(grays) if crop_like(*g.size)]
    if not picked:
        return {}
    small = np.stack([to_gray48(grays[k], framer.SIZE) for k in picked])
    read = framer.predict(small)
    if read is None:
        return {}
    rows = np.stack(read, 1).tolist()  # plain floats: cheaper to test one by one than numpy scalars
    return {k: (framer.Framing(*rows[j]), small[j]) for j, k in enumerate(picked)}


def _faces(img: Image.Image, gray: Image.Image, mode: str, size: int, hint=None) -> list[Face]:
    width, height = gray.size
    whole = (0, 0, width, height)
    if mode == "crop":
        return [Face(whole, to_gray48(gray, size), "whole-image")]
    if hint is not None and hint[0].face >= FRAMER_FACE and hint[0].scale >= FRAMER_MIN_ZOOM:
        read, small = hint
        if not worth_reframing(read):
            return [Face(whole, small if size == framer.SIZE else to_gray48(gray, size), "as-framed")]
        box = framer_box(width, height, read.scale, read.dx, read.dy)
        pixels = framer.reframe(np.asarray(gray, dtype=np.uint8), read.scale, read.angle, read.dx, read.dy, size)
        return [Face(_clip(box, width, height), pixels, "detected")]
    found = detector.detect(img)
    if mode == "auto" and crop_like(width, height):
        if not found:
            return [Face(whole, to_gray48(gray, size), "whole-image")]
        if len(found) == 1 and align.is_canonical(found[0].landmarks, width, height):
            return [Face(whole, to_gray48(gray, size), "as-framed", found[0].score)]
    arr = np.asarray(gray, dtype=np.uint8)
    out = []
    for d in found:
        try:
            pixels = align.align(arr, d.landmarks, size)
        except ValueError:  # landmarks on one point: no face to frame
            continue
        out.append(Face(_clip(d.box, width, height), pixels, "detected", d.score))
    return out


def framer_box(width: int, height: int, scale: float, dx: float, dy: float) -> tuple[float, float, float, float]:
    """The face box (x, y, w, h; may reach past the image) of a crop as the framer reads it:
    FER-2013's canonical crop spans `scale` times the crop's side around the read centre, and
    holds its face box where BOX_CENTRE and BOX_SIZE say."""
    side_w, side_h = scale * width, scale * height
    x0 = width / 2 * (1 + 2 * dx) - side_w / 2
    y0 = height / 2 * (1 + 2 * dy) - side_h / 2
    fw, fh = BOX_SIZE[0] * side_w, BOX_SIZE[1] * side_h
    return x0 + BOX_CENTRE[0] * side_w - fw / 2, y0 + BOX_CENTRE[1] * side_h - fh / 2, fw, fh


def worth_reframing(hint) -> bool:
    """Whether re-framing a crop from the framer's reading gains the model anything: a face smaller
    than FER-2013's (more of its pixels to use), or tilted. A tighter or off-centre face stays as
    it is: re-framing it would have to invent what lies past the crop's border, and the model,
    trained with zoom and shifts, reads it better as it is (chosen on PublicTest under shifts)."""
    zoom = math.log(hint.scale)
    return zoom < -FRAMER_ZOOM or (abs(hint.angle) > FRAMER_ANGLE and zoom <= FRAMER_ZOOM)


def frame_crops(pixels, mode: str = "auto", threads: int | None = None) -> tuple[np.ndarray, dict]:
    """uint8 (N, H, W) crops -> each through `faces` (the first face; the whole crop where `detect`
    finds none) as uint8 (N, 48, 48), and how many crops got each face_source."""
    from ..placement import available_cores

    imgs = [Image.fromarray(np.ascontiguousarray(px)) for px in np.asarray(pixels)]
    hints = _framings(imgs) if mode == "auto" else {}

    def one(k):
        found = _faces(imgs[k], imgs[k], mode, INPUT_SIZE, hints.get(k))
        return (found[0].pixels, found[0].face_source) if found else (to_gray48(imgs[k], INPUT_SIZE), "whole-image")

    with cf.ThreadPoolExecutor(threads or available_cores()) as pool:  # OpenCV releases the GIL
        done = list(pool.map(one, range(len(imgs))))
    counts = {s: 0 for s in FACE_SOURCES}
    for _, s in done:
        counts[s] += 1
    return np.stack([p for p, _ in done]).astype(np.uint8), counts
