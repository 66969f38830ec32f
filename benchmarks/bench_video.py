#!/usr/bin/env python3
"""Video labeling: sampled frames per second against a naive OpenCV loop, and memory in length.

    .venv/bin/python benchmarks/bench_video.py [--seconds 60] [--fps 2] [--repeats 3] [--json F]

A 640x480, 30 fps MPEG-4 video is written here from matplotlib's public-domain portrait (the face
drifts across a plain background; the last fifth has no face). Both sides sample --fps frames per
second, find faces and run the shipped model on them, one thread each, in the same run:
  ours    fer_ray's Labeler on the video object (video.Clip: grab every frame, decode only the
          sampled ones; faces "detect" + alignment; one forward per chunk)
  naive   cv2.VideoCapture.read() on every frame, every 15th kept, Haar (default cascade,
          detectMultiScale(gray, 1.1, 5)), crop + resize to 48, the same model per frame
Medians over --repeats; then the peak resident memory of labeling the video and one 4x as long
(flat in length when the second is no larger).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import figures  # noqa: E402
from fer_ray import bundle, labeler  # noqa: E402
from fer_ray.config import LabelConfig  # noqa: E402

SIZE, RATE = (640, 480), 30


def write_video(path: str, seconds: float) -> str:
    import cv2
    import matplotlib.cbook
    from PIL import Image

    face = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    face = np.asarray(face.crop((125, 79, 404, 358)).resize((200, 200)))[:, :, ::-1]
    out = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), RATE, SIZE)
    n = int(seconds * RATE)
    for k in range(n):
        frame = np.full((SIZE[1], SIZE[0], 3), (150, 160, 170), np.uint8)
        if k < 0.8 * n:
            x = 40 + int(360 * (k % (10 * RATE)) / (10 * RATE))
            frame[140:340, x : x + 200] = face
        out.write(frame)
    out.release()
    return path


def naive(path: str, fps: float, model, cascade) -> int:
    import cv2
    import torch

    cap = cv2.VideoCapture(path)
    every = max(1, round(RATE / fps))
    k = sampled = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if k % every == 0:
            sampled += 1
            gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            crops = [cv2.resize(gray[y:y + h, x:x + w], (48, 48)) for x, y, w, h in cascade.detectMultiScale(gray, 1.1, 5)]
            if crops:
                x = (torch.from_numpy(np.stack(crops)).float()[:, None] / 255 - 0.5074) / 0.255
                with torch.inference_mode():
                    torch.softmax(model(x), 1)
        k += 1
    cap.release()
    return sampled


def ours(stage, path: str) -> int:
    import pyarrow as pa

    t = stage(pa.table({"uri": [path], "size": [os.path.getsize(path)], "etag": ["x"]}, schema=labeler.INPUT_SCHEMA))
    return len(set(t.column("frame_index").drop_null().to_pylist()))


def peak_rss_mib(fn) -> float:
    """Peak resident memory while fn runs (Linux: the high-water mark is reset first)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def main() -> None:
    import cv2
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--fps", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    b = bundle.load()
    stage = labeler.Labeler(bundle.default_path(), b.model_id, "bench", LabelConfig(faces="auto", video_fps=args.fps),
                            threads=1, loaded=b)
    cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
    load = os.getloadavg()[0]
    print(f"load average {load:.2f} on {os.cpu_count()} cores; model {b.model_id} ({b.precision}); "
          f"{args.seconds:g} s of {SIZE[0]}x{SIZE[1]} at {RATE} fps, sampled at {args.fps:g} fps")
    with tempfile.TemporaryDirectory() as tmp:
        short = write_video(os.path.join(tmp, "short.mp4"), args.seconds)
        rates = {"ours": [], "naive": []}
        for _ in range(args.repeats):
            for key, fn in (("ours", lambda: ours(stage, short)), ("naive", lambda: naive(short, args.fps, b.model, cascade))):
                start = time.perf_counter()
                n = fn()
                rates[key].append(n / (time.perf_counter() - start))
        o, n = statistics.median(rates["ours"]), statistics.median(rates["naive"])
        print(f"sampled frames/s: ours {o:.1f}  naive {n:.1f}  ours/naive {o / n:.2f}")
        long = write_video(os.path.join(tmp, "long.mp4"), 4 * args.seconds)
        mem = {name: peak_rss_mib(lambda p=p: ours(stage, p)) for name, p in (("short", short), ("long", long))}
        print(f"peak RSS labeling it: {mem['short']:.0f} MiB ({args.seconds:g} s), {mem['long']:.0f} MiB "
              f"({4 * args.seconds:g} s)  long/short {mem['long'] / mem['short']:.2f}")
    figures.write(args.json, {"load_before": round(load, 2), "seconds": args.seconds, "fps": args.fps,
                              "ours_frames_per_s": round(o, 1), "naive_frames_per_s": round(n, 1),
                              "ratio": round(o / n, 2), "peak_rss_mib": {k: round(v) for k, v in mem.items()}})


if __name__ == "__main__":
    main()
