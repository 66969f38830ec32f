"""`fer-ray label SOURCE DEST`: label every image under SOURCE into Parquet under DEST.

Every flag comes from the labeling table in config.py (`LabelConfig`): `--batch-size` is the
setting `batch_size`; the job lives in label.py."""

from __future__ import annotations

import argparse

from ..errors import UsageError

HELP = "label images and videos (s3:// prefix, folder or manifest) into Parquet with Ray Data"


def _number(kind):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise UsageError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    return parse


def add_arguments(p) -> None:
    from ..config import LabelConfig, settings

    p.add_argument("source", metavar="SOURCE",
                   help="s3://bucket/prefix, a local folder, or a manifest (.txt: one URI a line; .parquet: a uri column)")
    p.add_argument("dest", metavar="DEST", help="s3://bucket/prefix or local folder for the Parquet output")
    for name, default, kind, help, choices, metavar, flag in settings(LabelConfig):
        if not flag:
            continue
        shown = "" if default in (None, False, True) else f" (default {default})"
        if kind is bool:
            extra = {"action": argparse.BooleanOptionalAction if default is not False else "store_true"}
        else:
            extra = {"type": str if kind is str else _number(kind), "metavar": metavar}
        if choices:
            extra.update(choices=choices, metavar=None)
        p.add_argument("--" + name.replace("_", "-"), default=default, help=help + shown, **extra)


def run(args) -> int:
    from .. import label
    from ..config import LabelConfig, settings

    cfg = LabelConfig(**{name: getattr(args, name) for name, *_, flag in settings(LabelConfig) if flag})
    summary = label.run(args.source, args.dest, cfg)
    print(label.summary_text(summary), flush=True)
    return 0
