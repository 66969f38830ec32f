"""`fer-ray ensemble --output DIR MEMBER...`: several model bundles as one (mean of probabilities)."""

from __future__ import annotations

import os

from .. import bundle as bundle_mod
from .. import storage
from ..errors import UsageError

HELP = "combine model bundles into one ensemble bundle (mean of the members' probabilities)"


def add_arguments(p) -> None:
    p.add_argument("members", nargs="+", metavar="MEMBER", help="local bundle directories or shipped names (2 or more)")
    p.add_argument("--output", required=True, metavar="DIR", help="local directory for the ensemble bundle (new)")


def run(args) -> int:
    if storage.is_s3(args.output) or any(storage.is_s3(m) for m in args.members):
        raise UsageError("ensemble works on local bundles: copy them from S3 first")
    if os.path.exists(os.path.join(args.output, bundle_mod.META_FILE)):
        raise UsageError(f"--output {args.output} already holds a bundle: pick a new directory")
    meta = bundle_mod.save_ensemble(args.output, args.members)
    check = bundle_mod.load(args.output)
    print(f"{meta['model_id']}: {len(meta['members'])} members "
          f"({', '.join(m['model_id'] for m in meta['member_info'])}) -> {args.output} ({check.precision} loads)")
    return 0
