"""`fer-ray label SOURCE DEST`: label every image under SOURCE into Parquet under DEST."""

from __future__ import annotations

import argparse

from ..errors import UsageError

HELP = "label images and videos (s3:// prefix, folder or manifest) into Parquet with Ray Data"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise UsageError(f"expected a positive integer, got {text!r}")
    return value


def _fps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--video-fps: expected a number of frames per second, got {text!r}") from None
    if not 0 < value <= 240:
        raise UsageError(f"--video-fps must be in (0, 240], got {text}")
    return value


def add_arguments(p) -> None:
    p.add_argument("source", metavar="SOURCE",
                   help="s3://bucket/prefix, a local folder, or a manifest (.txt: one URI a line; .parquet: a uri column)")
    p.add_argument("dest", metavar="DEST", help="s3://bucket/prefix or local folder for the Parquet output")
    p.add_argument("--model", metavar="BUNDLE", help="fast, accurate (the shipped models), a bundle folder or s3:// URI; default: fast on CPU, accurate with --gpu")
    p.add_argument("--faces", choices=("auto", "crop", "detect"), default="auto",
                   help="auto (default): crops framed like FER-2013 go in as they are, other images are searched "
                        "for faces, each re-framed (none found: the whole image); crop: each image is one face; "
                        "detect: only detected faces, one row each")
    p.add_argument("--video-fps", type=_fps, default=2.0, metavar="F",
                   help="videos (.mp4 .avi .mov .mkv .webm): frames sampled per second, each a row per face "
                        "with frame_index and timestamp_s (default 2)")
    p.add_argument("--incremental", action="store_true",
                   help="label only objects (key + ETag/size) not in a committed run under DEST")
    p.add_argument("--batch-size", type=_positive, default=None, metavar="N",
                   help="objects per batch, one labeling call in a worker (default: about 2.5 s of work, "
                        "4096 face crops or 1024 photos)")
    p.add_argument("--workers", type=_positive, default=None, metavar="N",
                   help="labeling actors (default: one per CPU, or one per GPU with --gpu)")
    p.add_argument("--gpu", action="store_true", help="run the model on GPUs (one actor per GPU)")
    p.add_argument("--ray", action=argparse.BooleanOptionalAction, default=None,
                   help="label with a Ray actor pool (--ray) or in this process with the same code (--no-ray); "
                        "default: Ray for large runs, --workers, --gpu or a cluster (RAY_ADDRESS), "
                        "this process for runs small enough that starting Ray would cost more than it saves")
    p.add_argument("--lease-seconds", type=float, default=300.0, metavar="S",
                   help="one run at a time per DEST: a run holds DEST/_lease.json, renewed while it runs; "
                        "a crashed run's lease blocks others for at most S seconds (default 300)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: mean over 10 views of each face (about 10x the model's work)")
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
    if args.lease_seconds <= 0:
        raise UsageError(f"--lease-seconds must be > 0, got {args.lease_seconds}")
    summary = label.run(args.source, args.dest, model=args.model, faces=args.faces, incremental=args.incremental,
                        batch_size=args.batch_size, workers=args.workers, gpu=args.gpu, run_id=args.run_id,
                        progress=not args.no_progress, precision=args.precision, tta=args.tta,
                        lease_seconds=args.lease_seconds, ray=args.ray, video_fps=args.video_fps)
    print(label.summary_text(summary), flush=True)
    return 0
