"""Training the framer (framer.py): `python -m fer_ray.faces.framer_train --data DIR --output DIR`.

It learns from FER-2013 Training only: each crop is warped by a random transform (the target),
what lies past the crop being its border repeated, its mirror image or a flat background, plus
the photometric changes of the robust training recipe; non-faces (scrambled crops, smooth noise,
gradients and shapes, periodic textures, patches of scikit-learn's two sample photos) teach the
face output. Kept apart from framer.py so that labeling never imports it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from .framer import FLOAT_MODULES, INT8_FILE, META_FILE, POOL, ROTATE, SHIFT, SIZE, WEIGHTS_FILE, WIDTHS, ZOOM
from .framer import FramerNet, _decode, _inputs



def _warp(x: torch.Tensor, scale, angle, dx, dy, gen: torch.Generator | None = None) -> torch.Tensor:
    """Canonical crops -> what they look like under the framing (scale, angle rad, dx, dy). With
    `gen`, what lies past the canonical crop is, per sample, its border repeated, its mirror image
    or a flat background (crops from elsewhere have real surroundings, not smeared borders)."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    # O(p) = C(A^-1 p), A^-1 p = R(-a)(p - d) / s
    tx, ty = 2 * dx, 2 * dy
    r00, r01, r10, r11 = cos / scale, sin / scale, -sin / scale, cos / scale
    theta = torch.stack([torch.stack([r00, r01, -(r00 * tx + r01 * ty)], 1),
                         torch.stack([r10, r11, -(r10 * tx + r11 * ty)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if gen is None:
        return out
    kind = torch.rand(x.shape[0], generator=gen)[:, None, None, None]
    mirror = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    inside = F.grid_sample(torch.ones_like(x), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    flat = torch.randn(x.shape[0], 1, 1, 1, generator=gen)
    framed = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + (1 - inside) * flat
    return torch.where(kind < 0.5, out, torch.where(kind < 0.75, mirror, framed))


def _negatives(n: int, gen: torch.Generator, faces: torch.Tensor, photos: torch.Tensor) -> torch.Tensor:
    """Non-face crops, normalised like faces: scrambled face crops, smooth noise, gradients and
    shapes, patches of photos without faces, periodic textures (stripes, checks, waves) in noise."""
    kind = torch.randint(0, 5, (n,), generator=gen)
    out = torch.empty(n, 1, SIZE, SIZE)
    for i in range(n):
        k = int(kind[i])
        if k == 0:  # a face crop cut into 8x8 tiles, shuffled: a face's statistics, no face
            src = faces[torch.randint(0, len(faces), (1,), generator=gen)][0, 0]
            tiles = src.reshape(6, 8, 6, 8).permute(0, 2, 1, 3).reshape(36, 8, 8)
            tiles = tiles[torch.randperm(36, generator=gen)]
            out[i, 0] = tiles.reshape(6, 6, 8, 8).permute(0, 2, 1, 3).reshape(SIZE, SIZE)
        elif k == 1:  # smooth noise
            side = int(torch.randint(2, 24, (1,), generator=gen))
            small = torch.randn(1, 1, side, side, generator=gen)
            out[i] = F.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]
        elif k == 2:  # a gradient with a few flat shapes
            yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
            a, b = torch.randn(2, generator=gen)
            img = a * xx + b * yy
            for _ in range(int(torch.randint(0, 4, (1,), generator=gen))):
                cx, cy, r = torch.rand(3, generator=gen) * torch.tensor([2.0, 2.0, 0.6]) - torch.tensor([1.0, 1.0, -0.1])
                mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2) if torch.rand(1, generator=gen) < 0.5 else \
                    ((xx - cx).abs() < r) & ((yy - cy).abs() < r)
                img = torch.where(mask, torch.randn(1, generator=gen), img)
            out[i, 0] = img
        elif k == 4:  # a periodic texture: products of waves of random periods and phases, plus noise
            yy, xx = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32),
                                    indexing="ij")
            fx, fy, px, py = torch.rand(4, generator=gen) * torch.tensor([1.5, 1.5, 6.3, 6.3]) + torch.tensor([0.1, 0.1, 0, 0])
            img = torch.sin(xx * fx + px) * torch.cos(yy * fy + py)
            if torch.rand(1, generator=gen) < 0.3:
                img = torch.sign(img)
            out[i, 0] = img * (0.5 + torch.rand(1, generator=gen)) + torch.randn(SIZE, SIZE, generator=gen) * 0.3 * torch.rand(1, generator=gen)
        else:  # a patch of a photo
            p = photos[int(torch.randint(0, len(photos), (1,), generator=gen))]
            side = int(torch.randint(24, min(p.shape) // 2, (1,), generator=gen))
            y = int(torch.randint(0, p.shape[0] - side, (1,), generator=gen))
            x = int(torch.randint(0, p.shape[1] - side, (1,), generator=gen))
            patch = p[y:y + side, x:x + side][None, None]
            out[i] = F.interpolate(patch, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]
    return out


def _photos() -> torch.Tensor | list:
    from sklearn.datasets import load_sample_images

    from ..preprocess import MEAN, STD

    out = []
    for img in load_sample_images().images:
        gray = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
        out.append(torch.from_numpy((gray - MEAN) / STD))
    return out


def _batch(x: torch.Tensor, gen: torch.Generator, photos, faces_pool, neg_share: float = 0.15):
    """One training batch: warped faces (targets: their framing) and non-faces."""
    from .. import augment

    n = x.shape[0]
    u = lambda lo, hi: torch.rand(n, generator=gen) * (hi - lo) + lo  # noqa: E731
    # a third of the faces stay near the canonical framing: that is where decisions are made
    near = torch.rand(n, generator=gen) < 0.33
    log_s = torch.where(near, u(-0.1, 0.1), u(math.log(ZOOM[0]), math.log(ZOOM[1])))
    angle = torch.where(near, u(-6, 6), u(-ROTATE, ROTATE)) * (math.pi / 180)
    dx = torch.where(near, u(-0.04, 0.04), u(-SHIFT, SHIFT))
    dy = torch.where(near, u(-0.04, 0.04), u(-SHIFT, SHIFT))
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    obs = _warp(x, torch.exp(log_s), angle, dx, dy, gen)
    obs = augment.photometric(obs, brightness=0.2, contrast=0.35, gamma=0.4)
    obs = augment.blur(obs, 0.25)
    obs = augment.lowres(obs, 0.2)
    obs = augment.random_erase(obs, 0.3, (0.02, 0.15))
    k = int(neg_share * n)
    obs[:k] = _negatives(k, gen, faces_pool, photos)
    face = torch.ones(n)
    face[:k] = 0
    target = torch.stack([log_s, torch.cos(angle), torch.sin(angle), dx, dy], 1)
    return obs, target, face


def _loss(out, target, face):
    reg = F.smooth_l1_loss(out[:, :5], target, reduction="none", beta=0.05).sum(1)
    reg = (reg * face).sum() / face.sum().clamp_min(1)
    return reg + 0.5 * F.binary_cross_entropy_with_logits(out[:, 5], face)


def framing_errors(net, pixels: np.ndarray, seed: int = 1) -> dict:
    """Median errors of the framing on `pixels` under random framings, and the face rates."""
    gen = torch.Generator().manual_seed(seed)
    x = _inputs(pixels)
    obs, target, face = _batch(x, gen, _photos(), x, neg_share=0.2)
    with torch.inference_mode():
        out = net(obs)
    pred = _decode(out)
    f = face.bool().numpy()
    ang = np.degrees(torch.atan2(target[:, 2], target[:, 1]).numpy())
    return {
        "zoom_error_median": float(np.median(np.abs(np.log(pred.scale[f]) - target[f, 0].numpy()))),
        "angle_error_median_deg": float(np.median(np.abs(pred.angle[f] - ang[f]))),
        "shift_error_median": float(np.median(np.hypot(pred.dx[f] - target[f, 3].numpy(), pred.dy[f] - target[f, 4].numpy()))),
        "faces_called_face": float((pred.face[f] > 0.5).mean()),
        "non_faces_called_face": float((pred.face[~f] > 0.5).mean()),
    }


def train(data_dir: str, output: str, epochs: int = 60, batch_size: int = 256, lr: float = 2e-3, seed: int = 0,
          log=print) -> dict:
    """Train the framer on `data_dir`'s Training split (validated on PublicTest); writes `output`."""
    from safetensors.torch import save_file

    from .. import data

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_px = data.load_split(data_dir, "Training").pixels
    val_px = data.load_split(data_dir, "PublicTest").pixels
    x_all, photos = _inputs(train_px), _photos()
    net = FramerNet(WIDTHS, POOL)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(x_all) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    start = time.time()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x_all), generator=gen)
        total = 0.0
        for b in range(len(x_all) // batch_size):
            obs, target, face = _batch(x_all[order[b * batch_size:(b + 1) * batch_size]], gen, photos, x_all)
            loss = _loss(net(obs), target, face)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        net.eval()
        metrics = framing_errors(net, val_px[:2000])
        log(f"epoch {epoch + 1}/{epochs} loss {total / (b + 1):.4f} " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            + f" ({time.time() - start:.0f} s)")
    os.makedirs(output, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, os.path.join(output, WEIGHTS_FILE))
    calibrate(net, x_all, output, seed)
    meta = {"widths": list(WIDTHS), "pool": POOL, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
            "data_checksum": data.checksum(data_dir), "PublicTest": metrics,
            "train_seconds": round(time.time() - start), "command": " ".join(["python -m fer_ray.faces.framer_train", *sys.argv[1:]])}
    with open(os.path.join(output, META_FILE), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def calibrate(net: FramerNet, x: torch.Tensor, output: str, seed: int = 0, batches: int = 8) -> None:
    """Int8 observers for `net` from framings like the training ones (normalised crops `x`)."""
    from safetensors.torch import save_file

    from .. import quantize

    if not quantize.available():
        return
    gen = torch.Generator().manual_seed(seed + 1)
    photos = _photos()
    sample = [_batch(x[torch.randint(0, len(x), (256,), generator=gen)], gen, photos, x)[0] for _ in range(batches)]
    save_file(quantize.calibrate(net.eval(), sample, SIZE, FLOAT_MODULES), os.path.join(output, INT8_FILE))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fer_ray.faces.framer_train", description="Train the framing network.")
    p.add_argument("--data", required=True, help="prepared FER-2013 (fer-ray prepare)")
    p.add_argument("--output", required=True, help="a new folder (the shipped framer is never written)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    train(args.data, args.output, epochs=args.epochs, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
