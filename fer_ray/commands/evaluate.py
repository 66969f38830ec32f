"""`fer-ray evaluate`: metrics, confusion matrix and plots for a bundle on a prepared split. The
command parses and prints; the job is evaluate.run_job."""

from __future__ import annotations

import dataclasses
import os

from .. import bundle as bundle_mod
from .. import data, faces, storage
from .. import evaluate as ev
from ..errors import UsageError

HELP = "evaluate a model bundle on a prepared split: metrics.json, confusion matrix, plots"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise UsageError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, metavar="BUNDLE", help="fast, accurate (the shipped models), a bundle directory or s3:// URI")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared data directory or s3:// URI (fer-ray prepare)")
    p.add_argument("--split", default="PrivateTest", choices=data.SPLITS, help="split to evaluate (default PrivateTest)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: mean softmax over 10 views (image + 4 zoomed corner crops, each flipped)")
    p.add_argument("--precision", choices=bundle_mod.PRECISIONS, default="auto",
                   help="auto (default): int8 on CPU when the bundle is calibrated, else fp32")
    p.add_argument("--out", metavar="DIR", help="output directory or s3:// URI (default BUNDLE/eval-SPLIT[-int8][-tta])")
    p.add_argument("--batch-size", type=_positive_int, default=256, metavar="B", help="images per forward pass (default 256)")
    p.add_argument("--samples", type=_positive_int, default=40, metavar="K", help="images in the sample grid (default 40)")
    p.add_argument("--faces", choices=faces.MODES, default="crop",
                   help="crop (default): the split's crops as they are; auto/detect: re-frame each crop the "
                        "way labeling does (for crops that come from elsewhere)")
    p.add_argument("--shifts", action="store_true",
                   help="also run the shift suite: accuracy under zoom, shift, rotation, lighting, blur, JPEG, "
                        "low resolution and occlusion, the model alone and through canonical framing")
    p.add_argument("--shift-sample", type=_positive_int, metavar="N",
                   help="run the shift suite on N random images of the split (default: all)")
    p.add_argument("--no-record", action="store_true", help="do not write the metrics into the bundle's bundle.json")


def run(args) -> int:
    req = ev.Request(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ev.Request)})
    done = ev.run_job(req)
    b, result = done["bundle"], done["result"]
    print(f"{b.model_id} ({b.precision}) on {args.split}{' with TTA' if args.tta else ''} "
          f"({result['images_per_second']} img/s)")
    for line in ev.summary_lines(result):
        print(line)
    for note in done["notes"]:
        print(f"note: {note}")
    for k in done["recorded"]:
        print(f"recorded metrics[{k!r}] in {os.path.join(req.model, bundle_mod.META_FILE)}")
    plots = ", ".join(p for p in done["plots"].values() if p)
    print(f"wrote {storage.join(done['out'], 'metrics.json')} and {plots}")
    return 0


