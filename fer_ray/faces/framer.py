"""A learned framing check for face crops: how far a crop's framing is from FER-2013's.

    predict(pixels) -> Framing (scale, angle, dx, dy, face)   uint8 (N,48,48), one batch
    reframe(gray, framing) -> uint8 48x48                       the crop FER-2013 would have made

Training: framer_train.py (`python -m fer_ray.faces.framer_train --data DIR --output DIR`).

The shipped framer lies in fer_ray/bundles/framer (framer.json records how it was trained).

Why: `--faces auto` must tell a crop framed like FER-2013 from one framed otherwise. The detector
(detector.py) answers that one crop at a time, at many times the model's own cost per crop. This
network (0.2 M parameters, int8 on CPU, far cheaper than the model: docs/benchmarks.md, "Model
forward rate"; docs/labeling.md, "Faces") answers it for a whole batch at once: it regresses the similarity transform (zoom, rotation, translation) that takes
FER-2013's canonical framing to the crop it is shown, and whether the crop holds a face at all.

It learns from FER-2013 Training only (framer_train.py). Crops the framer takes for no face, or
for a face smaller than it knows, go to the detector (framing.py decides).

Transform convention: a crop C framed canonically, seen as O(p) = C(A^-1 p) with
A u = scale * R(angle) u + (dx, dy) in normalised coordinates (the side spans [-1, 1]; dx, dy
here are fractions of the side). scale > 1: the face fills more of the frame than in FER-2013.
"""

from __future__ import annotations

import json
import math
import os
import threading
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles", "framer")
WEIGHTS_FILE = "weights.safetensors"
INT8_FILE = "int8.safetensors"  # calibrated observers: int8 on CPU, as for the model (quantize.py)
FLOAT_MODULES = ("head.3",)  # the output layer stays float: int8 steps would blur the readings
META_FILE = "framer.json"
SIZE = 48
# Training ranges (also where predictions are trusted): zoom log-uniform in [0.45, 1.6], rotation
# ±30°, translation ±20 % of the side.
ZOOM = (0.45, 1.6)
ROTATE = 30.0
SHIFT = 0.20
WIDTHS, POOL = (16, 32, 64), 1


class Framing(NamedTuple):
    scale: np.ndarray  # (N,) zoom of the face against FER-2013's framing
    angle: np.ndarray  # (N,) degrees
    dx: np.ndarray  # (N,) fraction of the side
    dy: np.ndarray
    face: np.ndarray  # (N,) probability that the crop holds a face


class FramerNet(nn.Module):
    """Strided convolutions, then a dense head: position matters here, so no global pooling."""

    def __init__(self, widths=WIDTHS, pool: int = POOL):
        super().__init__()
        # framing is coarse: a 24-px view is enough, and a quarter of the compute
        layers, c = [nn.AvgPool2d(pool)] if pool > 1 else [], 1
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        layers += [nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        side = math.ceil(SIZE / pool / 2 ** len(widths))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * side * side, 64), nn.ReLU(inplace=True),
                                  nn.Linear(64, 6))  # log scale, cos, sin, dx, dy, face logit

    def forward(self, x):
        return self.head(self.features(x))


def _inputs(pixels) -> torch.Tensor:
    from ..preprocess import normalize

    return normalize(np.asarray(pixels, dtype=np.uint8)).reshape(-1, 1, SIZE, SIZE)


def _decode(out: torch.Tensor) -> Framing:
    out = out.float()
    angle = torch.atan2(out[:, 2], out[:, 1]) * (180 / math.pi)
    return Framing(torch.exp(out[:, 0]).numpy(), angle.numpy(), out[:, 3].numpy(), out[:, 4].numpy(),
                   torch.sigmoid(out[:, 5]).numpy())


_loaded: dict = {}
_loading = threading.Lock()


def load(path: str = HERE) -> torch.nn.Module | None:
    """The framer at `path` (the shipped one by default), loaded once per process (int8 on CPU
    where it is calibrated, the cheaper by far); None if absent."""
    with _loading:
        if path not in _loaded:
            _loaded[path] = _load(path)
    return _loaded[path]


def _load(path: str) -> torch.nn.Module | None:
    from safetensors.torch import load_file

    from .. import quantize

    file = os.path.join(path, WEIGHTS_FILE)
    if not os.path.exists(file):
        return None
    with open(os.path.join(path, META_FILE)) as f:
        meta = json.load(f)
    net = FramerNet(tuple(meta["widths"]), meta["pool"])
    net.load_state_dict(load_file(file))
    net.eval()
    int8 = os.path.join(path, INT8_FILE)
    if os.path.exists(int8) and quantize.available():
        net = quantize.convert(net, load_file(int8), SIZE, FLOAT_MODULES)
    return net


def predict(pixels, net: FramerNet | None = None) -> Framing | None:
    """uint8 (N, 48, 48) crops -> their Framing (None where no framer is installed)."""
    net = net or load()
    if net is None:
        return None
    with torch.inference_mode():
        return _decode(net(_inputs(pixels)))


def reframe(gray: np.ndarray, scale: float, angle: float, dx: float, dy: float, size: int = SIZE) -> np.ndarray:
    """uint8 (H, W) crop + its predicted framing -> uint8 (size, size) framed as FER-2013 would
    (the crop's border repeats where the canonical frame reaches past it)."""
    from PIL import Image

    h, w = gray.shape
    a = math.radians(angle)
    cos, sin = math.cos(a), math.sin(a)
    # PIL maps continuous output coordinates to input ones: X -> u = X * 2/size - 1 in [-1, 1],
    # then A u, then back to the input's continuous coordinates
    k = 2.0 / size
    ax, ay = scale * w / 2, scale * h / 2
    matrix = (ax * cos * k, -ax * sin * k, w / 2 * (1 + 2 * dx) - ax * (cos - sin),
              ay * sin * k, ay * cos * k, h / 2 * (1 + 2 * dy) - ay * (sin + cos))
    pad = max(h, w)
    big = Image.fromarray(np.pad(gray, pad, mode="edge"))
    shifted = (matrix[0], matrix[1], matrix[2] + pad, matrix[3], matrix[4], matrix[5] + pad)
    out = big.transform((size, size), Image.AFFINE, shifted, resample=Image.BILINEAR)
    return np.asarray(out, dtype=np.uint8)
