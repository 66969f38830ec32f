"""A face's five landmarks -> the 48x48 crop FER-2013 would have made of it, eyes levelled.

FER-2013 was made by registering detected faces to one framing, and a model trained on it knows
that framing only. We measured where the detector (detector.py) puts the five landmarks inside
FER-2013 Training crops (`benchmarks/bench_faces.py --framing DATA`: 3,000 random crops, each
scanned the way a crop is, with a border of a quarter of its side; figures in docs/benchmarks.md,
"Faces"): TEMPLATE holds the median position of each landmark, as a fraction of the crop's side.

`align` fits the similarity transform (rotation, one scale, shift) that takes a face's landmarks
closest to TEMPLATE (least squares) and warps the image with it: the eyes end up where FER-2013's
eyes are, level as there, the face at FER-2013's size. What falls outside the image repeats the
border pixels, as training's augmentation does, never black. A face much larger than 48 px is
first shrunk with area averaging, so that the crop is not aliased.
"""

from __future__ import annotations

import math

import numpy as np

# Median landmark positions in FER-2013 Training crops (x, y as fractions of the side): the eye on
# the image's left, the other eye, the nose tip, the mouth corner on the left, the other corner.
TEMPLATE = np.array([[0.3257, 0.3994], [0.6746, 0.3852], [0.5031, 0.5906], [0.3713, 0.7573], [0.6594, 0.7456]])
# A crop counts as framed like FER-2013 when the alignment would change it by less than this
# (about the 25th-75th percentiles of the landmark measurement): shift of the centre as a
# fraction of the side, zoom, and rotation.
CANONICAL_OFFSET = 0.05
CANONICAL_ZOOM = (0.87, 1.15)
CANONICAL_ANGLE = 8.0  # degrees


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity matrix M (rotation, scale, shift) minimising |M src - dst|^2 (Umeyama)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    var = (s ** 2).sum()
    if var <= 1e-12:
        raise ValueError("degenerate landmarks")
    a = (s * d).sum() / var  # scale * cos
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / var  # scale * sin
    rot = np.array([[a, -b], [b, a]])
    return np.hstack([rot, (md - rot @ ms)[:, None]])


def transform(landmarks, size: int) -> np.ndarray:
    """The matrix taking image pixels to the (size x size) canonical crop of the face."""
    return similarity(landmarks, TEMPLATE * size)


def align(gray: np.ndarray, landmarks, size: int = 48) -> np.ndarray:
    """uint8 (H, W) image + a face's (5, 2) landmarks -> uint8 (size, size), framed like FER-2013."""
    import cv2

    m = transform(landmarks, size)
    scale = math.hypot(m[0, 0], m[1, 0])
    # The source square the crop covers, with a pixel of margin for the interpolation.
    inv = cv2.invertAffineTransform(m)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64) @ inv.T
    x0, y0 = np.floor(corners.min(0)).astype(int) - 2
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 2
    region = _region(gray, x0, y0, x1, y1)
    shift = np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], np.float64)
    if scale < 0.5:  # shrink by area first: bilinear sampling alone would alias
        small = (max(1, round(region.shape[1] * scale * 2)), max(1, round(region.shape[0] * scale * 2)))
        shift = shift @ np.diag([region.shape[1] / small[0], region.shape[0] / small[1], 1.0])
        region = cv2.resize(region, small, interpolation=cv2.INTER_AREA)
    local = m @ shift
    return cv2.warpAffine(region, local, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _region(gray: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """gray[y0:y1, x0:x1], the image's border repeated where that reaches past it (the repeat is
    of the nearest edge, so never more than the region is allocated)."""
    h, w = gray.shape
    ys = np.clip(np.arange(y0, y1), 0, h - 1)
    xs = np.clip(np.arange(x0, x1), 0, w - 1)
    if 0 <= x0 and x1 <= w and 0 <= y0 and y1 <= h:
        return np.ascontiguousarray(gray[y0:y1, x0:x1])
    return np.ascontiguousarray(gray[np.ix_(ys, xs)])


def is_canonical(landmarks, width: int, height: int) -> bool:
    """Whether a roughly square crop already holds its face the way FER-2013 crops do: aligning
    it would move, zoom and turn it by less than the CANONICAL_* bounds."""
    side = min(width, height)
    m = transform(landmarks, side)  # canonical crop at the crop's own size: identity if canonical
    zoom = math.hypot(m[0, 0], m[1, 0])
    angle = math.degrees(math.atan2(m[1, 0], m[0, 0]))
    centre = m[:, :2] @ np.array([width / 2, height / 2]) + m[:, 2]
    offset = np.abs(centre - side / 2).max() / side
    return (offset <= CANONICAL_OFFSET and CANONICAL_ZOOM[0] <= zoom <= CANONICAL_ZOOM[1]
            and abs(angle) <= CANONICAL_ANGLE and max(width, height) <= 1.25 * side)
