"""Training-time augmentation: batched, plain torch ops, on whatever device the batch is on.

Everything works on a normalised float batch (N, 1, H, W) as produced by preprocess.normalize,
so augmentation never changes the preprocessing that evaluation and labeling see. No torchvision
(see the platform notes): flips are `torch.where` over a flipped copy, rotation + shift + zoom is
ONE batched affine warp (`F.affine_grid` + `F.grid_sample`), erasing is a per-sample box mask.

Strengths come from a plain dict (the `augment:` block of a training config); a strength of 0
turns that transform off, and `augment(x, NONE)` returns x unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULTS = {
    "flip": 0.5,  # probability of a horizontal flip
    "rotate": 10.0,  # max rotation, degrees (uniform in [-rotate, rotate])
    "shift": 0.1,  # max translation, fraction of the image side
    "zoom": 0.1,  # max scale change: scale uniform in [1 - zoom, 1 + zoom]
    "erase": 0.25,  # probability of erasing one random box
    "erase_area": [0.02, 0.15],  # box area range, fraction of the image
    # Off by default (the recipe in configs/robust-cpu.yaml turns them on): what photos and crops
    # from other sources differ in, besides framing.
    "aspect": 0.0,  # max aspect change: x and y scaled by r and 1/r, r log-uniform in [1/(1+a), 1+a]
    "brightness": 0.0,  # max shift of the 0..1 pixel scale, uniform in [-b, b]
    "contrast": 0.0,  # contrast factor uniform in [1 - c, 1 + c], around each image's mean
    "gamma": 0.0,  # gamma log-uniform in [1/(1+g), 1+g]
    "blur": 0.0,  # probability of a Gaussian blur, sigma uniform in [0.3, 1.5] px
    "lowres": 0.0,  # probability of going down to 16..32 px and back (low-resolution sources)
    "noise": 0.0,  # max std of additive Gaussian noise on the 0..1 scale (per sample, uniform in [0, n])
    "jpeg": 0.0,  # probability of a JPEG round trip at quality uniform in [15, 60] (8x8 DCT quantisation)
}
NONE = {k: (v if k == "erase_area" else 0.0) for k, v in DEFAULTS.items()}


def resolve(options: dict | None) -> dict:
    """DEFAULTS overridden by `options`; unknown keys or out-of-range values raise ValueError."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown augment option(s) {', '.join(unknown)} (known: {', '.join(DEFAULTS)})")
    out = {**DEFAULTS, **options}
    for key in ("flip", "erase"):
        if not 0.0 <= float(out[key]) <= 1.0:
            raise ValueError(f"augment {key} is a probability in [0, 1], got {out[key]}")
    for key in ("blur", "lowres", "jpeg"):
        if not 0.0 <= float(out[key]) <= 1.0:
            raise ValueError(f"augment {key} is a probability in [0, 1], got {out[key]}")
    for key in ("rotate", "shift", "zoom", "aspect", "brightness", "contrast", "gamma", "noise"):
        if float(out[key]) < 0:
            raise ValueError(f"augment {key} must be >= 0, got {out[key]}")
    for key in ("zoom", "contrast"):
        if float(out[key]) >= 1:
            raise ValueError(f"augment {key} must be < 1, got {out[key]}")
    area = out["erase_area"]
    if not (isinstance(area, (list, tuple)) and len(area) == 2 and 0 < float(area[0]) <= float(area[1]) < 1):
        raise ValueError(f"augment erase_area must be [min, max] with 0 < min <= max < 1, got {area}")
    out = {k: float(v) for k, v in out.items() if k != "erase_area"} | {"erase_area": [float(a) for a in area]}
    return out


def _uniform(n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(n, device=like.device, dtype=torch.float32) * (high - low) + low


def hflip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Flip each sample left-right with probability p (p=1: every sample)."""
    if p <= 0:
        return x
    if p >= 1:
        return x.flip(-1)
    mask = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def affine(x: torch.Tensor, rotate: float = 0.0, shift: float = 0.0, zoom: float = 0.0,
           aspect: float = 0.0) -> torch.Tensor:
    """One random rotation (degrees) + translation (fraction of side) + zoom (+ aspect change) per
    sample, one warp.

    Pixels pulled from outside the image repeat the border (a face crop continues at its edge
    better than a black or mean-grey frame)."""
    if rotate <= 0 and shift <= 0 and zoom <= 0 and aspect <= 0:
        return x
    n = x.shape[0]
    angle = _uniform(n, -rotate, rotate, x) * (math.pi / 180.0)
    scale = _uniform(n, 1.0 - zoom, 1.0 + zoom, x)
    ratio = torch.exp(_uniform(n, -math.log1p(aspect), math.log1p(aspect), x))
    sx, sy = scale * ratio, scale / ratio
    # affine_grid maps output coords to input coords in [-1, 1]: a side is 2 units long.
    tx = _uniform(n, -2 * shift, 2 * shift, x)
    ty = _uniform(n, -2 * shift, 2 * shift, x)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos / sx, -sin / sy, tx], 1), torch.stack([sin / sx, cos / sy, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_erase(x: torch.Tensor, p: float = 0.25, area=(0.02, 0.15), value: float = 0.0) -> torch.Tensor:
    """With probability p per sample, fill one random box (area fraction in `area`, aspect ratio
    in [1/3, 3]) with `value` (0 = the dataset mean on a normalised batch)."""
    if p <= 0:
        return x
    n, _, h, w = x.shape
    frac = _uniform(n, area[0], area[1], x)
    log_ratio = _uniform(n, math.log(1 / 3), math.log(3), x)
    ratio = torch.exp(log_ratio)
    bh = torch.sqrt(frac * h * w * ratio).clamp(1, h)
    bw = torch.sqrt(frac * h * w / ratio).clamp(1, w)
    y0 = torch.rand(n, device=x.device) * (h - bh)
    x0 = torch.rand(n, device=x.device) * (w - bw)
    yy = torch.arange(h, device=x.device, dtype=torch.float32)[None, :, None]
    xx = torch.arange(w, device=x.device, dtype=torch.float32)[None, None, :]
    box = (
        (yy >= y0[:, None, None])
        & (yy < (y0 + bh)[:, None, None])
        & (xx >= x0[:, None, None])
        & (xx < (x0 + bw)[:, None, None])
    )
    box &= (torch.rand(n, device=x.device) < p)[:, None, None]
    return x.masked_fill(box[:, None], value)


def _chosen(n: int, p: float, like: torch.Tensor) -> torch.Tensor:
    return (torch.rand(n, device=like.device) < p)[:, None, None, None]


def lowres(x: torch.Tensor, p: float = 0.0, sides=(16, 32)) -> torch.Tensor:
    """With probability p per sample, down to one random side (per batch) in `sides` and back."""
    if p <= 0:
        return x
    side = int(torch.randint(sides[0], sides[1] + 1, ()))
    small = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    back = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return torch.where(_chosen(x.shape[0], p, x), back, x)


def blur(x: torch.Tensor, p: float = 0.0, sigma=(0.3, 1.5), radius: int = 3) -> torch.Tensor:
    """With probability p per sample, a Gaussian blur of a random sigma: one grouped convolution
    with a per-sample kernel."""
    if p <= 0:
        return x
    n, c, h, w = x.shape
    s = _uniform(n, sigma[0], sigma[1], x)[:, None]
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)[None, :]
    k1 = torch.exp(-0.5 * (taps / s) ** 2)
    k1 = k1 / k1.sum(1, keepdim=True)
    k2 = (k1[:, :, None] * k1[:, None, :]).to(x.dtype)[:, None]  # (n, 1, k, k)
    padded = F.pad(x.reshape(1, n * c, h, w), [radius] * 4, mode="replicate")
    out = F.conv2d(padded, k2.repeat_interleave(c, 0), groups=n * c).reshape(n, c, h, w)
    return torch.where(_chosen(n, p, x), out, x)


# The luminance quantisation table of the JPEG standard (Annex K), which libjpeg scales by quality.
_JPEG_LUMA = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99],
], dtype=torch.float32)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float32)
    m = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m


def jpeg_table(quality: torch.Tensor) -> torch.Tensor:
    """(n,) qualities in 1..100 -> (n, 8, 8) quantisation tables, scaled as libjpeg scales them."""
    q = quality.clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)[:, None, None]
    return torch.floor((_JPEG_LUMA.to(q.device) * scale + 50) / 100).clamp(1, 255)


def jpeg(x: torch.Tensor, p: float = 0.0, quality=(15, 60)) -> torch.Tensor:
    """With probability p per sample, what a greyscale JPEG round trip does to it: 8x8 blocks, DCT,
    coefficients rounded to the quality-scaled luminance table, back, rounded to 8 bits. Photos from
    the web and phone uploads arrive like this; Pillow per image would cost more than the step."""
    if p <= 0:
        return x
    from .preprocess import MEAN, STD

    n, c, h, w = x.shape
    ph, pw = -h % 8, -w % 8
    px = F.pad(x * STD + MEAN, [0, pw, 0, ph], mode="replicate") * 255.0 - 128.0
    hh, ww = h + ph, w + pw
    blocks = px.reshape(n, c, hh // 8, 8, ww // 8, 8).transpose(3, 4)  # (n, c, by, bx, 8, 8)
    d = _dct_matrix().to(x.device, x.dtype)
    table = jpeg_table(torch.floor(_uniform(n, quality[0], quality[1] + 1, x))).to(x.dtype)
    table = table[:, None, None, None]
    coef = torch.round(d @ blocks @ d.T / table) * table
    back = (d.T @ coef @ d).transpose(3, 4).reshape(n, c, hh, ww)[..., :h, :w]
    out = (torch.round(back + 128.0).clamp(0, 255) / 255.0 - MEAN) / STD
    return torch.where(_chosen(n, p, x), out, x)


def photometric(x: torch.Tensor, brightness: float = 0.0, contrast: float = 0.0, gamma: float = 0.0,
                noise: float = 0.0) -> torch.Tensor:
    """Contrast (around each image's mean), brightness, gamma and noise, on the 0..1 pixel scale."""
    if brightness <= 0 and contrast <= 0 and gamma <= 0 and noise <= 0:
        return x
    from .preprocess import MEAN, STD

    n = x.shape[0]
    px = x * STD + MEAN
    mean = px.mean((1, 2, 3), keepdim=True)
    c = _uniform(n, 1.0 - contrast, 1.0 + contrast, x)[:, None, None, None]
    b = _uniform(n, -brightness, brightness, x)[:, None, None, None]
    px = ((px - mean) * c + mean + b).clamp(0.0, 1.0)
    if gamma > 0:
        g = torch.exp(_uniform(n, -math.log1p(gamma), math.log1p(gamma), x))[:, None, None, None]
        px = px.clamp(min=1e-4) ** g
    if noise > 0:
        px = (px + torch.randn_like(px) * _uniform(n, 0.0, noise, x)[:, None, None, None]).clamp(0.0, 1.0)
    return (px - MEAN) / STD


def augment(x: torch.Tensor, options: dict) -> torch.Tensor:
    """Apply flip, affine (rotate/shift/zoom/aspect), low resolution, blur, photometric changes,
    erasing and JPEG with the strengths in a resolve()d dict."""
    x = hflip(x, options["flip"])
    x = affine(x, options["rotate"], options["shift"], options["zoom"], options["aspect"])
    x = lowres(x, options["lowres"])
    x = blur(x, options["blur"])
    x = photometric(x, options["brightness"], options["contrast"], options["gamma"], options["noise"])
    x = random_erase(x, options["erase"], options["erase_area"])
    return jpeg(x, options["jpeg"])  # last: compression is the last thing to happen to a photo


def mix(x: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, mixup: float = 0.0, cutmix: float = 0.0):
    """Mixup (alpha=`mixup`) or CutMix (alpha=`cutmix`) with a shuffled copy of the batch.

    When both are on, each batch picks one at random. targets: (N, K) probabilities; weights: (N,)
    per-sample loss weights. Returns mixed (x, targets, weights) — the pair's targets and weights
    are blended with the same lambda as the pixels."""
    if mixup <= 0 and cutmix <= 0:
        return x, targets, weights
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(()).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0], device=x.device)
    if use_cutmix:
        h, w = x.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)  # the area actually pasted
    else:
        x = lam * x + (1.0 - lam) * x[perm]
    return x, lam * targets + (1.0 - lam) * targets[perm], lam * weights + (1.0 - lam) * weights[perm]
