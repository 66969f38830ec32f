#!/usr/bin/env python3
"""Faces: finding them in real photos, the old detector against the new one, and the framing evidence.

    .venv/bin/python benchmarks/bench_faces.py --wider WIDER_VAL [--n 400] [--json out.json]
    .venv/bin/python benchmarks/bench_faces.py --framing data/fer2013-clean [--n 3000]

--wider DIR: WIDER FACE validation (DIR/images/<event>/<file>.jpg and DIR/gt.txt, the official
`wider_face_val_bbx_gt.txt`; research licence: read from where you keep it, never copied here).
On --n photos drawn at random (seed 0) it runs, side by side on the same decoded photos, one
thread each:
  haar    the Haar cascade fer-ray used before (haarcascade_frontalface_alt2, scale 1.1, 4
          neighbours, faces >= 32 px, photos shrunk to 1024 px), and a plain crop of each box
  yunet   fer_ray.faces.faces(img, "detect"): YuNet, then each face aligned from its landmarks
and prints recall at IoU >= 0.5 over the annotated faces of at least 32 px (the annotators'
"invalid" faces left out), precision over the faces each reports of at least 32 px (a report
counts as right when it overlaps any annotated face, of any size, at IoU >= 0.5; WIDER leaves
some faces in crowds unannotated, so this errs low), and the median milliseconds per photo
(detection + framing; decoding not included).

--framing DIR (prepared FER-2013): where the detector puts the five landmarks inside FER-2013
Training crops (the measurement behind fer_ray.faces.align.TEMPLATE) and the face box (behind
framing.BOX_CENTRE/BOX_SIZE), and how often a face is found in PrivateTest crops under each shift
of the shift suite. Prints, never asserts; without the data it says so and skips.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fer_ray import faces  # noqa: E402
from fer_ray.faces import detector  # noqa: E402
from benchmarks import figures  # noqa: E402

MIN_FACE = 32


def read_gt(path: str) -> dict[str, np.ndarray]:
    """WIDER's gt text -> {relative path: (N, 5) x, y, w, h, invalid}."""
    out, lines, k = {}, open(path).read().split("\n"), 0
    while k < len(lines) and lines[k].strip():
        name, n = lines[k].strip(), int(lines[k + 1])
        rows = [list(map(int, lines[k + 2 + j].split()[:8])) for j in range(max(n, 1))]
        out[name] = np.array([[r[0], r[1], r[2], r[3], r[7]] for r in rows], np.float64).reshape(-1, 5)[:n]
        k += 2 + max(n, 1)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) boxes (x, y, w, h) -> (N, M) intersection over union."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    ax1, ay1, bx1, by1 = a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    w = np.clip(np.minimum(ax1, bx1) - np.maximum(a[:, 0:1], b[:, 0]), 0, None)
    h = np.clip(np.minimum(ay1, by1) - np.maximum(a[:, 1:2], b[:, 1]), 0, None)
    inter = w * h
    return inter / (a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter + 1e-9)


class Haar:
    """The detector fer-ray shipped before YuNet, as it ran on photos."""

    def __init__(self):
        import cv2

        self.cv2 = cv2
        self.cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_alt2.xml"))

    def __call__(self, img: Image.Image) -> list:
        gray = np.asarray(img.convert("L"))
        scale = min(1.0, 1024 / max(gray.shape))
        if scale < 1:
            gray = self.cv2.resize(gray, (round(gray.shape[1] * scale), round(gray.shape[0] * scale)),
                                   interpolation=self.cv2.INTER_AREA)
        side = max(MIN_FACE, int(0.04 * min(gray.shape)))
        found = self.cascade.detectMultiScale(gray, 1.1, 4, minSize=(side, side))
        boxes = [tuple(v / scale for v in b) for b in (found if len(found) else [])]
        for x, y, w, h in boxes:  # the crop the model would get, so both columns time the same work
            crop = gray[int(y * scale):int((y + h) * scale), int(x * scale):int((x + w) * scale)]
            self.cv2.resize(crop, (48, 48), interpolation=self.cv2.INTER_AREA)
        return boxes


def yunet(img: Image.Image) -> list:
    return [f.box for f in faces.faces(img, "detect")]


def wider(root: str, n: int, seed: int = 0) -> dict:
    import cv2

    from fer_ray import preprocess

    gt_path = os.path.join(root, "gt.txt")
    if not os.path.exists(gt_path):
        print(f"--wider: no gt.txt in {root}; skipped")
        return {}
    gt = {k: v for k, v in read_gt(gt_path).items() if os.path.exists(os.path.join(root, "images", k))}
    names = sorted(gt)
    random.Random(seed).shuffle(names)
    names = names[:n]
    cv2.setNumThreads(1)
    import torch

    torch.set_num_threads(1)
    detectors = {"haar": Haar(), "yunet": yunet}
    stats = {k: {"hit": 0, "reported": 0, "right": 0, "ms": []} for k in detectors}
    faces_32 = 0
    for name in names:
        with open(os.path.join(root, "images", name), "rb") as f:
            img = preprocess.decode(f.read())
        boxes = gt[name]
        big = boxes[(np.maximum(boxes[:, 2], boxes[:, 3]) >= MIN_FACE) & (boxes[:, 4] == 0)][:, :4]
        faces_32 += len(big)
        for key, fn in detectors.items():
            start = time.perf_counter()
            found = np.array(fn(img), np.float64).reshape(-1, 4)
            stats[key]["ms"].append((time.perf_counter() - start) * 1000)
            stats[key]["hit"] += int((iou(big, found).max(1, initial=0) >= 0.5).sum()) if len(found) else 0
            mine = found[np.maximum(found[:, 2], found[:, 3]) >= MIN_FACE]
            stats[key]["reported"] += len(mine)
            stats[key]["right"] += int((iou(mine, boxes[:, :4]).max(1, initial=0) >= 0.5).sum()) if len(mine) else 0
    print(f"WIDER FACE val: {len(names)} photos (seed {seed}), {faces_32} annotated faces >= {MIN_FACE} px; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, one thread each")
    out = {"photos": len(names), "faces_32": faces_32}
    for key, s in stats.items():
        recall = s["hit"] / max(1, faces_32)
        precision = s["right"] / max(1, s["reported"])
        ms = statistics.median(s["ms"])
        print(f"  {key:<6} recall {recall:.3f}  precision {precision:.3f}  {ms:6.1f} ms/photo (median)")
        out[key] = {"recall": round(recall, 4), "precision": round(precision, 4), "ms_per_photo": round(ms, 1)}
    return out


def measure_framing(prepared: str, n: int) -> dict:
    from fer_ray import data, shifts

    try:
        train = data.load_split(prepared, "Training")
        test = data.load_split(prepared, "PrivateTest")
    except Exception as exc:  # noqa: BLE001
        print(f"--framing: cannot read prepared data in {prepared} ({type(exc).__name__}); skipped")
        return {}
    rng = np.random.default_rng(0)
    idx = rng.choice(len(train.labels), min(n, len(train.labels)), replace=False)
    lms, boxes = [], []
    for i in idx:
        found = detector.detect(Image.fromarray(np.asarray(train.pixels[i])))
        if found:
            best = max(found, key=lambda d: d.score)
            lms.append(best.landmarks / 48.0)
            boxes.append(np.array(best.box) / 48.0)
    lms, boxes = np.array(lms), np.array(boxes)
    print(f"FER-2013 Training, {len(idx)} random crops: a face found in {len(lms) / len(idx):.1%}")
    for k, part in enumerate(("eye (left in image)", "eye (right)", "nose tip", "mouth (left)", "mouth (right)")):
        q = np.percentile(lms[:, k], [25, 50, 75], axis=0)
        print(f"  {part:<20} median ({q[1, 0]:.4f}, {q[1, 1]:.4f})  quartiles x {q[0, 0]:.3f}-{q[2, 0]:.3f} "
              f"y {q[0, 1]:.3f}-{q[2, 1]:.3f}")
    centre = np.median(boxes[:, :2] + boxes[:, 2:] / 2, 0)
    size = np.median(boxes[:, 2:], 0)
    print(f"  face box: centre ({centre[0]:.3f}, {centre[1]:.3f}), size ({size[0]:.3f}, {size[1]:.3f}) of the side")
    keep = rng.choice(len(test.labels), min(n, len(test.labels)), replace=False)
    px = np.asarray(test.pixels)[keep]
    print(f"a face found (framer or detector, --faces auto) in {len(keep)} PrivateTest crops, per shift:")
    found_rate = {}
    for name in shifts.SHIFTS:
        _, face_sources = faces.frame_crops(shifts.apply(px, name))
        found_rate[name] = (face_sources["as-framed"] + face_sources["detected"]) / len(keep)
        print(f"  {name:<16} {found_rate[name]:.1%}")
    in_photos = crops_in_photos(test, rng)
    return {"template": np.median(lms, 0).round(4).tolist(), "found": found_rate, "in_photos": in_photos}


def crops_in_photos(test, rng, n: int = 1200) -> dict:
    """PrivateTest crops enlarged 3x into a 400x300 photo and turned by up to 15 degrees: the
    model's accuracy on the faces found, framed by landmark alignment (what fer-ray does) and by
    a plain square crop of the detector's box (what a user would write), against the crops as
    they are. How much of FER-2013's own framing each way recovers."""
    from fer_ray.faces import align
    from fer_ray.recognizer import Recognizer

    rec = Recognizer("fast")
    b = rec.bundle
    idx = rng.choice(len(test.labels), min(n, len(test.labels)), replace=False)
    y, kept, aligned, square = np.asarray(test.labels)[idx], [], [], []
    for k, i in enumerate(idx):
        canvas = Image.new("L", (400, 300), int(rng.integers(60, 200)))
        canvas.paste(Image.fromarray(np.asarray(test.pixels[i])).resize((144, 144), Image.BICUBIC), (130, 80))
        canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR, center=(202, 152), fillcolor=128)
        found = detector.detect(canvas)
        if not found:
            continue
        d = max(found, key=lambda f: f.score)
        x, yy, w, h = d.box
        side = max(w, h)
        kept.append(k)
        aligned.append(align.align(np.asarray(canvas), d.landmarks))
        box = (round(x + w / 2 - side / 2), round(yy + h / 2 - side / 2), round(x + w / 2 + side / 2), round(yy + h / 2 + side / 2))
        square.append(np.asarray(canvas.crop(box).resize((48, 48), Image.BILINEAR)))
    acc = lambda px: float((rec.probabilities(np.stack(px)).argmax(1) == y[kept]).mean())  # noqa: E731
    out = {"found": len(kept) / len(idx), "original": acc([np.asarray(test.pixels[idx[k]]) for k in kept]),
           "aligned": acc(aligned), "square_box": acc(square)}
    print(f"{len(idx)} PrivateTest crops placed in photos, turned up to 15 degrees: a face found in {out['found']:.1%}; "
          f"accuracy on them: crops as they are {out['original']:.1%}, aligned {out['aligned']:.1%}, "
          f"square box crop {out['square_box']:.1%} ({b.model_id}, {b.precision})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wider", metavar="DIR", help="WIDER FACE validation: DIR/images/... and DIR/gt.txt")
    ap.add_argument("--framing", metavar="PREPARED_DIR", help="prepared FER-2013 (fer-ray prepare --output)")
    ap.add_argument("--n", type=int, default=400, help="photos for --wider; crops per split for --framing")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    if not (args.wider or args.framing):
        ap.error("give --wider DIR and/or --framing DIR")
    out = {}
    if args.wider:
        out["wider"] = wider(args.wider, args.n)
    if args.framing:
        out["framing"] = measure_framing(args.framing, args.n)
    figures.write(args.json, out)


if __name__ == "__main__":
    main()
