#!/usr/bin/env python3
"""Face detector speed: images/s of faces.find(img, "detect") on decoded images.

    .venv/bin/python benchmarks/bench_faces.py [--seconds 3] [--threads 1,0] [--recall N [--csv PATH]]

Inputs (all made here or shipped in installed packages): a 640x480 canvas with four copies of
the face in matplotlib's Grace Hopper portrait pasted on it, a 640x480 crop of matplotlib's Grace Hopper portrait (one real face), 640x480 noise
(a worst case: texture everywhere), and a 1920x1080 canvas (scanned downscaled to faces.MAX_SIDE).
--threads: OpenCV worker threads to try (0 = OpenCV's default, all cores). In a Ray actor with
fractional CPUs set 1 and let Ray run actors side by side.
--recall N: also the detector's recall on the first N FER-2013 PublicTest crops (upscaled to 140 px)
pasted (a) onto a plain grey canvas and (b) into a blurred copy of their own border (a softer,
more photo-like surround), a face counting as found at IoU > 0.5; plus the median ratio of the
detected box side to the crop side (the evidence for faces.MARGIN = 0). Prints, never asserts. "Per CPU-second"
is the load-independent figure (on a busy machine wall-clock rates fall, CPU cost does not).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fer_ray import faces  # noqa: E402

def hopper() -> Image.Image | None:
    spec = importlib.util.find_spec("matplotlib")
    if spec and spec.submodule_search_locations:
        p = os.path.join(list(spec.submodule_search_locations)[0], "mpl-data", "sample_data", "grace_hopper.jpg")
        if os.path.exists(p):
            return Image.open(p).convert("RGB")  # 512x600, the face at (145, 99, 239, 239)
    return None


def canvas(size, side, portrait):
    img = Image.new("L", size, 170)
    face = portrait.convert("L").crop((133, 87, 396, 350))
    step = size[0] // 4
    for i in range(4):
        img.paste(face.resize((side, side), Image.BICUBIC), (i * step + 10, (size[1] - side) // 2 + (i % 2) * side // 3))
    return img.convert("RGB")


def inputs():
    out = {}
    hop = hopper()
    if hop is not None:
        out["canvas 640x480, 4 faces"] = canvas((640, 480), 120, hop)
        out["photo 640x480, 1 face"] = hop.resize((640, 750)).crop((0, 80, 640, 560))
    rng = np.random.default_rng(0)
    out["noise 640x480, no face"] = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    if hop is not None:
        out["canvas 1920x1080, 4 faces"] = canvas((1920, 1080), 300, hop)
    return out


def rate(img, seconds):
    """-> (images per wall second, images per CPU second of this process)."""
    faces.find(img, "detect")  # load the cascade, warm caches
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        faces.find(img, "detect")
        n += 1
    return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)


def recall(csv_path, n, side=140, pad=100):
    import csv
    import gzip

    import cv2

    opener = gzip.open if csv_path.endswith(".gz") else open
    crops = []
    with opener(csv_path, "rt", newline="") as f:
        for rec in csv.DictReader(f):
            if rec["Usage"] == "PublicTest":
                crops.append(np.array(rec["pixels"].split(), np.uint8).reshape(48, 48))
                if len(crops) >= n:
                    break
    known = (pad, pad, side, side)
    for setting in ("plain canvas", "blurred surround"):
        hits, ratios = 0, []
        for a in crops:
            face = np.asarray(Image.fromarray(a).resize((side, side), Image.BICUBIC))
            if setting == "plain canvas":
                c = np.full((side + 2 * pad, side + 2 * pad), 170, np.uint8)
            else:
                c = cv2.GaussianBlur(cv2.copyMakeBorder(face, pad, pad, pad, pad, cv2.BORDER_REPLICATE), (0, 0), 20)
            c[pad:pad + side, pad:pad + side] = face
            best = max(faces.find(Image.fromarray(c), "detect"), key=lambda b: _iou(b, known), default=None)
            if best is not None and _iou(best, known) > 0.5:
                hits += 1
                ratios.append(best[2] / side)
        print(f"recall, {len(crops)} PublicTest crops, {setting:16s}: {hits / len(crops):.3f}"
              f"  (box side / crop side: median {np.median(ratios):.2f},"
              f" quartiles {np.percentile(ratios, 25):.2f}-{np.percentile(ratios, 75):.2f})")


def _iou(a, b):
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", default="1,0")
    ap.add_argument("--recall", type=int, default=0, metavar="N")
    ap.add_argument("--csv", default=os.environ.get(
        "FER2013_CSV", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "fer2013.csv.gz")))
    args = ap.parse_args()
    import cv2

    print(f"OpenCV {cv2.__version__}, cascade {faces.CASCADE_FILE}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    imgs = inputs()
    for name, img in imgs.items():
        print(f"  {name}: {len(faces.find(img, 'detect'))} face(s) found")
    for threads in (int(t) for t in args.threads.split(",")):
        cv2.setNumThreads(threads if threads > 0 else -1)
        label = f"{threads} thread" if threads > 0 else f"default threads ({cv2.getNumThreads()})"
        for name, img in imgs.items():
            wall, cpu = rate(img, args.seconds)
            print(f"{label:>22} | {name:28s} | {wall:7.1f} images/s wall | {cpu:7.1f} images per CPU-second")
    if args.recall:
        cv2.setNumThreads(-1)
        recall(args.csv, args.recall)


if __name__ == "__main__":
    main()
