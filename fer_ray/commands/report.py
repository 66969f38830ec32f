"""`fer-ray report DEST --out report.html`: a self-contained HTML report on the labeling output."""

from __future__ import annotations

from ..errors import UsageError
from .query import add_filter_arguments, filter_kwargs

HELP = "Write a self-contained HTML report (charts, thumbnails, errors, runs) on the labeling output in DEST."


def add_arguments(p) -> None:
    p.add_argument("dest", metavar="DEST", help="the labeling output: a folder or s3://bucket/prefix")
    p.add_argument("--out", "-o", metavar="FILE", required=True,
                   help="the HTML file to write; the charts are also written beside it as FILE-STEM-*.png")
    p.add_argument("--thumbs", metavar="N", type=int, default=4,
                   help="thumbnails per emotion for each of highest and lowest confidence (default 4; 0: none)")
    p.add_argument("--title", metavar="TEXT", help="the page title (default: 'Labeling report')")
    add_filter_arguments(p)


def run(args) -> int:
    from .. import report

    if args.thumbs < 0:
        raise UsageError("--thumbs must be >= 0")
    if not args.out.lower().endswith((".html", ".htm")):
        raise UsageError(f"--out should name an .html file, got {args.out!r}")
    res = report.build(args.dest, args.out, thumbs=args.thumbs, title=args.title, **filter_kwargs(args))
    s = res["summary"]
    print(f"wrote {res['html']} ({s['rows']:,} rows, {len(s['runs'])} run(s), {s['errors']:,} errors)")
    for p in res["pngs"]:
        print(f"wrote {p}")
    return 0
