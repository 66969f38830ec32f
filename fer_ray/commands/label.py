"""`fer-ray label SOURCE DEST`: label every image under SOURCE into Parquet under DEST."""

from __future__ import annotations

from ..errors import UsageError

HELP = "label images (s3:// prefix, folder or manifest) into Parquet with Ray Data"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise UsageError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(p) -> None:
    p.add_argument("source", metavar="SOURCE",
                   help="s3://bucket/prefix, a local folder, or a manifest (.txt: one URI a line; .parquet: a uri column)")
    p.add_argument("dest", metavar="DEST", help="s3://bucket/prefix or local folder for the Parquet output")
    p.add_argument("--model", metavar="BUNDLE", help="model bundle (folder or s3:// URI); default: the shipped one")
    p.add_argument("--faces", choices=("crop", "detect"), default="crop",
                   help="crop: each image is one face (default); detect: find faces, one row per face")
    p.add_argument("--incremental", action="store_true",
                   help="label only objects (key + ETag/size) not in a committed run under DEST")
    p.add_argument("--batch-size", type=_positive, default=256, metavar="N", help="images per batch (default 256)")
    p.add_argument("--workers", type=_positive, default=None, metavar="N",
                   help="labeling actors (default: one per CPU, or one per GPU with --gpu)")
    p.add_argument("--gpu", action="store_true", help="run the model on GPUs (one actor per GPU)")
    p.add_argument("--precision", choices=("auto", "fp32", "int8"), default="auto",
                   help="auto (default): int8 on CPU when the model is calibrated for it, else fp32")
    p.add_argument("--run-id", default=None, metavar="ID", help="name the run (default: UTC time + random suffix)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from .. import label, runs

    if args.run_id is not None:
        try:
            runs.check_run_id(args.run_id)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    summary = label.run(args.source, args.dest, model=args.model, faces=args.faces, incremental=args.incremental,
                        batch_size=args.batch_size, workers=args.workers, gpu=args.gpu, run_id=args.run_id,
                        progress=not args.no_progress, precision=args.precision)
    print(label.summary_text(summary), flush=True)
    return 0
