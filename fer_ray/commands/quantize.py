"""`fer-ray quantize --model BUNDLE --data DIR`: calibrate a bundle for int8 CPU inference."""

from __future__ import annotations

import os

from .. import bundle as bundle_mod
from .. import data, quantize, storage
from ..errors import FerRayError, UsageError

HELP = "calibrate a local bundle for int8 CPU inference (about 3x faster; used by default on CPU)"


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, metavar="BUNDLE",
                   help="local bundle directory (changed in place; an ensemble: every member)")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared data directory or s3:// URI (fer-ray prepare)")
    p.add_argument("--samples", type=int, default=2048, metavar="N",
                   help="Training images to calibrate on (default 2048)")
    p.add_argument("--seed", type=int, default=0, help="which Training images (default 0)")


def run(args) -> int:
    if storage.is_s3(args.model):
        raise UsageError("--model must be a local bundle directory (copy it from S3 first)")
    if bundle_mod.is_shipped(bundle_mod.resolve(args.model)):
        raise UsageError("shipped bundles are read-only: copy the bundle and quantize the copy")
    if args.samples <= 0:
        raise UsageError(f"--samples must be a positive integer, got {args.samples}")
    bundle_mod.read_meta(args.model)  # a clear error before the data is read
    if not quantize.available():
        raise FerRayError(f"this torch has no {quantize.ENGINE} quantised engine")
    pixels = data.load_split(args.data, "Training").pixels
    meta = bundle_mod.calibrate(args.model, pixels, args.samples, args.seed, calibrated_from=args.data)
    check = bundle_mod.load(args.model, precision="int8")
    images = min(args.samples, len(pixels))
    print(f"{meta['model_id']}: int8 calibration on {images} Training images "
          f"-> {os.path.join(args.model, bundle_mod.INT8_FILE)} ({check.precision} loads)")
    return 0
