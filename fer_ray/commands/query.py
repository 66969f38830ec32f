"""`fer-ray query DEST ...`: list, filter, summarise or SQL-query the labeling job's output."""

from __future__ import annotations

import json
import os
import sys

from .. import query as Q
from ..errors import FerRayError, UsageError, one_line

HELP = "Query the labeling output in DEST: filters, --summary, or --sql over the table `labels`."

FORMATS = ("table", "csv", "json", "parquet")
TABLE_DEFAULT_LIMIT = 50
_SUFFIX_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json", ".parquet": "parquet",
                   ".pq": "parquet", ".txt": "table"}


def add_arguments(p) -> None:
    p.add_argument("dest", metavar="DEST", help="the labeling output: a folder or s3://bucket/prefix")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--sql", metavar="QUERY",
                      help="DuckDB SQL over the table `labels` (one row per face; filters below apply "
                           "first) and `runs` (the commit markers)")
    what.add_argument("--summary", action="store_true",
                      help="rows, images, errors by reason, count/share and confidence quantiles per "
                           "emotion, per run when there are several")
    what.add_argument("--timeline", metavar="S", type=float,
                      help="videos: per video and window of S seconds, the frames, faces, most frequent "
                           "emotion and each emotion's share")
    add_filter_arguments(p)
    o = p.add_argument_group("output")
    o.add_argument("--columns", metavar="COLS",
                   help="comma-separated columns to list, or 'all' (default: all for csv/json/parquet, "
                        f"{','.join(Q.DEFAULT_COLUMNS)} for table)")
    o.add_argument("--sort", metavar="COL", help="sort the listing by COL; COL:desc (or --sort=-COL) for descending")
    o.add_argument("--limit", metavar="N", type=int,
                   help=f"at most N rows (default {TABLE_DEFAULT_LIMIT} for table, all otherwise; 0 = all)")
    o.add_argument("--format", choices=FORMATS,
                   help="table (default; or from the --output suffix), csv, json (JSON Lines; one JSON object with "
                        "--summary) or parquet (needs --output)")
    o.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of standard output")


def add_filter_arguments(p) -> None:
    f = p.add_argument_group("filters (applied inside the dataset scan)")
    f.add_argument("--emotion", metavar="E", action="append",
                   help="only rows labeled E (repeat or comma-separate for several)")
    f.add_argument("--min-confidence", metavar="C", type=float, help="only rows with confidence >= C")
    f.add_argument("--max-confidence", metavar="C", type=float, help="only rows with confidence <= C")
    f.add_argument("--run", metavar="RUN_ID", action="append",
                   help="only this committed run ('latest' for the newest; repeat for several)")
    f.add_argument("--path-glob", metavar="G",
                   help="only images whose path matches G ('*' also crosses '/'), e.g. 's3://b/2024/*.jpg'")
    f.add_argument("--errors-only", action="store_true", help="only rows whose image could not be labeled")


def filter_kwargs(args) -> dict:
    """The filter flags as keyword arguments of fer_ray.query functions (validated)."""
    kw = dict(
        emotion=args.emotion, min_confidence=args.min_confidence, max_confidence=args.max_confidence,
        run=args.run, path_glob=args.path_glob, errors_only=args.errors_only,
    )
    Q.Filters.make(**kw)  # argument errors before any I/O
    return kw


def run(args) -> int:
    fmt = args.format or _SUFFIX_FORMATS.get(os.path.splitext(args.output or "")[1].lower(), "table")
    if args.limit is not None and args.limit < 0:
        raise UsageError("--limit must be >= 0")
    if fmt == "parquet" and not args.output:
        raise UsageError("--format parquet needs --output FILE")
    filters = filter_kwargs(args)
    if args.summary:
        if fmt not in ("table", "json"):
            raise UsageError("--summary prints a table or --format json")
        if args.columns or args.sort:
            raise UsageError("--columns/--sort do not apply to --summary")
        s = Q.summary(args.dest, **filters)
        text = Q.format_summary(s) if fmt == "table" else json.dumps(s, indent=2)
        _write_text(text + "\n", args.output)
        return 0

    limit = args.limit if args.limit is not None else (TABLE_DEFAULT_LIMIT if fmt == "table" else 0)
    limit = limit or None
    query = _query(args, fmt, limit)  # before Q.open: a bad argument is refused before DEST is read
    out = Q.open_labels(args.dest, **filters)

    import pyarrow as pa

    reader = Q.execute(out, query)
    try:
        _emit(reader, fmt, limit, args.output, explicit_limit=args.limit is not None)
    except BrokenPipeError:  # `fer-ray query ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except FerRayError:
        raise
    except Exception as exc:  # noqa: BLE001 - DuckDB/Arrow errors while streaming -> one line
        import duckdb

        if isinstance(exc, duckdb.Error):
            raise Q.sql_error(exc) from None
        if isinstance(exc, OSError):
            raise FerRayError(f"cannot read/write: {one_line(exc)}") from None
        if isinstance(exc, pa.ArrowException):  # e.g. a list column in CSV
            raise FerRayError(f"cannot write this result as {fmt}: {one_line(exc)}") from None
        raise
    return 0


def _query(args, fmt: str, limit: int | None) -> str:
    """The SQL that --timeline, --sql or the listing flags ask for (checking those flags)."""
    if args.timeline is not None:
        if args.columns or args.sort:
            raise UsageError("--columns/--sort do not apply to --timeline")
        return Q.timeline_sql(args.timeline)
    if args.sql is not None:
        if args.columns or args.sort:
            raise UsageError("--columns/--sort do not apply to --sql (write them in the query)")
        if not args.sql.strip():
            raise UsageError("--sql is empty")
        return args.sql
    columns = Q.columns_of(args.columns if args.columns or fmt == "table" else "all")
    # LIMIT in the SQL lets DuckDB keep a top-N instead of sorting every row; the table
    # format asks for one more row to tell whether there are more
    return Q.listing_sql(columns, args.sort, None if limit is None else limit + (fmt == "table"))


def _write_text(text: str, output: str | None) -> None:
    if output:
        try:
            with open(output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise FerRayError(f"cannot write {output}: {one_line(exc)}") from None
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def _emit(reader, fmt: str, limit: int | None, output: str | None, explicit_limit: bool) -> None:
    import pyarrow as pa

    if fmt == "table":
        # one row more than shown tells whether there is more
        table = pa.Table.from_batches(list(Q.take(reader, None if limit is None else limit + 1)),
                                      schema=reader.schema)
        more = limit is not None and table.num_rows > limit
        if more:
            table = table.slice(0, limit)
        text = render_table(table)
        if more:
            text += (f"\n(first {limit} rows shown: --limit N for more, --limit 0 for all, "
                     "or --format csv/json/parquet)" if not explicit_limit else f"\n(first {limit} rows)")
        _write_text(text + "\n", output)
        return

    batches = Q.take(reader, limit)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetWriter(output, reader.schema) as w:
            for b in batches:
                w.write_batch(b)
        return

    try:
        sink = open(output, "wb") if output else sys.stdout.buffer
    except OSError as exc:
        raise FerRayError(f"cannot write {output}: {one_line(exc)}") from None
    try:
        if fmt == "csv":
            import pyarrow.csv as pacsv

            with pacsv.CSVWriter(sink, reader.schema) as w:
                for b in batches:
                    w.write_batch(b)
        elif fmt == "json":
            for b in batches:
                sink.write(json_lines(b).encode("utf-8"))
        sink.flush()
    finally:
        if output:
            sink.close()


def _jsonable(batch):
    """Arrow columns that pandas' JSON writer would mangle -> columns it writes faithfully:
    float32 -> the float64 of its shortest text (0.15276133, not 0.15276132524013519), timestamps
    -> ISO 8601 text, decimals (DuckDB's sums) -> float64."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = []
    for field, col in zip(batch.schema, batch.columns):
        t = field.type
        if pa.types.is_float32(t) or pa.types.is_float16(t):
            col = pc.cast(pc.cast(col, pa.string()), pa.float64())
        elif pa.types.is_timestamp(t):
            utc = t.tz in ("UTC", "Etc/UTC", "+00:00", "Z")
            fmt = "%Y-%m-%dT%H:%M:%S" + ("Z" if utc else "%z" if t.tz else "")
            col = pc.strftime(col, format=fmt)
        elif pa.types.is_decimal(t):
            col = pc.cast(col, pa.float64())
        elif pa.types.is_date(t) or pa.types.is_time(t):
            col = pc.cast(col, pa.string())
        cols.append(col)
    return pa.Table.from_arrays(cols, names=batch.schema.names)


def json_lines(batch) -> str:
    """One JSON object per row, keys in column order, nulls as null, '/' unescaped."""
    import pandas as pd

    if batch.num_rows == 0:
        return ""
    text = _jsonable(batch).to_pandas(types_mapper=pd.ArrowDtype).to_json(
        orient="records", lines=True, force_ascii=False, double_precision=15)
    # pandas escapes '/' as '\/'; a JSON string never holds a bare '\' before '/' otherwise
    # (a real backslash is written '\\'), so this only undoes that escape.
    text = text.replace("\\/", "/")
    return text if text.endswith("\n") else text + "\n"


def render_table(table) -> str:
    """An Arrow table as aligned text for a terminal (floats to 4 places, empty for null)."""
    import pandas as pd

    if table.num_rows == 0:
        return "(no rows)" if not table.num_columns else "(no rows)  columns: " + ", ".join(table.column_names)
    df = table.to_pandas()
    with pd.option_context("display.max_colwidth", 80, "display.width", 250):
        return df.to_string(
            index=False, na_rep="",
            float_format=lambda v: f"{v:.4f}",
        )
