"""`fer-ray prepare`: FER-2013 (CSV or image folders) -> validated Parquet splits + prepare.json."""

from __future__ import annotations

import os

from .. import ingest
from ..errors import FerRayError

HELP = "Validate FER-2013 (fer2013.csv[.gz] or train/ test/ image folders) and write Parquet splits."

EPILOG = """\
Bad rows (wrong pixel count, non-numeric or out-of-range pixels, label outside 0..6, unknown split,
undecodable image) are skipped, listed with their row numbers in DIR/prepare.json and counted; they
never abort the run. Image folders: test/ files named PublicTest_* / PrivateTest_* keep that split;
other test/ images become PrivateTest, val/ images PublicTest. --drop-blank and --drop-duplicates
change only the Training split: PublicTest and PrivateTest are always kept whole, so test accuracy
stays comparable with published FER-2013 results (test rows that also occur in Training are
flagged in the in_training column instead)."""


def add_arguments(p) -> None:
    p.epilog = EPILOG
    p.add_argument("--source", required=True, metavar="PATH",
                   help="fer2013.csv (plain, .gz or inside a .tar.gz) or a folder with train/ and test/")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder or s3:// URI")
    p.add_argument("--ferplus", metavar="FER2013NEW.csv",
                   help="FER+ annotator votes, joined by row position (CSV source only)")
    p.add_argument("--drop-duplicates", action="store_true",
                   help="Training only: keep the first of each pixel-identical group, drop groups "
                        "whose labels conflict")
    p.add_argument("--drop-blank", action="store_true",
                   help=f"Training only: drop blank images (max-min pixel value <= {ingest.BLANK_MAX_RANGE})")


    p.add_argument("--png", action="store_true",
                   help="store pixels as lossless PNG (25%% smaller, slower to load): for moving prepared data where size matters")


def run(args) -> int:
    if not os.path.exists(args.source):
        raise FerRayError(f"source not found: {args.source}")
    print(f"reading {args.source} ...", flush=True)
    summary = ingest.prepare(args.source, args.output, ferplus=args.ferplus,
                           drop_duplicates=args.drop_duplicates, drop_blank=args.drop_blank, png=args.png)
    print(ingest.format_summary(summary, args.output))
    return 0
