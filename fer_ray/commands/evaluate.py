"""`fer-ray evaluate`: metrics, confusion matrix and plots for a bundle on a prepared split."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile

from .. import bundle as bundle_mod
from .. import data, faces, shifts, storage
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


def record_in_bundle(directory: str, key: str, summary: dict) -> dict:
    """Store `summary` under meta["metrics"][key] of a local bundle; the model_id is untouched.
    A result measured on other data (another checksum) is never overwritten: returns None then."""
    meta = bundle_mod.read_meta(directory)
    old = meta.get("metrics", {}).get(key)
    if old and old.get("data_checksum") and old["data_checksum"] != summary.get("data_checksum"):
        return None
    meta.setdefault("metrics", {})[key] = summary  # model_id hashes the weights, which stay as they are
    bundle_mod.write_meta(directory, meta)
    return meta


def _record_where(args) -> tuple[bool, str | None]:
    """Whether to record into the bundle, and the note that says why not."""
    if args.no_record:
        return False, None
    if storage.is_s3(args.model):
        return False, "bundle is on S3: metrics not recorded into its bundle.json"
    if bundle_mod.is_shipped(bundle_mod.resolve(args.model)):
        return False, "shipped bundles are read-only: metrics not recorded (copy the bundle to record into it)"
    return True, None


def _shift_suite(args, b, split, local_out: str, checksum: str, now: str) -> tuple[str, dict]:
    key = f"shifts-{args.split}" + ("-int8" if b.precision == "int8" else "")
    print(f"shift suite on {args.split} ({args.shift_sample or len(split)} images):")
    try:
        result = shifts.run(b, split, sample=args.shift_sample, batch_size=args.batch_size, say=print)
    except faces.detector.DetectorUnavailable as exc:
        raise FerRayError(f"--shifts: {exc}") from None
    result.update(data_checksum=checksum, precision=b.precision, evaluated_at=now)
    with open(os.path.join(local_out, "shifts.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(local_out, "shifts.md"), "w") as f:
        f.write("\n".join(shifts.table(result)) + "\n")
    shifts.plot(result, os.path.join(local_out, "shifts.png"), title=f"{b.model_id}: {args.split} under shifts")
    for line in shifts.table(result):
        print(line)
    return key, result


def run(args) -> int:
    b = bundle_mod.load(args.model, precision=args.precision)
    split = data.load_split(args.data, args.split)
    if len(split) == 0:
        raise FerRayError(f"split {args.split} in {args.data} has no rows")
    key = (args.split + ("-int8" if b.precision == "int8" else "") + ("-tta" if args.tta else "")
           + ("" if args.faces == "crop" else f"-faces-{args.faces}"))
    if args.faces != "crop":
        try:
            split.pixels, sources = faces.frame_crops(split.pixels, args.faces)
        except faces.detector.DetectorUnavailable as exc:
            raise FerRayError(f"--faces {args.faces}: {exc}") from None
        print(f"framing ({args.faces}): " + ", ".join(f"{n} {s}" for s, n in sources.items()))
    shipped = bundle_mod.is_shipped(bundle_mod.resolve(args.model))
    out = args.out or (f"eval-{b.model_id}-{key}" if shipped else storage.join(args.model, f"eval-{key}"))
    try:
        bundle_mod.ensure_writable(out)
    except bundle_mod.BundleError as exc:
        raise UsageError(str(exc)) from None
    remote = storage.is_s3(out)
    local_out = tempfile.mkdtemp(prefix="fer-ray-eval-") if remote else out
    os.makedirs(local_out, exist_ok=True)

    result, probs = ev.evaluate_split(b, split, batch_size=args.batch_size, tta=args.tta)
    title = f"{b.model_id} on {key}"

    plots: dict[str, str | None] = {}
    notes: list[str] = []
    record, why = _record_where(args)
    if why:
        notes.append(why)
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
    suite = _shift_suite(args, b, split, local_out, checksum, now) if args.shifts else None
    recorded = _record(args, record, key, result, suite, b.precision, checksum, now, notes)
    # written after recording: the notes in the file are the notes printed below
    with open(os.path.join(local_out, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    if remote:
        storage.put_folder(local_out, out)
        shutil.rmtree(local_out, ignore_errors=True)

    print(f"{b.model_id} ({b.precision}) on {args.split}{' with TTA' if args.tta else ''} "
          f"({result['images_per_second']} img/s)")
    for line in ev.summary_lines(result, b.classes):
        print(line)
    for note in notes:
        print(f"note: {note}")
    for k in recorded:
        print(f"recorded metrics[{k!r}] in {os.path.join(args.model, bundle_mod.META_FILE)}")
    print(f"wrote {storage.join(out, 'metrics.json')} and {', '.join(p for p in plots.values() if p)}")
    return 0


def _record(args, record: bool, key: str, result: dict, suite, precision: str, checksum: str, now: str,
            notes: list) -> list[str]:
    """Record the result (and the shift suite's) into the bundle; the keys recorded. A result the
    bundle holds from other data is kept, with a note saying so."""
    recorded = []
    if record and suite and record_in_bundle(args.model, *suite):
        recorded.append(suite[0])
    if not record:
        return recorded
    nit = result["not_in_training"]
    done = record_in_bundle(args.model, key, {
        "n": result["n"],
        "accuracy": result["accuracy"],
        "loss": result["loss"],
        "macro_f1": result["macro_f1"],
        "recall": {c: v["recall"] for c, v in result["per_class"].items()},
        "confusion": result["confusion"],
        "not_in_training": {"n": nit["n"], "accuracy": nit["accuracy"]},
        "tta": bool(args.tta),
        "precision": precision,
        "data_checksum": checksum,
        "evaluated_at": now,
    })
    if done:
        recorded.append(key)
    else:
        notes.append(f"not recorded: the bundle's {key} was measured on other data (checksums differ)")
    return recorded
