"""`fer-ray evaluate`: metrics, confusion matrix and plots for a bundle on a prepared split."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile

from .. import bundle as bundle_mod
from .. import data, storage
from .. import evaluate as ev
from ..errors import FerRayError, UsageError

HELP = "evaluate a model bundle on a prepared split: metrics.json, confusion matrix, plots"

PLOTS = {"curves": "training_curves.png", "confusion": "confusion.png", "samples": "samples.png"}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise UsageError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, metavar="BUNDLE", help="bundle directory or s3:// URI")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared data directory or s3:// URI (fer-ray prepare)")
    p.add_argument("--split", default="PrivateTest", choices=data.SPLITS, help="split to evaluate (default PrivateTest)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: mean softmax over 10 views (image + 4 zoomed corner crops, each flipped)")
    p.add_argument("--precision", choices=bundle_mod.PRECISIONS, default="auto",
                   help="auto (default): int8 on CPU when the bundle is calibrated, else fp32")
    p.add_argument("--out", metavar="DIR", help="output directory or s3:// URI (default BUNDLE/eval-SPLIT[-int8][-tta])")
    p.add_argument("--batch-size", type=_positive_int, default=256, metavar="B", help="images per forward pass (default 256)")
    p.add_argument("--samples", type=_positive_int, default=40, metavar="K", help="images in the sample grid (default 40)")
    p.add_argument("--no-record", action="store_true", help="do not write the metrics into the bundle's bundle.json")


def _put_dir(local: str, uri: str) -> None:
    fs, path = storage.filesystem(uri)
    for name in sorted(os.listdir(local)):
        fs.put(os.path.join(local, name), f"{path}/{name}")


def record_in_bundle(directory: str, key: str, summary: dict) -> dict:
    """Store `summary` under meta["metrics"][key] of a local bundle; the model_id is untouched."""
    meta = bundle_mod.read_meta(directory)
    meta.setdefault("metrics", {})[key] = summary  # model_id hashes the weights, which stay as they are
    bundle_mod.write_meta(directory, meta)
    return meta


def run(args) -> int:
    b = bundle_mod.load(args.model, precision=args.precision)
    split = data.load_split(args.data, args.split)
    if len(split) == 0:
        raise FerRayError(f"split {args.split} in {args.data} has no rows")
    key = args.split + ("-int8" if b.precision == "int8" else "") + ("-tta" if args.tta else "")
    out = args.out or storage.join(args.model, f"eval-{key}")
    remote = storage.is_s3(out)
    local_out = tempfile.mkdtemp(prefix="fer-ray-eval-") if remote else out
    os.makedirs(local_out, exist_ok=True)

    result, probs = ev.evaluate_split(b, split, batch_size=args.batch_size, tta=args.tta)
    title = f"{b.model_id} on {key}"

    plots: dict[str, str | None] = {}
    notes: list[str] = []
    record = not args.no_record and not storage.is_s3(args.model)
    if not args.no_record and not record:
        notes.append("bundle is on S3: metrics not recorded into its bundle.json")
    history = (b.meta.get("training") or {}).get("history")
    if ev.plot_history(history, os.path.join(local_out, PLOTS["curves"]), title=f"{b.model_id} training"):
        plots["training_curves"] = PLOTS["curves"]
    else:
        plots["training_curves"] = None
        notes.append("no training history in the bundle: training curves skipped")
    ev.plot_confusion(result["confusion"], os.path.join(local_out, PLOTS["confusion"]), b.classes,
                      title=f"{title}: accuracy {result['accuracy']:.3f}")
    plots["confusion"] = PLOTS["confusion"]
    ev.plot_samples(split.pixels, split.labels, probs, os.path.join(local_out, PLOTS["samples"]), b.classes,
                    count=args.samples, title=title)
    plots["samples"] = PLOTS["samples"]

    checksum = data.checksum(args.data)
    if b.meta.get("data_checksum") and b.meta["data_checksum"] != checksum:
        notes.append("this prepared data is not the data the model was trained on (checksums differ)")
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    report = {
        "model_id": b.model_id,
        "arch": b.meta.get("arch"),
        "model": args.model,
        "data": args.data if storage.is_s3(args.data) else os.path.abspath(args.data),
        "data_checksum": checksum,
        "trained_on_checksum": b.meta.get("data_checksum"),
        "same_data_as_training": None if not b.meta.get("data_checksum") else checksum == b.meta["data_checksum"],
        "split": args.split,
        "tta": bool(args.tta),
        "precision": b.precision,
        "classes": b.classes,
        **result,
        "plots": plots,
        "notes": notes,
        "evaluated_at": now,
    }
    with open(os.path.join(local_out, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    if remote:
        _put_dir(local_out, out)
        shutil.rmtree(local_out, ignore_errors=True)

    if record:
        nit = result["not_in_training"]
        record_in_bundle(args.model, key, {
            "n": result["n"],
            "accuracy": result["accuracy"],
            "loss": result["loss"],
            "macro_f1": result["macro_f1"],
            "not_in_training": {"n": nit["n"], "accuracy": nit["accuracy"]},
            "tta": bool(args.tta),
            "precision": b.precision,
            "data_checksum": report["data_checksum"],
            "evaluated_at": now,
        })

    print(f"{b.model_id} ({b.precision}) on {args.split}{' with TTA' if args.tta else ''} "
          f"({result['images_per_second']} img/s)")
    for line in ev.summary_lines(result, b.classes):
        print(line)
    for note in notes:
        print(f"note: {note}")
    if record:
        print(f"recorded metrics[{key!r}] in {os.path.join(args.model, bundle_mod.META_FILE)}")
    print(f"wrote {storage.join(out, 'metrics.json')} and {', '.join(p for p in plots.values() if p)}")
    return 0
