"""`fer-ray train`: Ray Train (or one process with --workers 0) on the prepared data -> model bundle."""

from __future__ import annotations

import argparse
import json

from ..errors import UsageError

HELP = "train a model on prepared FER data (Ray Train, data-parallel); checkpoints, resume, bundle"


def _json_mapping(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"expected a JSON object, got {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise UsageError(f"expected a JSON object, got {text!r}")
    return value


def _augment(text: str):
    return False if text.strip().lower() in ("none", "off", "false") else _json_mapping(text)


def add_arguments(p) -> None:
    p.add_argument("--data", metavar="DIR", help="prepared data directory or s3:// URI (fer-ray prepare --output)")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML settings; explicit flags override them")
    p.add_argument("--arch", help="architecture name (classic, resnet, fastnet, ...); default classic")
    p.add_argument("--arch-args", type=_json_mapping, metavar="JSON", help='e.g. \'{"widths": [32, 64, 128, 256]}\'')
    p.add_argument("--epochs", type=int, metavar="N", help="default 30")
    p.add_argument("--batch-size", type=int, metavar="B", help="global batch, split across workers; default 128")
    p.add_argument("--lr", type=float, help="peak learning rate; default 0.05 (sgd) / 0.001 (adamw)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), help="sgd = SGD with Nesterov momentum (default)")
    p.add_argument("--weight-decay", type=float, help="default 5e-4 (sgd) / 0.05 (adamw)")
    p.add_argument("--schedule", choices=("cosine", "plateau"), help="cosine with warmup (default) or reduce on plateau")
    p.add_argument("--warmup-epochs", type=float, metavar="E", help="linear warmup for cosine; default 1")
    p.add_argument("--label-smoothing", type=float, metavar="EPS", help="default 0")
    p.add_argument("--balance", choices=("none", "weights", "sampling"), help="class imbalance handling; default none")
    p.add_argument("--soft-labels", action=argparse.BooleanOptionalAction, default=None,
                   help="train on the FER+ vote distributions (needs prepared FER+ votes)")
    p.add_argument("--mixup", type=float, metavar="ALPHA", help="mixup Beta alpha; 0 = off (default)")
    p.add_argument("--cutmix", type=float, metavar="ALPHA", help="CutMix Beta alpha; 0 = off (default)")
    p.add_argument("--teacher", metavar="BUNDLE", help="distil from this bundle (local or s3://); needs --distill")
    p.add_argument("--distill", type=float, metavar="W",
                   help="weight of the teacher's probabilities in the targets, 0..1; 0 = off (default)")
    p.add_argument("--init", metavar="BUNDLE",
                   help="start from this bundle's weights (local or s3://; same arch and arch args): fine-tuning")
    p.add_argument("--augment", type=_augment, metavar="JSON|none",
                   help='augmentation strengths, e.g. \'{"rotate": 15, "erase": 0.5}\'; "none" turns it off')
    p.add_argument("--patience", type=int, metavar="N", help="early stop after N epochs without better val accuracy; 0 = off")
    p.add_argument("--workers", type=int, metavar="N", help="Ray Train workers (default 2); 0 = one process, no Ray")
    p.add_argument("--cpus-per-worker", type=int, metavar="C", help="CPUs (= torch threads) per worker; default: cluster CPUs / workers")
    p.add_argument("--placement-strategy", choices=("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
                   help="how Ray places the workers on nodes; default PACK (STRICT_SPREAD: one per node)")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None, help="one GPU per worker")
    p.add_argument("--storage", metavar="PATH_OR_S3_URI", help="where runs live (default ./runs); s3:// works")
    p.add_argument("--name", metavar="RUN", help="run name; the same name + storage resumes (default ARCH-TIMESTAMP)")
    p.add_argument("--max-failures", type=int, metavar="N", help="worker-group restarts from the last checkpoint; default 1")
    p.add_argument("--checkpoints-to-keep", type=int, metavar="K", help="default 2")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--half-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="store the bundle's weights as fp16 (half the size)")


def run(args) -> int:
    from .. import train

    # None = flag not given (argparse default); only given flags override the config file
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config") and not k.startswith("_")}
    file_values = train.read_config_file(args.config) if args.config else {}
    cfg = train.resolve(file_values, flags)
    train.run(cfg)
    return 0
