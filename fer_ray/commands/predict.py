"""`fer-ray predict IMAGE...`: emotion and confidence for each image (or each face in it)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import faces, placement, preprocess, storage
from ..emotions import EMOTIONS
from ..plotting import pyplot
from ..recognizer import Recognizer
from ..errors import FerRayError, UsageError
from ..video import is_video

HELP = "predict the emotion of face images (local paths, directories or s3:// URIs)"


def add_arguments(p) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, directories of images, or s3:// URIs")
    p.add_argument("--model", metavar="BUNDLE", help="fast, accurate (the shipped models), a bundle folder or s3:// URI; default: fast on CPU, accurate with --gpu")
    p.add_argument("--gpu", action="store_true", help="run on the GPU (default model: the accurate one)")
    p.add_argument("--faces", choices=faces.MODES, default="auto",
                   help="auto (default): face crops framed like FER-2013 as they are, every face found in a photo "
                        "aligned (a photo without one: no face found); crop: each image is a face crop; "
                        "detect: found faces only")
    p.add_argument("--show", metavar="OUT.png", help="also write a PNG with each image and its class probabilities")
    p.add_argument("--top", type=int, default=3, metavar="K", help="how many classes to list per image (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image instead of text")


@dataclass
class Item:
    """One input image and what became of it."""

    uri: str
    image: object = None  # PIL image, upright
    boxes: list = field(default_factory=list)
    crops: list = field(default_factory=list)  # uint8 48x48, one per box
    face_sources: list = field(default_factory=list)  # faces.FACE_SOURCES, one per box
    probs: list = field(default_factory=list)  # np arrays (C,), one per box
    error: str | None = None


def expand(uris: list[str]) -> list[str]:
    """Directories (local or s3:// prefixes) become the image files under them, sorted."""
    out = []
    for uri in uris:
        fs, path = storage.filesystem(uri)
        if not uri.lower().endswith(storage.IMAGE_EXTENSIONS) and fs.isdir(path):
            found = [o.uri for o in storage.list_objects(uri)]
            if not found:
                raise FerRayError(f"no images under {uri}")
            out.extend(found)
        else:
            out.append(uri)
    return out


def load_item(uri: str, data, rec: Recognizer) -> Item:
    """`data`: the bytes storage.Fetcher got, or its exception."""
    item = Item(uri)
    try:
        if isinstance(data, BaseException):
            raise preprocess.DecodeError(storage.fetch_error(data))
        if is_video(uri):
            raise preprocess.DecodeError("a video: `fer-ray label` labels its frames")
        item.image = preprocess.decode(data)
        found = rec.find([item.image])[0]
        if isinstance(found, Exception):
            raise found
    except preprocess.DecodeError as exc:
        item.error = str(exc)
        return item
    except (NotImplementedError, RuntimeError) as exc:  # e.g. faces.DetectorUnavailable
        raise FerRayError(f"--faces {rec.faces}: {exc}") from None
    item.boxes = [f.box for f in found]
    item.crops = [f.pixels for f in found]
    item.face_sources = [f.face_source for f in found]
    return item


def _device(gpu: bool) -> torch.device:
    if not gpu:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    print("warning: --gpu given but no CUDA device is available; running on the CPU", file=sys.stderr)
    return torch.device("cpu")


def _line(label: str, probs: np.ndarray, classes: list[str], top: int) -> str:
    order = np.argsort(-probs, kind="stable")[:top]
    best = int(order[0])
    ranked = ", ".join(f"{classes[i]} {probs[i]:.2f}" for i in order)
    return f"{label}\t{classes[best]}\t{probs[best]:.3f}\t{ranked}"


def show(items: list[Item], classes: list[str], path: str) -> None:
    """One row per face: the image (box drawn in detect mode), the 48x48 input, probability bars."""
    plt = pyplot()
    from matplotlib.patches import Rectangle

    rows = [(item, k) for item in items if not item.error for k in range(len(item.probs))]
    fig, axes = plt.subplots(len(rows), 3, figsize=(9.5, 2.3 * len(rows)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.2, 1, 2.2]})
    for (item, k), (ax_img, ax_in, ax_bar) in zip(rows, axes):
        probs = item.probs[k]
        best = int(np.argmax(probs))
        ax_img.imshow(item.image.convert("RGB"))
        x, y, w, h = item.boxes[k]
        if (x, y, w, h) != (0, 0, item.image.width, item.image.height):
            ax_img.add_patch(Rectangle((x, y), w, h, fill=False, color="#2da44e", lw=2))
        name = os.path.basename(item.uri.rstrip("/")) or item.uri
        ax_img.set_title(name if len(item.boxes) == 1 else f"{name} face {k + 1}", fontsize=9)
        ax_in.imshow(item.crops[k], cmap="gray", vmin=0, vmax=255)
        ax_in.set_title("model input (48x48)", fontsize=9)
        for ax in (ax_img, ax_in):
            ax.axis("off")
        colors = ["#2da44e" if i == best else "#8c959f" for i in range(len(classes))]
        ax_bar.barh(range(len(classes)), probs, color=colors)
        ax_bar.set_yticks(range(len(classes)), classes, fontsize=9)
        ax_bar.invert_yaxis()
        ax_bar.set_xlim(0, 1)
        ax_bar.tick_params(axis="x", labelsize=8)
        for i, p in enumerate(probs):
            ax_bar.text(min(p + 0.01, 0.9), i, f"{p:.2f}", va="center", fontsize=8)
        ax_bar.set_title(f"{classes[best]} {probs[best]:.0%}", fontsize=10, fontweight="bold")
    fig.tight_layout()
    if storage.is_s3(path):
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "show.png")
            fig.savefig(local, dpi=100)
            fs, remote = storage.filesystem(path)
            fs.put(local, remote)
    else:
        fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args) -> int:
    if args.top < 1:
        raise UsageError(f"--top must be at least 1, got {args.top}")
    if args.show and not args.show.lower().endswith(".png"):
        raise UsageError(f"--show writes a PNG: give a path ending in .png, got {args.show!r}")
    torch.set_num_threads(placement.available_cores())
    rec = Recognizer(args.model, args.faces, device=_device(args.gpu).type)
    rec.bundle  # a bad --model fails here, before any image is read
    classes = list(EMOTIONS)

    uris = expand(args.images)
    items = [load_item(uri, data, rec) for uri, data in zip(uris, storage.Fetcher(8).fetch(uris))]
    crops = [c for item in items for c in item.crops]
    if crops:
        probs = rec.probabilities(np.stack(crops))
        at = 0
        for item in items:
            item.probs = list(probs[at : at + len(item.crops)])
            at += len(item.crops)

    failed = 0
    top = min(args.top, len(classes))
    for item in items:
        if item.error:
            failed += 1
            print(f"error: {item.uri}: {item.error}", file=sys.stderr)
            if args.json:
                print(json.dumps({"image": item.uri, "error": item.error}))
            continue
        if not item.probs:
            print(json.dumps({"image": item.uri, "faces": []}) if args.json else f"{item.uri}\tno face found")
            continue
        for k, p in enumerate(item.probs):
            if args.json:
                order = np.argsort(-p, kind="stable")[:top]
                print(json.dumps({
                    "image": item.uri, "face": k, "box": list(item.boxes[k]), "face_source": item.face_sources[k],
                    "emotion": classes[int(order[0])], "confidence": round(float(p[order[0]]), 4),
                    "top": [[classes[i], round(float(p[i]), 4)] for i in order],
                }))
            else:
                whole = len(item.probs) == 1 and item.face_sources[0] != "detected"
                label = item.uri if whole else f"{item.uri}#face{k + 1}"
                print(_line(label, p, classes, top))
    if args.show:
        if any(item.probs for item in items):
            show(items, classes, args.show)
            print(f"wrote {args.show}", file=sys.stderr)
        else:
            print("note: nothing to show (no image gave a prediction)", file=sys.stderr)
    return 1 if failed else 0
