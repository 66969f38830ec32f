"""`fer-ray train`: Ray Train (or one process with --workers 0) on the prepared data -> model bundle.

Every flag comes from the settings table in config.py: `--batch-size` is the setting `batch_size`."""

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


_PARSE = {int: int, float: float, str: str, dict: _json_mapping, "augment": _augment}


def add_arguments(p) -> None:
    from ..config import settings

    p.add_argument("--config", metavar="FILE.yaml", help="YAML settings; explicit flags override them")
    for name, default, kind, help, choices, metavar, flag in settings():
        if not flag:
            continue
        shown = "" if default in (None, {}, False) or kind == "augment" else f"; default {default}"
        extra = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": _PARSE[kind], "metavar": metavar}
        if choices:
            extra["choices"] = choices
            extra.pop("metavar", None)
        # default None: only flags given on the command line override the config file
        p.add_argument("--" + name.replace("_", "-"), default=None, help=help + shown, **extra)


def run(args) -> int:
    from .. import train

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config") and not k.startswith("_")}
    file_values = train.read_config_file(args.config) if args.config else {}
    cfg = train.resolve(file_values, flags)
    train.run(cfg)
    return 0
