#!/usr/bin/env python3
"""Faces: detection speed on photos against a naive OpenCV loop, and the framing evidence.

    .venv/bin/python benchmarks/bench_faces.py [--repeats 5]
    .venv/bin/python benchmarks/bench_faces.py --framing data/fer2013-clean [--n 1000]

Speed (always): 640x480 photos made here from matplotlib's public-domain portrait of Grace Hopper
(four faces pasted on a plain canvas; the portrait itself; noise, a worst case), each labelled by
  ours    framing.faces(img, "detect") + the shipped model on the re-framed faces (one thread)
  naive   cv2.CascadeClassifier(...).detectMultiScale(gray, 1.1, 5) + crop + resize to 48 + the
          same model, the loop a user would write with OpenCV (one thread)
in the same run; medians over --repeats passes, and the ratio ours / naive.

--framing DIR (prepared FER-2013): where the detector puts the face box inside FER-2013 Training
crops (centre and side relative to the crop: the measurement behind framing.CENTRE_X/Y and
framing.SIDE), and the detector's hit rate on PrivateTest and on its shifted copies
(fer_ray.shifts). Prints, never asserts; without the data it says so and skips that part.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fer_ray import faces, framing  # noqa: E402

FACE_BOX = (145, 99, 239, 239)  # where the detector finds the face in the portrait


def portrait() -> Image.Image:
    import matplotlib.cbook

    return Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")


def photos() -> dict[str, Image.Image]:
    p = portrait()
    x, y, w, h = FACE_BOX
    face = p.crop((x - 20, y - 20, x + w + 20, y + h + 20))
    group = Image.new("RGB", (640, 480), (170, 160, 150))
    for (fx, fy, side) in ((20, 40, 150), (200, 250, 120), (330, 30, 170), (500, 260, 130)):
        group.paste(face.resize((side, side)), (fx, fy))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    return {"four faces": group, "portrait": p.resize((640, 480)), "noise": noise}


def naive_loop(imgs, model, cascade):
    import cv2
    import torch

    for img in imgs:
        gray = cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2GRAY)
        crops = [cv2.resize(gray[y:y + h, x:x + w], (48, 48)) for x, y, w, h in cascade.detectMultiScale(gray, 1.1, 5)]
        if crops:
            x = (torch.from_numpy(np.stack(crops)).float()[:, None] / 255 - 0.5074) / 0.255
            with torch.inference_mode():
                torch.softmax(model(x), 1)


def ours(imgs, b):
    import torch

    for img in imgs:
        found = framing.faces(img, "detect")
        if found:
            with torch.inference_mode():
                torch.softmax(b.model(b.inputs(np.stack([f.pixels for f in found]))), 1)


def speed(repeats: int) -> None:
    import cv2
    import torch

    from fer_ray import bundle

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    b = bundle.load()
    cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; model {b.model_id} ({b.precision})")
    for name, img in photos().items():
        imgs = [img] * 5
        t = {"ours": [], "naive": []}
        for _ in range(repeats):
            for key, fn in (("ours", lambda: ours(imgs, b)), ("naive", lambda: naive_loop(imgs, b.model, cascade))):
                start = time.perf_counter()
                fn()
                t[key].append(len(imgs) / (time.perf_counter() - start))
        o, n = statistics.median(t["ours"]), statistics.median(t["naive"])
        print(f"  {name:<11} ours {o:6.1f} img/s  naive {n:6.1f} img/s  ours/naive {o / n:.2f}  "
              f"(faces found: ours {len(framing.faces(img, 'detect'))})")


def measure_framing(prepared: str, n: int) -> None:
    from fer_ray import data, shifts

    try:
        train = data.load_split(prepared, "Training")
        test = data.load_split(prepared, "PrivateTest")
    except Exception as exc:  # noqa: BLE001
        print(f"--framing: cannot read prepared data in {prepared} ({type(exc).__name__}); skipped")
        return
    rng = np.random.default_rng(0)
    idx = rng.choice(len(train.labels), min(n, len(train.labels)), replace=False)
    boxes = [faces.detect(Image.fromarray(np.asarray(train.pixels[i]))) for i in idx]
    one = np.array([b[0] for b in boxes if len(b) == 1], np.float64) / 48.0
    side = one[:, 2]
    cx, cy = one[:, 0] + side / 2, one[:, 1] + one[:, 3] / 2
    print(f"FER-2013 Training, {len(idx)} random crops: one face found in {len(one) / len(idx):.1%}")
    for label, v in (("centre x", cx), ("centre y", cy), ("side", side)):
        q = np.percentile(v, [5, 25, 50, 75, 95])
        print(f"  {label:<8} median {q[2]:.3f}  quartiles {q[1]:.3f}-{q[3]:.3f}  5-95% {q[0]:.3f}-{q[4]:.3f}")
    keep = rng.choice(len(test.labels), min(n, len(test.labels)), replace=False)
    px = np.asarray(test.pixels)[keep]
    print(f"detector hit rate (a face found) on {len(keep)} PrivateTest crops, per shift:")
    for name in shifts.SHIFTS:
        _, sources = framing.frame_crops(shifts.apply(px, name))
        print(f"  {name:<16} {(sources['as-framed'] + sources['detected']) / len(keep):.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--framing", metavar="PREPARED_DIR", help="prepared FER-2013 (fer-ray prepare --output)")
    ap.add_argument("--n", type=int, default=1000, help="crops per split for --framing")
    args = ap.parse_args()
    speed(args.repeats)
    if args.framing:
        measure_framing(args.framing, args.n)


if __name__ == "__main__":
    main()
