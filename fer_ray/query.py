"""Read what the labeling job wrote: filters, summaries and SQL over the committed runs.

Only committed runs are read: the files listed by the commit markers `DEST/_runs/<run_id>.json`
(`fer_ray.runs.committed_files`). Uncommitted `run_id=` folders and `DEST/_staging/` are never
touched. DEST may be a local folder or an s3:// prefix (same endpoint/credential handling as the
labeling job: `fer_ray.storage`).

Engine: a `pyarrow.dataset` over the committed Parquet files, registered with DuckDB as the
table `labels`. DuckDB pushes its projections (only the columns a query uses are read) and its
simple comparisons on strings/ints into the Arrow scan. DuckDB does not push comparisons on
float columns into Arrow scans, so the structured filters (emotion, confidence range, run,
path glob, errors only) are not left to DuckDB: they become one Arrow expression applied by the
dataset scan itself (`Dataset.filter`), which also skips Parquet row groups by their statistics.
`--run` additionally prunes the file list to that run's files.

    out = query.open_labels("s3://bucket/labels")        # an Output: .dataset, .runs, .files
    df = query.labels(out, emotion="happy", min_confidence=0.9)
    s = query.summary(out)                          # plain dict (JSON-ready)
    df = query.sql(out, "SELECT label, count(*) n FROM labels GROUP BY label")
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Iterable, Iterator

import pyarrow as pa

from . import runs as _runs
from . import storage
from .emotions import EMOTIONS
from .errors import FerRayError, UsageError, one_line
from .schema import LABEL_SCHEMA, NO_FACE, error_reason

#: What `labels()` and the `table` format show unless asked for other columns.
DEFAULT_COLUMNS = ["image_path", "face_index", "label", "confidence", "error", "run_id"]
QUANTILES = (0.1, 0.5, 0.9)
#: The table name that SQL queries read.
TABLE = "labels"
RUNS_TABLE = "runs"
# One row-ordering for listings, so that --limit N shows the same N rows every time.
DEFAULT_ORDER = ["run_id", "image_path", "face_index"]


# ------------------------------------------------------------------------------------ filters


@dataclasses.dataclass(frozen=True)
class Filters:
    """Row filters; every one is applied inside the Arrow dataset scan."""

    emotions: tuple[str, ...] | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    runs: tuple[str, ...] | None = None
    path_glob: str | None = None
    errors_only: bool = False

    @classmethod
    def make(
        cls,
        emotion: str | Iterable[str] | None = None,
        min_confidence: float | None = None,
        max_confidence: float | None = None,
        run: str | Iterable[str] | None = None,
        path_glob: str | None = None,
        errors_only: bool = False,
    ) -> "Filters":
        emotions = _flag_names(emotion, "--emotion", f"choose from {', '.join(EMOTIONS)}")
        if emotions is not None:
            bad = [e for e in emotions if e not in EMOTIONS]
            if bad:
                raise UsageError(f"unknown emotion {bad[0]!r}: choose from {', '.join(EMOTIONS)}")
        for name, v in (("--min-confidence", min_confidence), ("--max-confidence", max_confidence)):
            if v is not None and not (0.0 <= float(v) <= 1.0):
                raise UsageError(f"{name} must be between 0 and 1, got {v}")
        if min_confidence is not None and max_confidence is not None and min_confidence > max_confidence:
            raise UsageError(f"--min-confidence {min_confidence} is above --max-confidence {max_confidence}")
        if errors_only and (emotions or min_confidence is not None or max_confidence is not None):
            raise UsageError("--errors-only cannot be combined with --emotion or a confidence range "
                             "(error rows have no label or confidence)")
        if path_glob is not None:
            glob_to_regex(path_glob)  # a bad pattern is refused here, before any I/O
        return cls(
            emotions=emotions,
            min_confidence=None if min_confidence is None else float(min_confidence),
            max_confidence=None if max_confidence is None else float(max_confidence),
            runs=_flag_names(run, "--run", "give a committed run id or 'latest'"),
            path_glob=path_glob,
            errors_only=bool(errors_only),
        )

    def expression(self):
        """The filters as one pyarrow.compute Expression (None when there is none).

        Run ids are matched here too, although the file list is already pruned to those runs."""
        import pyarrow.compute as pc
        import pyarrow.dataset as pads

        parts = []
        if self.emotions:
            parts.append(pads.field("label").isin(list(self.emotions)))
        if self.min_confidence is not None:
            parts.append(pads.field("confidence") >= pa.scalar(self.min_confidence, pa.float32()))
        if self.max_confidence is not None:
            parts.append(pads.field("confidence") <= pa.scalar(self.max_confidence, pa.float32()))
        if self.runs:
            parts.append(pads.field("run_id").isin(list(self.runs)))
        if self.path_glob:
            parts.append(pc.match_substring_regex(pads.field("image_path"), glob_to_regex(self.path_glob)))
        if self.errors_only:
            parts.append(pads.field("error").is_valid())
        if not parts:
            return None
        expr = parts[0]
        for p in parts[1:]:
            expr = expr & p
        return expr


def _names(value) -> tuple[str, ...] | None:
    """'a,b' / ['a', 'b,c'] / None -> ('a', 'b', 'c') / None."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    out = [p.strip() for item in items for p in str(item).split(",") if p.strip()]
    return tuple(dict.fromkeys(out)) or None


def _flag_names(value, flag: str, hint: str) -> tuple[str, ...] | None:
    """`_names` of a filter flag; UsageError when it, or one of its repeats, names nothing:
    `--emotion ""` must not silently mean no filter at all."""
    if value is not None:
        items = [value] if isinstance(value, str) else list(value)
        if not items or not all(_names(item) for item in items):
            raise UsageError(f"{flag} is empty: {hint}")
    return _names(value)


def glob_to_regex(pattern: str) -> str:
    """Shell-style glob over the whole image_path -> an RE2 regex; UsageError for a pattern
    that is empty, has an unclosed '[' or that RE2 refuses (a reversed range such as [z-a]).

    `*` matches any run of characters (including '/'), `?` one character, `[abc]`/`[!abc]`/`[a-z]`
    a set (`[[]` is a literal '[')."""
    if not pattern:
        raise UsageError("--path-glob is empty")
    out, i = ["^"], 0
    while i < len(pattern):
        c = pattern[i]
        i += 1
        if c == "[":
            part, i = _glob_set(pattern, i)
        else:
            part = {"*": ".*", "?": "."}.get(c) or re.escape(c)
        out.append(part)
    regex = "".join(out) + "$"
    _check_regex(pattern, regex)
    return regex


def _glob_set(pattern: str, i: int) -> tuple[str, int]:
    """The set whose '[' is just before i -> (its regex, the index after its ']')."""
    j = i + (pattern[i:i + 1] in ("!", "^"))
    j += pattern[j:j + 1] == "]"  # a ']' first in a set is one of its characters
    end = pattern.find("]", j)
    if end < 0:  # fnmatch would match the '[' literally: more likely a typo
        raise UsageError(f"bad --path-glob {pattern!r}: a '[' is not closed by ']' (a literal '[' is [[])")
    # a '[' inside a set is literal in a glob, but RE2 reads '[:' as a character class
    body = pattern[i:end].replace("\\", "\\\\").replace("[", "\\[")
    if body[:1] == "!":
        body = "^" + body[1:]
    return f"[{body}]", end + 1


def _check_regex(pattern: str, regex: str) -> None:
    import pyarrow.compute as pc

    try:  # RE2 compiles the pattern only when there is a row to match
        pc.match_substring_regex(pa.array([""]), regex)
    except pa.ArrowInvalid as exc:
        raise UsageError(f"bad --path-glob {pattern!r}: {one_line(exc)}") from None


# ------------------------------------------------------------------------------------ opening


@dataclasses.dataclass
class Output:
    """The committed runs of one DEST, as a pyarrow dataset (`dataset`, already filtered when
    `filters` are set) plus the runs' commit markers (`runs`, oldest first)."""

    dest: str
    runs: list[dict]
    files: list[str]
    dataset: object  # pyarrow.dataset.Dataset
    filters: Filters = dataclasses.field(default_factory=Filters)
    all_runs: list[dict] = dataclasses.field(default_factory=list)

    @property
    def run_ids(self) -> list[str]:
        return [m["run_id"] for m in self.runs]

    def where(self, **filters) -> "Output":
        """The same output with (more) filters: `out.where(emotion="happy")`."""
        return _open(self.dest, Filters.make(**_merge(self.filters, filters)), self.all_runs)

    def connect(self):
        """A new DuckDB connection with `labels` (this dataset) and `runs` (markers) registered.

        `error_reason(error)` is the labeling job's grouping of error texts (fer_ray.schema.error_reason).
        `labels` is a view over the Arrow scan, which DuckDB inlines: projections and filters
        still reach the scan. The scan's own schema starts with `face_index` (4 bytes a row)
        because a query that needs no column (`count(*)`, or one whose columns are all pushed
        filters) makes DuckDB read the scan's first column -- which would otherwise be
        `image_path`, the largest one."""
        con = _duckdb()
        con.register(_SCAN, self.dataset.replace_schema(_SCAN_SCHEMA))  # keeps files and filter
        con.execute(f"CREATE TEMP VIEW {TABLE} AS SELECT {', '.join(quote(n) for n in LABEL_SCHEMA.names)} "
                    f"FROM {_SCAN}")
        con.register(RUNS_TABLE, runs_table(self.runs))
        # the labeling job's own grouping of error texts into reasons (as in the markers' counts)
        con.create_function("error_reason", error_reason, ["VARCHAR"], "VARCHAR", side_effects=False)
        return con

    def _connection(self):
        if getattr(self, "_con", None) is None:
            self._con = self.connect()
        return self._con

    def sql(self, query: str, arrow: bool = False):
        return sql(self, query, arrow=arrow)

    def labels(self, **kwargs):
        return labels(self, **kwargs)

    def summary(self) -> dict:
        return summary(self)


def _merge(f: Filters, new: dict) -> dict:
    base = dict(
        emotion=f.emotions, min_confidence=f.min_confidence, max_confidence=f.max_confidence,
        run=f.runs, path_glob=f.path_glob, errors_only=f.errors_only,
    )
    base.update({k: v for k, v in new.items() if v is not None})
    return base


def open_labels(dest, **filters) -> Output:
    """Open DEST's committed runs. Filters: emotion, min_confidence, max_confidence, run
    (id, list, or "latest"), path_glob, errors_only. Raises FerRayError with one clear line when
    DEST (or its bucket) is missing or holds no committed run."""
    if isinstance(dest, Output):
        return dest.where(**filters) if filters else dest
    return _open(str(dest), Filters.make(**filters), None)


def _open(dest: str, filters: Filters, markers: list[dict] | None) -> Output:
    if markers is None:
        markers = _read_markers(dest)
    selected = markers
    if filters.runs:
        ids = [m["run_id"] for m in markers]
        wanted = [ids[-1] if r == "latest" and r not in ids else r for r in filters.runs]
        missing = [r for r in wanted if r not in ids]
        if missing:
            shown = ", ".join(ids[-5:]) + (f" (and {len(ids) - 5} more)" if len(ids) > 5 else "")
            raise FerRayError(f"no committed run {missing[0]!r} in {dest}; committed runs: {shown}")
        filters = dataclasses.replace(filters, runs=tuple(wanted))
        selected = [m for m in markers if m["run_id"] in wanted]
    files = _runs.committed_files(dest, [m["run_id"] for m in selected]) if filters.runs else \
        _runs.committed_files(dest)
    dataset = _dataset(dest, files)
    expr = filters.expression()
    if expr is not None:
        dataset = dataset.filter(expr)
    return Output(dest=dest, runs=selected, files=files, dataset=dataset, filters=filters, all_runs=markers)


_SCAN = "_fer_ray_labels_scan"
_SCAN_SCHEMA = pa.schema([LABEL_SCHEMA.field("face_index")] +
                         [f for f in LABEL_SCHEMA if f.name != "face_index"])


def _read_markers(dest: str) -> list[dict]:
    """The commit markers, or FerRayError saying in one line why there are none."""
    if not storage.is_s3(dest) and os.path.isfile(storage.filesystem(dest)[1]):
        raise FerRayError(f"{dest} is a file, not a labeling output folder")
    try:
        markers = _runs.committed_runs(dest)
        if not markers:
            _explain_no_runs(dest)
        return markers
    except FerRayError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore's NoCredentialsError, EndpointConnectionError...
        raise FerRayError(f"cannot read {dest}: {one_line(exc)}") from None


def _explain_no_runs(dest: str) -> None:
    """Raise the most specific reason for 'no markers': no bucket, no folder/prefix, or no run.
    Only asked when there is no marker, so a normal query pays nothing for it."""
    fs, root = storage.filesystem(dest)
    if storage.is_s3(dest):
        bucket = root.split("/", 1)[0]
        try:  # one request, and the permission that listing DEST needs anyway
            fs.call_s3("list_objects_v2", Bucket=bucket, MaxKeys=1)
        except FileNotFoundError:
            raise FerRayError(f"no such bucket: s3://{bucket}") from None
        except PermissionError as exc:
            raise FerRayError(f"access denied to s3://{bucket}: {one_line(exc)}") from None
        if "/" in root and not fs.exists(root):
            raise FerRayError(f"no labeling output at {dest}: nothing under that prefix")
    elif not fs.exists(root):
        raise FerRayError(f"no labeling output at {dest}: no such folder")
    raise FerRayError(
        f"no committed labeling runs in {dest} (no {_runs.RUNS_DIR}/<run_id>.json commit "
        f"markers; a run that did not finish leaves only {_runs.STAGING_DIR}/)"
    )


def _dataset(dest: str, files: list[str]):
    import pyarrow.dataset as pads

    afs, _ = storage.arrow_filesystem(dest)
    paths = [storage.arrow_filesystem(f)[1] for f in files]
    try:
        return pads.dataset(paths, schema=LABEL_SCHEMA, format="parquet", filesystem=afs)
    except (OSError, pa.ArrowInvalid) as exc:
        raise FerRayError(f"cannot read the labeling output in {dest}: {one_line(exc)}") from None


def runs_table(markers: list[dict]) -> pa.Table:
    """The commit markers as a table (nested values such as `errors` and `files` as JSON text)."""
    import json

    keys = ["run_id", "started_at", "finished_at", "source", "model_id", "objects", "rows"]
    rest = sorted({k for m in markers for k in m} - set(keys))
    cols: dict[str, list] = {k: [] for k in keys + rest}
    for m in markers:
        for k in cols:
            v = m.get(k)
            if isinstance(v, (dict, list)):
                v = json.dumps(v, sort_keys=True)
            cols[k].append(v)
    arrays = {}
    for k, vals in cols.items():
        try:
            arrays[k] = pa.array(vals)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[k] = pa.array([None if v is None else str(v) for v in vals], pa.string())
    if not markers:
        arrays = {k: pa.array([], pa.string()) for k in cols}
    return pa.table(arrays)


# ------------------------------------------------------------------------------------ DuckDB


def _duckdb():
    import duckdb

    # User SQL (--sql) runs here: it may read the tables fer-ray registers and nothing else.
    # Those are Arrow scans (pyarrow reads the files, S3 included), so DuckDB needs no access of
    # its own; without it INSTALL/LOAD, read_csv/COPY/ATTACH and scans of Python variables fail,
    # and no SET can turn it back on. Extensions that are not built in stay unavailable.
    con = duckdb.connect(config={"enable_external_access": False, "autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False})
    con.execute("SET TimeZone = 'UTC'")
    return con


def execute(out: Output, query: str, params=None) -> pa.RecordBatchReader:
    """Run SQL on `out` and stream the result as Arrow record batches."""
    import duckdb

    con = out._connection()
    try:
        rel = con.sql(query, params=params)
        if rel is None:  # a statement with no result (SET, CREATE ...)
            return pa.RecordBatchReader.from_batches(pa.schema([]), [])
        return rel.to_arrow_reader(65536)
    except duckdb.Error as exc:
        raise sql_error(exc) from None
    except OSError as exc:
        raise FerRayError(f"cannot read {out.dest}: {one_line(exc)}") from None


def sql_error(exc) -> FerRayError:
    """A DuckDB error as one line; a refused INSTALL, LOAD or file access says why."""
    import duckdb

    text = f"SQL error: {one_line(exc)}"
    if isinstance(exc, duckdb.PermissionException):
        text += " (SQL here reads only the tables labels and runs: no files, no extensions)"
    return FerRayError(text)


def read_all(reader: pa.RecordBatchReader, limit: int | None = None) -> pa.Table:
    import duckdb

    try:
        batches = list(take(reader, limit))
    except duckdb.Error as exc:
        raise sql_error(exc) from None
    except OSError as exc:
        raise FerRayError(f"cannot read the labeling output: {one_line(exc)}") from None
    return pa.Table.from_batches(batches, schema=reader.schema)


def take(reader: pa.RecordBatchReader, limit: int | None) -> Iterator[pa.RecordBatch]:
    """At most `limit` rows (all when None) from a batch stream, reading no further than needed."""
    left = limit
    for batch in reader:
        if left is not None:
            if left <= 0:
                break
            if batch.num_rows > left:
                batch = batch.slice(0, left)
            left -= batch.num_rows
        yield batch


def _frame(table: pa.Table, arrow: bool):
    return table if arrow else table.to_pandas()


# ------------------------------------------------------------------------------------ listing


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def columns_of(columns) -> list[str]:
    """None -> DEFAULT_COLUMNS; 'all' -> every schema column; 'a,b' or list -> validated list."""
    if columns is None:
        return list(DEFAULT_COLUMNS)
    names = list(_names(columns) or ())
    if names == ["all"]:
        return list(LABEL_SCHEMA.names)
    bad = [c for c in names if c not in LABEL_SCHEMA.names]
    if bad:
        raise UsageError(f"unknown column {bad[0]!r}: choose from {', '.join(LABEL_SCHEMA.names)} or 'all'")
    return names


def parse_sort(sort: str) -> tuple[str, bool]:
    """'confidence' / '-confidence' / 'confidence:desc' -> (column, descending)."""
    text = sort.strip()
    desc = text.startswith("-")
    text = text.lstrip("-+")
    if ":" in text:
        text, _, direction = text.partition(":")
        if direction.lower() not in ("asc", "desc"):
            raise UsageError(f"bad sort direction {direction!r}: use COL, COL:desc or -COL")
        desc = direction.lower() == "desc"
    if text not in LABEL_SCHEMA.names:
        raise UsageError(f"unknown sort column {text!r}: choose from {', '.join(LABEL_SCHEMA.names)}")
    return text, desc


def listing_sql(columns: list[str], sort: str | None = None, limit: int | None = None) -> str:
    order, col = [], None
    if sort:
        col, desc = parse_sort(sort)
        order.append(f"{quote(col)} {'DESC' if desc else 'ASC'} NULLS LAST")
    order += [quote(c) for c in DEFAULT_ORDER if c != col]
    q = f"SELECT {', '.join(quote(c) for c in columns)} FROM {TABLE} ORDER BY {', '.join(order)}"
    if limit is not None:
        q += f" LIMIT {int(limit)}"
    return q


def labels(dest, columns=None, sort: str | None = None, limit: int | None = None, arrow: bool = False,
           **filters):
    """The label rows that match the filters, as a pandas DataFrame (or an Arrow table).

    columns: None (DEFAULT_COLUMNS), 'all', or a list; sort: a column, '-column' for descending;
    filters: emotion, min_confidence, max_confidence, run, path_glob, errors_only."""
    out = open_labels(dest, **filters)
    q = listing_sql(columns_of(columns), sort, limit)
    return _frame(read_all(execute(out, q)), arrow)


def timeline_sql(window: float) -> str:
    """Per video and window of `window` seconds: sampled frames, frames with a labeled face,
    labeled faces, the most frequent emotion (ties go to the first in EMOTIONS order) and each
    emotion's share of the faces (null where there are none)."""
    w = float(window)
    if not (math.isfinite(w) and w > 0):
        raise UsageError(f"--timeline must be a finite number of seconds > 0, got {window}")
    counts = ", ".join(f"count_if(label = '{e}') AS n_{e}" for e in EMOTIONS)
    most = f"greatest({', '.join(f'n_{e}' for e in EMOTIONS)})"
    top = " ".join(f"WHEN n_{e} = {most} THEN '{e}'" for e in EMOTIONS)
    shares = ", ".join(f"round(n_{e} / nullif(faces, 0), 4) AS {quote(e)}" for e in EMOTIONS)
    return f"""
        WITH w AS (
            SELECT image_path AS video, floor(timestamp_s / {w}) * {w} AS window_start_s,
                   count(DISTINCT frame_index) AS frames,
                   count(DISTINCT frame_index) FILTER (WHERE label IS NOT NULL) AS frames_with_faces,
                   count(label) AS faces, {counts}
            FROM {TABLE} WHERE frame_index IS NOT NULL AND error IS NULL
            GROUP BY ALL)
        SELECT video, window_start_s, window_start_s + {w} AS window_end_s, frames, frames_with_faces, faces,
               CASE WHEN faces = 0 THEN NULL {top} END AS top_emotion, {shares}
        FROM w ORDER BY video, window_start_s"""


def timeline(dest, window: float = 10.0, arrow: bool = False, **filters):
    """Per video and time window: frames, faces and emotion shares (see timeline_sql). Videos
    labeled in several runs mix their rows: filter with run=... to pick one."""
    out = open_labels(dest, **filters)
    return _frame(read_all(execute(out, timeline_sql(window))), arrow)


def sql(dest, query: str, arrow: bool = False, **filters):
    """Run `query` (DuckDB SQL) against the table `labels` (the committed rows, after any
    filters) and `runs` (the commit markers). Returns a DataFrame (or an Arrow table)."""
    if not query or not query.strip():
        raise UsageError("empty SQL query")
    out = open_labels(dest, **filters)
    return _frame(read_all(execute(out, query)), arrow)


# ------------------------------------------------------------------------------------ summary


def _q(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 6)


def summary(dest, examples: int = 3, **filters) -> dict:
    """Counts over the committed rows (after any filters), as plain JSON-ready data:

    rows, images (distinct image_path), labeled (rows with a label), no_face (photos in which no
    face was found: one row each, without a label; sampled video frames without one are not
    counted), errors, error_share,
    confidence {p10, p50, p90}, emotions [{emotion, count, share, p10, p50, p90}],
    errors_by_reason [{reason, count, examples}], runs [per run: the marker's metadata and the
    same counts, plus `emotions` {emotion: count}]. `pandas.DataFrame(s["emotions"])` etc. give
    tables. Three scans of the dataset, each reading only the columns it needs."""
    out = open_labels(dest, **filters)
    qs = list(QUANTILES)

    # 1. rows / images / errors, per run and overall
    t = read_all(execute(out, f"""
        SELECT run_id, GROUPING(run_id) AS g, count(*) AS rows, count(DISTINCT image_path) AS images,
               count(error) AS errors,
               count(*) FILTER (WHERE face_source = '{NO_FACE}' AND frame_index IS NULL) AS no_face
        FROM {TABLE} GROUP BY GROUPING SETS ((run_id), ())""")).to_pylist()
    totals = next((r for r in t if r["g"]), {"rows": 0, "images": 0, "errors": 0, "no_face": 0})
    per_run = {r["run_id"]: r for r in t if not r["g"]}

    # 2. emotions: count and confidence quantiles, per run and overall
    t = read_all(execute(out, f"""
        SELECT run_id, label, GROUPING(run_id) AS g_run, GROUPING(label) AS g_label, count(*) AS n,
               quantile_cont(confidence, {qs}) AS q
        FROM {TABLE} WHERE error IS NULL AND label IS NOT NULL
        GROUP BY GROUPING SETS ((run_id, label), (label), (run_id), ())""")).to_pylist()

    # 3. errors by reason with a few example paths, per run and overall
    t3 = read_all(execute(out, f"""
        SELECT run_id, error_reason(error) AS reason, GROUPING(run_id) AS g, count(*) AS n,
               list(DISTINCT image_path ORDER BY image_path)[1:{int(examples)}] AS examples
        FROM {TABLE} WHERE error IS NOT NULL
        GROUP BY GROUPING SETS ((run_id, reason), (reason))
        ORDER BY n DESC, reason""")).to_pylist()

    def emotion_rows(rows: list[dict]) -> tuple[list[dict], int]:
        by = {r["label"]: r for r in rows}
        total = sum(r["n"] for r in rows)
        names = list(EMOTIONS) + sorted(k for k in by if k not in EMOTIONS)
        res = []
        for e in names:
            r = by.get(e)
            n = r["n"] if r else 0
            q = (r or {}).get("q") or [None] * len(qs)
            res.append({"emotion": e, "count": n, "share": round(n / total, 6) if total else 0.0,
                        **{f"p{round(p * 100)}": _q(v) for p, v in zip(qs, q)}})
        return res, total

    overall_q = next((r["q"] for r in t if r["g_run"] and r["g_label"]), None) or [None] * len(qs)
    emotions, labeled = emotion_rows([r for r in t if r["g_run"] and not r["g_label"]])

    def quant(q) -> dict:
        return {f"p{round(p * 100)}": _q(v) for p, v in zip(qs, q or [None] * len(qs))}

    runs_out = []
    for m in out.runs:
        rid = m["run_id"]
        base = per_run.get(rid, {"rows": 0, "images": 0, "errors": 0, "no_face": 0})
        rows = [r for r in t if not r["g_run"] and not r["g_label"] and r["run_id"] == rid]
        run_q = next((r["q"] for r in t if not r["g_run"] and r["g_label"] and r["run_id"] == rid), None)
        emo, run_labeled = emotion_rows(rows)
        runs_out.append({
            "run_id": rid,
            "model_id": m.get("model_id"),
            "source": m.get("source"),
            "started_at": m.get("started_at"),
            "finished_at": m.get("finished_at"),
            "objects": m.get("objects"),
            "rows": base["rows"],
            "images": base["images"],
            "labeled": run_labeled,
            "no_face": base["no_face"],
            "errors": base["errors"],
            "errors_by_reason": {r["reason"]: r["n"] for r in t3 if not r["g"] and r["run_id"] == rid},
            "confidence": quant(run_q),
            "emotions": {e["emotion"]: e["count"] for e in emo},
        })

    rows_total = totals["rows"]
    return {
        "dest": out.dest,
        "filters": {k: v for k, v in dataclasses.asdict(out.filters).items() if v not in (None, False)},
        "rows": rows_total,
        "images": totals["images"],
        "labeled": labeled,
        "no_face": totals["no_face"],
        "errors": totals["errors"],
        "error_share": round(totals["errors"] / rows_total, 6) if rows_total else 0.0,
        "confidence": quant(overall_q),
        "emotions": emotions,
        "errors_by_reason": [
            {"reason": r["reason"], "count": r["n"], "examples": list(r["examples"] or [])} for r in t3 if r["g"]
        ],
        "runs": runs_out,
    }


def format_summary(s: dict) -> str:
    """The summary as text for a terminal."""
    lines = [f"labeling output: {s['dest']}"]
    if s["filters"]:
        lines.append("filters: " + ", ".join(f"{k}={fmt_filter(v)}" for k, v in s["filters"].items()))
    n_runs = len(s["runs"])
    lines.append(
        f"runs: {n_runs}   rows: {s['rows']:,}   images: {s['images']:,}   labeled: {s['labeled']:,}   "
        f"no face found: {s['no_face']:,}   errors: {s['errors']:,} ({s['error_share']:.1%})"
    )
    c = s["confidence"]
    if c["p50"] is not None:
        lines.append(f"confidence: p10 {c['p10']:.3f}   p50 {c['p50']:.3f}   p90 {c['p90']:.3f}")
    lines.append("")
    header = f"{'emotion':<10} {'count':>10} {'share':>7} {'p10':>6} {'p50':>6} {'p90':>6}"
    lines.append(header)
    lines.append("-" * len(header))
    for e in s["emotions"]:
        qs = "".join(f" {'-' if e[k] is None else format(e[k], '.3f'):>6}" for k in ("p10", "p50", "p90"))
        lines.append(f"{e['emotion']:<10} {e['count']:>10,} {e['share']:>7.1%}{qs}")
    if s["errors_by_reason"]:
        lines.append("")
        w = max(12, *(len(r["reason"]) for r in s["errors_by_reason"]))
        lines.append(f"{'error reason':<{w}} {'count':>10}  example")
        for r in s["errors_by_reason"]:
            ex = r["examples"][0] if r["examples"] else ""
            lines.append(f"{r['reason']:<{w}} {r['count']:>10,}  {ex}")
    if n_runs > 1:
        lines.append("")
        lines.append("per run:")
        emos = [e["emotion"] for e in s["emotions"]]
        head = f"{'run_id':<26} {'finished (UTC)':<20} {'rows':>9} {'images':>9} {'errors':>7} " + " ".join(
            f"{e[:8]:>8}" for e in emos)
        lines.append(head)
        for r in s["runs"]:
            lines.append(
                f"{r['run_id']:<26} {when(r['finished_at']):<20} {r['rows']:>9,} {r['images']:>9,} "
                f"{r['errors']:>7,} " + " ".join(f"{r['emotions'].get(e, 0):>8,}" for e in emos)
            )
        models = {r["model_id"] for r in s["runs"]}
        if len(models) > 1:
            lines.append("models: " + ", ".join(f"{r['run_id']}={r['model_id']}" for r in s["runs"]))
    elif n_runs == 1:
        r = s["runs"][0]
        lines.append("")
        lines.append(f"run {r['run_id']}: model {r['model_id']}, source {r['source']}, "
                     f"finished {when(r['finished_at'])} UTC")
    return "\n".join(lines)


def when(ts) -> str:
    """ISO time -> 'YYYY-MM-DD HH:MM:SS' in UTC (as written by the job) for narrow columns."""
    if not ts:
        return ""
    try:
        import datetime as dt

        t = dt.datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
        if t.tzinfo is not None:
            t = t.astimezone(dt.timezone.utc)
        return t.strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(ts)[:19]


def fmt_filter(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
