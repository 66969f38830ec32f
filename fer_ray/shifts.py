"""The shift suite: a prepared split (FER-2013 PrivateTest) under controlled changes of framing,
lighting and image quality, and the model's accuracy under each.

    SHIFTS                          name -> (kind, strength): the suite, in report order
    apply(pixels, name, seed)       uint8 (N,48,48) -> uint8 (N,48,48), deterministic per image
    run(bundle, split, ...)         accuracy per shift, twice: the model alone (the shifted image as
                                    its input) and through canonical framing (framing.faces auto,
                                    what `fer-ray label` and `predict` do); mean over shifts and
                                    the drop from clean

Shifts act on the 48x48 crop; what a warp pulls from outside it repeats the border pixels. Each
image draws its own direction (sign of a rotation, direction of a translation, place of an
occluder) from `seed` and its index, so a figure is reproducible and comparable across models.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageFilter

from . import faces

SHIFTS = {
    "clean": ("none", 0),
    "zoom out 0.7": ("zoom", 0.7),
    "zoom out 0.85": ("zoom", 0.85),
    "zoom in 1.2": ("zoom", 1.2),
    "zoom in 1.4": ("zoom", 1.4),
    "shift 10%": ("shift", 0.10),
    "shift 15%": ("shift", 0.15),
    "rotate 10°": ("rotate", 10),
    "rotate 20°": ("rotate", 20),
    "brighter +25%": ("brightness", 0.25),
    "darker -25%": ("brightness", -0.25),
    "contrast 0.5": ("contrast", 0.5),
    "gamma 0.5": ("gamma", 0.5),
    "gamma 2": ("gamma", 2.0),
    "blur σ1": ("blur", 1.0),
    "blur σ1.5": ("blur", 1.5),
    "JPEG q40": ("jpeg", 40),
    "JPEG q20": ("jpeg", 20),
    "low-res 24 px": ("lowres", 24),
    "occlusion 15%": ("occlude", 0.15),
}


def _warp(img: Image.Image, scale: float = 1.0, angle: float = 0.0, dx: float = 0.0, dy: float = 0.0) -> Image.Image:
    """Zoom by `scale`, rotate by `angle` degrees and move by (dx, dy) pixels about the centre; the
    border repeats."""
    n = img.width
    big = Image.fromarray(np.pad(np.asarray(img), n, mode="edge"))
    c = big.width / 2
    a = math.radians(angle)
    cos, sin = math.cos(a) / scale, math.sin(a) / scale
    # output (u, v) -> input: centre, undo the move, rotate/scale back, recentre
    matrix = (cos, sin, c - cos * (c + dx) - sin * (c + dy), -sin, cos, c + sin * (c + dx) - cos * (c + dy))
    out = big.transform(big.size, Image.AFFINE, matrix, resample=Image.BILINEAR)
    return out.crop((n, n, 2 * n, 2 * n))


def _one(px: np.ndarray, kind: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    img = Image.fromarray(px)
    n = px.shape[0]
    if kind == "none":
        return px
    if kind == "zoom":
        return np.asarray(_warp(img, scale=strength))
    if kind == "shift":
        a = rng.uniform(0, 2 * math.pi)
        return np.asarray(_warp(img, dx=strength * n * math.cos(a), dy=strength * n * math.sin(a)))
    if kind == "rotate":
        return np.asarray(_warp(img, angle=strength * rng.choice((-1, 1))))
    f = px.astype(np.float32) / 255.0
    if kind == "brightness":
        f = f + strength
    elif kind == "contrast":
        f = (f - f.mean()) * strength + f.mean()
    elif kind == "gamma":
        f = np.clip(f, 0, 1) ** strength
    elif kind == "blur":
        return np.asarray(img.filter(ImageFilter.GaussianBlur(strength)))
    elif kind == "jpeg":
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(strength))
        return np.asarray(Image.open(buf).convert("L"))
    elif kind == "lowres":
        small = img.resize((int(strength), int(strength)), Image.BILINEAR, reducing_gap=3.0)
        return np.asarray(small.resize((n, n), Image.BILINEAR))
    elif kind == "occlude":
        side = int(round(math.sqrt(strength) * n))
        y, x = rng.integers(0, n - side + 1, 2)
        out = px.copy()
        out[y:y + side, x:x + side] = 128
        return out
    else:
        raise ValueError(f"unknown shift kind {kind!r}")
    return (np.clip(f, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def apply(pixels: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """uint8 (N, 48, 48) -> the same images under shift `name` (deterministic per image)."""
    kind, strength = SHIFTS[name]
    out = np.empty_like(pixels)
    for i, px in enumerate(np.asarray(pixels)):
        out[i] = _one(np.ascontiguousarray(px), kind, strength, np.random.default_rng([seed, i]))
    return out


def _accuracy(bundle, pixels, labels, batch_size: int) -> float:
    from .recognizer import Recognizer

    probs = Recognizer(loaded=bundle, batch_size=batch_size).probabilities(pixels)
    return float((probs.argmax(1) == np.asarray(labels)).mean())


def run(bundle, split, names=None, seed: int = 0, sample: int | None = None, batch_size: int = 256,
        say=None) -> dict:
    """Accuracy of `bundle` on `split` under each shift: {"shifts": [{name, model, framed,
    sources (crops per face_source)}], "clean", "mean", "drop"} with mean/drop over the shifts
    other than clean."""
    names = list(names or SHIFTS)
    pixels, labels = np.asarray(split.pixels), np.asarray(split.labels)
    if sample and sample < len(labels):
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), sample, replace=False))
        pixels, labels = pixels[keep], labels[keep]
    rows = []
    for name in names:
        shifted = apply(pixels, name, seed)
        reframed, face_sources = faces.frame_crops(shifted)
        row = {"shift": name, "model": _accuracy(bundle, shifted, labels, batch_size),
               "framed": _accuracy(bundle, reframed, labels, batch_size), "sources": face_sources}
        rows.append(row)
        if say:
            say(f"  {name:<16} model {row['model']:.4f}  framed {row['framed']:.4f}")
    return summarize(rows, len(labels))


def summarize(rows: list[dict], n: int) -> dict:
    clean = next((r for r in rows if r["shift"] == "clean"), None)
    shifted = [r for r in rows if r["shift"] != "clean"]
    out = {"n": n, "shifts": rows}
    for col in ("model", "framed"):
        mean = float(np.mean([r[col] for r in shifted])) if shifted else None
        out[col] = {"clean": clean[col] if clean else None, "mean": mean,
                    "drop": (clean[col] - mean) if clean and mean is not None else None}
    return out


def table(result: dict) -> list[str]:
    """Markdown table lines: accuracy per shift, model alone and through canonical framing."""
    lines = ["| shift | model alone | canonical framing | faces found |", "|---|---|---|---|"]
    for r in result["shifts"]:
        found = r["sources"]["as-framed"] + r["sources"]["detected"]
        lines.append(f"| {r['shift']} | {r['model']:.1%} | {r['framed']:.1%} | {found / result['n']:.0%} |")
    m, f = result["model"], result["framed"]
    if m["mean"] is not None:
        lines.append(f"| **mean over shifts** | **{m['mean']:.1%}** | **{f['mean']:.1%}** | |")
        lines.append(f"| drop from clean | {m['drop'] * 100:.1f} pt | {f['drop'] * 100:.1f} pt | |")
    return lines


def plot(result: dict, path: str, title: str = "") -> None:
    from .plotting import pyplot

    plt = pyplot()
    rows = result["shifts"]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.2))
    ax.barh(y - 0.2, [r["model"] for r in rows], 0.4, label="model alone", color="#8c959f")
    ax.barh(y + 0.2, [r["framed"] for r in rows], 0.4, label="canonical framing", color="#2da44e")
    ax.set_yticks(y, [r["shift"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "shift suite", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
