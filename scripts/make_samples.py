#!/usr/bin/env python3
"""Write sample face crops from FER-2013's PublicTest split (the demo labels them).

    python scripts/make_samples.py [FER2013_CSV_GZ] [--ferplus FER2013NEW_CSV] [--per-class 6] [--out DIR]

FER-2013 is not ours to redistribute, so no crop of it is committed: the demo makes its samples
from the user's own copy of the CSV, into out/ (git-ignored).

The CSV path comes from the argument, else $FER2013_CSV, else data/fer2013.csv.gz.
Output: DIR/publictest_<row>_<emotion>.png, 48x48 8-bit grayscale PNGs, where <row> is the
0-based data row of fer2013.csv (the same numbering as the prepared data's `source_row`).

Which rows: PublicTest, in file order, the first --per-class rows of each emotion that
  - are not blank (pixel std >= 10; FER-2013 has all-black rows),
  - do not also occur pixel-identically in Training (no leakage into a demo),
  - when the FER+ votes are at hand (fer2013new.csv beside the CSV, or --ferplus): have no
    "not a face" vote and a FER+ majority that agrees with the original label,
so the README demo runs on clean, unambiguous faces. Deterministic: same input -> same files.
Existing publictest_*.png files in DIR are removed first.
"""

from __future__ import annotations

import argparse
import csv
import glob
import gzip
import hashlib
import os
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from fer_ray.emotions import EMOTIONS  # noqa: E402

DEFAULT_CSV = os.path.join(ROOT, "data", "fer2013.csv.gz")
# fer2013new.csv vote columns, in their file order, mapped to EMOTIONS indices (contempt/unknown/NF: none).
FERPLUS_COLUMNS = {"anger": 0, "disgust": 1, "fear": 2, "happiness": 3, "sadness": 4, "surprise": 5, "neutral": 6}


def open_text(path: str):
    return gzip.open(path, "rt", newline="") if path.endswith(".gz") else open(path, newline="")


def read_ferplus(path: str) -> list[tuple[np.ndarray, int]]:
    """Per data row: (votes in EMOTIONS order, NF votes). Joined by row position, never by name."""
    out = []
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            votes = np.zeros(len(EMOTIONS))
            for col, idx in FERPLUS_COLUMNS.items():
                votes[idx] = float(rec[col] or 0)
            out.append((votes, int(float(rec["NF"] or 0))))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", nargs="?", default=os.environ.get("FER2013_CSV", DEFAULT_CSV))
    ap.add_argument("--ferplus", default=None, help="fer2013new.csv (default: beside the CSV, if present)")
    ap.add_argument("--per-class", type=int, default=6)
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "samples"))
    args = ap.parse_args(argv)

    if not os.path.exists(args.csv):
        print(f"make_samples: no FER-2013 CSV at {args.csv} (pass a path or set FER2013_CSV)", file=sys.stderr)
        return 2
    ferplus_path = args.ferplus or os.path.join(os.path.dirname(args.csv), "fer2013new.csv")
    ferplus = read_ferplus(ferplus_path) if os.path.exists(ferplus_path) else None

    training_hashes: set[bytes] = set()
    candidates: list[tuple[int, int, str]] = []  # (row, emotion, pixel string)
    with open_text(args.csv) as f:
        for row, rec in enumerate(csv.DictReader(f)):
            if rec["Usage"] == "Training":
                training_hashes.add(hashlib.sha1(rec["pixels"].encode()).digest())
            elif rec["Usage"] == "PublicTest":
                candidates.append((row, int(rec["emotion"]), rec["pixels"]))

    chosen: dict[int, list[tuple[int, np.ndarray]]] = {e: [] for e in range(len(EMOTIONS))}
    for row, emotion, pixels in candidates:
        if len(chosen[emotion]) >= args.per_class:
            continue
        if hashlib.sha1(pixels.encode()).digest() in training_hashes:
            continue
        arr = np.array(pixels.split(), dtype=np.uint8).reshape(48, 48)
        if arr.std() < 10:
            continue
        if ferplus is not None:
            votes, nf = ferplus[row]
            if nf > 0 or votes.sum() == 0 or int(np.argmax(votes)) != emotion:
                continue
        chosen[emotion].append((row, arr))

    os.makedirs(args.out, exist_ok=True)
    for old in glob.glob(os.path.join(args.out, "publictest_*.png")):
        os.remove(old)
    written = 0
    for emotion, items in chosen.items():
        for row, arr in items:
            name = f"publictest_{row}_{EMOTIONS[emotion]}.png"
            Image.fromarray(arr, mode="L").save(os.path.join(args.out, name), optimize=True)
            written += 1
        if len(items) < args.per_class:
            print(f"make_samples: only {len(items)} clean {EMOTIONS[emotion]} rows", file=sys.stderr)
    print(f"wrote {written} samples to {args.out} (FER+ filter: {'on' if ferplus else 'off'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
