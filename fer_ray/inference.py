"""Inference: normalised crops -> class probabilities, optionally with 10-view test-time
augmentation in plain torch ops. The Recognizer (recognizer.py) makes this call for every
consumer: labeling, `predict`, `serve`, `evaluate`, the shift suite."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .emotions import EMOTIONS

TTA_ZOOM = 1.125  # corner crops are taken from the image enlarged by this factor (48 -> 54 px)


def tta_views(x: torch.Tensor, zoom: float = TTA_ZOOM) -> torch.Tensor:
    """(N, 1, H, W) -> (10, N, 1, H, W): the image and its four zoomed corner crops, each also flipped.

    Corner crops come from the image resized by `zoom` (bilinear), so each is a shift + zoom of the
    original. The set of views is closed under a horizontal flip of the input (left corners mirror
    right corners), which makes the TTA average exactly flip-invariant."""
    n, c, h, w = x.shape
    big_h, big_w = round(h * zoom), round(w * zoom)
    views = [x]
    if (big_h, big_w) != (h, w):
        big = F.interpolate(x, size=(big_h, big_w), mode="bilinear", align_corners=False, antialias=False)
        dy, dx = big_h - h, big_w - w
        for oy, ox in ((0, 0), (0, dx), (dy, 0), (dy, dx)):
            views.append(big[:, :, oy : oy + h, ox : ox + w])
    views += [v.flip(-1) for v in views]
    return torch.stack(views)


@torch.no_grad()
def _forward(model: torch.nn.Module, x: torch.Tensor, tta: bool) -> torch.Tensor:
    if not tta:
        return torch.softmax(model(x).float(), dim=1)
    views = tta_views(x)  # (V, N, 1, H, W)
    v, n = views.shape[:2]
    probs = torch.softmax(model(views.reshape(v * n, *views.shape[2:])).float(), dim=1)
    return probs.reshape(v, n, -1).mean(0)


@torch.no_grad()
def predict_probs(
    model: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 256, tta: bool = False
) -> np.ndarray:
    """Normalised inputs (N, 1, H, W) on any device -> class probabilities (N, C) as float32 numpy.

    With tta, the probabilities are the mean softmax over `tta_views` (10 forward passes per image,
    run as one batch of 10 x batch_size)."""
    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    out = []
    for start in range(0, len(inputs), batch_size):
        x = inputs[start : start + batch_size].to(device, non_blocking=True)
        out.append(_forward(model, x, tta).cpu())
    if not out:
        return np.zeros((0, len(EMOTIONS)), np.float32)
    return torch.cat(out).numpy()
