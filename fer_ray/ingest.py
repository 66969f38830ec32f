"""Ingest: read FER-2013 in either published form, validate it, measure its defects, and write
the prepared splits (data.py).

- the canonical CSV (`emotion,pixels,Usage`; plain, .gz, or a .tar/.tar.gz holding it), or
- the image-folder layout `train/<emotion>/*.png|jpg`, `test/<emotion>/...` (and optionally
  `val/`). In test/ (and val/), a `PublicTest_`/`PrivateTest_` file-name prefix decides the split;
  unprefixed test/ images become PrivateTest (the held-out split one reports on), unprefixed val/
  images PublicTest (the model-selection split). train/ is always Training.
Every row is validated; bad rows are listed, never fatal. Defects of FER-2013 itself are measured:
blank (near-constant) images, exact duplicates (groups, conflicting labels) and leakage of test
rows into Training. `drop_blank` / `drop_duplicates` remove defective rows from Training only:
the test splits stay intact so that test accuracy stays comparable with the literature.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import re
import tarfile
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from . import storage
from .data import NUM_PIXELS, SOURCES_FILE, SPLITS, SUMMARY_FILE, checksum, remove, write_bytes, write_split, write_summary
from .emotions import EMOTIONS, NUM_CLASSES
from .errors import FerRayError, UsageError
from .preprocess import INPUT_SIZE

# A "blank" image: max - min over its pixels at most this (all-black rows have 0; the one uniform
# grey row of FER-2013, 2171, has 3; the least-contrasted real face has about 50).
BLANK_MAX_RANGE = 8
# md5 of the uncompressed canonical fer2013.csv (the file torchvision's FER2013 also verifies).
CANONICAL_CSV_MD5 = "f8428a1edbd21e88f42c73edd2a14f95"

# --------------------------------------------------------------------------------------------
# Reading the raw data: the FER-2013 CSV or folder (`fer-ray prepare --source`)


@dataclass
class Raw:
    """The raw data as read: its valid rows, and what was wrong with the others."""

    kind: str  # "csv" | "folder"
    path: str
    sha256: str
    total_rows: int  # data rows seen, valid or not (source_row runs over 0..total_rows-1)
    pixels: np.ndarray  # uint8 (N,48,48), valid rows only
    labels: np.ndarray  # int64 (N,)
    splits: np.ndarray  # int8 (N,) index into SPLITS
    source_rows: np.ndarray  # int64 (N,)
    bad_rows: list = field(default_factory=list)  # [{"row", "line"|"file", "reason"}]
    info: dict = field(default_factory=dict)  # kind-specific facts for the summary
    files: list | None = None  # the folder layout: relative path per source_row


_SPLIT_NAMES = {s.lower(): i for i, s in enumerate(SPLITS)}
_LABEL_RE = re.compile(rb"^\s*[0-9]+\s*$")


def _open_csv_stream(path: str):
    """A binary stream of the CSV's bytes: plain, gzip, or the one *.csv inside a tar(.gz)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if tarfile.is_tarfile(path):
        tar = tarfile.open(path, "r:*")
        members = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".csv")]
        if not members:
            raise FerRayError(f"no .csv file inside the archive {path}")
        preferred = [m for m in members if os.path.basename(m.name).lower() == "fer2013.csv"]
        return tar.extractfile((preferred or members)[0])
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _iter_lines(stream, chunk_size: int = 1 << 24):
    """(physical line number, bytes line) for every line, without the line end."""
    lineno = 0
    rest = b""
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            break
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            lineno += 1
            yield lineno, line[:-1] if line.endswith(b"\r") else line
    if rest:
        lineno += 1
        yield lineno, rest[:-1] if rest.endswith(b"\r") else rest


class _Hashing:
    """Wraps a binary stream and md5s what is read through it (the uncompressed content)."""

    def __init__(self, stream):
        self.stream = stream
        self.md5 = hashlib.md5()

    def read(self, n=-1):
        data = self.stream.read(n)
        self.md5.update(data)
        return data


def _pixel_problem(text: bytes) -> str:
    """Why a pixels field that np.fromstring refused is bad (called for bad rows only)."""
    tokens = text.split()
    for i, tok in enumerate(tokens):
        try:
            int(tok)
        except ValueError:
            shown = tok[:20].decode("utf-8", "replace")
            return f"non-numeric pixel value {shown!r} at position {i}"
    return "unparseable pixels field"


def read_csv(path: str) -> Raw:
    """The canonical fer2013.csv (columns emotion, pixels, Usage in any order; header names are
    matched case-insensitively, surrounding spaces ignored, as in Kaggle's icml_face_data.csv)."""
    sha = storage.sha256_file(path)
    stream = _Hashing(_open_csv_stream(path))
    lines = _iter_lines(stream)
    header = None
    for lineno, line in lines:
        if line.strip():
            header = [h.strip().lower() for h in next(csv.reader([line.decode("utf-8-sig", "replace")]))]
            break
    if header is None:
        raise FerRayError(f"empty CSV: {path}")
    missing = [c for c in ("emotion", "pixels", "usage") if c not in header]
    if missing:
        raise FerRayError(
            f"not a FER-2013 CSV: {path} has no {'/'.join(missing)} column (header: {','.join(header)[:80]})"
        )
    ncol = len(header)
    ie, ip, iu = header.index("emotion"), header.index("pixels"), header.index("usage")

    bad: list[dict] = []
    chunks_px, labels, splits, rows = [], [], [], []
    pending_px, pending_rows, pending_labels, pending_splits = [], [], [], []

    def flush():
        if not pending_px:
            return
        arr = np.stack(pending_px)
        lo, hi = arr.min(axis=1), arr.max(axis=1)
        ok = (lo >= 0) & (hi <= 255)
        for j in np.flatnonzero(~ok):
            value = int(lo[j]) if lo[j] < 0 else int(hi[j])
            bad.append({"row": pending_rows[j][0], "line": pending_rows[j][1],
                        "reason": f"pixel value {value} out of range 0..255"})
        chunks_px.append(arr[ok].astype(np.uint8))
        keep = np.flatnonzero(ok)
        rows.extend(pending_rows[j][0] for j in keep)
        labels.extend(pending_labels[j] for j in keep)
        splits.extend(pending_splits[j] for j in keep)
        pending_px.clear(), pending_rows.clear(), pending_labels.clear(), pending_splits.clear()

    row = -1
    with warnings.catch_warnings():
        # numpy < 2.3 warns (and returns a partial array) where newer ones raise ValueError
        warnings.simplefilter("error", DeprecationWarning)
        for lineno, line in lines:
            if not line.strip():
                continue
            row += 1
            if b'"' in line:
                fields = next(csv.reader([line.decode("utf-8", "replace")]))
                fields = [f.encode() for f in fields]
            else:
                fields = line.split(b",")
            if len(fields) != ncol:
                bad.append({"row": row, "line": lineno,
                            "reason": f"malformed line: {len(fields)} fields, expected {ncol}"})
                continue
            reasons = []
            raw_label = fields[ie]
            label = int(raw_label) if _LABEL_RE.match(raw_label) else None
            if label is None or not 0 <= label < NUM_CLASSES:
                shown = raw_label.strip()[:20].decode("utf-8", "replace")
                reasons.append(f"label {shown!r} not an integer 0..{NUM_CLASSES - 1}")
            split = _SPLIT_NAMES.get(fields[iu].strip().decode("utf-8", "replace").lower())
            if split is None:
                shown = fields[iu].strip()[:30].decode("utf-8", "replace")
                reasons.append(f"split {shown!r} not one of {'/'.join(SPLITS)}")
            text = fields[ip]
            try:
                px = np.fromstring(text, dtype=np.int64, sep=" ")
            except (ValueError, DeprecationWarning):
                px = None
                reasons.append(_pixel_problem(text))
            if px is not None and px.size != NUM_PIXELS:
                reasons.append(f"{px.size} pixel values, expected {NUM_PIXELS}")
            if reasons:
                bad.append({"row": row, "line": lineno, "reason": "; ".join(reasons)})
                continue
            pending_px.append(px)
            pending_rows.append((row, lineno))
            pending_labels.append(label)
            pending_splits.append(split)
            if len(pending_px) >= 2048:
                flush()
        flush()

    pixels = (np.concatenate(chunks_px) if chunks_px else np.zeros((0, NUM_PIXELS), np.uint8))
    md5 = stream.md5.hexdigest()
    bad.sort(key=lambda b: b["row"])
    return Raw(
        kind="csv", path=os.path.abspath(path), sha256=sha, total_rows=row + 1,
        pixels=pixels.reshape(-1, INPUT_SIZE, INPUT_SIZE), labels=np.asarray(labels, np.int64),
        splits=np.asarray(splits, np.int8), source_rows=np.asarray(rows, np.int64), bad_rows=bad,
        info={"columns": header, "content_md5": md5, "canonical_fer2013": md5 == CANONICAL_CSV_MD5},
    )


# Folder layout --------------------------------------------------------------------------------

_EMOTION_FOLDERS = {name: i for i, name in enumerate(EMOTIONS)}
_EMOTION_FOLDERS.update({str(i): i for i in range(NUM_CLASSES)})
_EMOTION_FOLDERS.update({"anger": 0, "disgusted": 1, "fearful": 2, "happiness": 3, "sadness": 4,
                         "surprised": 5})
_TOP_FOLDERS = {"train": "train", "training": "train", "test": "test", "testing": "test",
                "val": "val", "valid": "val", "validation": "val"}
_UNPREFIXED = {"train": 0, "val": 1, "test": 2}  # index into SPLITS


def _folder_split(top: str, filename: str) -> int:
    if top != "train":
        if filename.startswith("PublicTest_"):
            return 1
        if filename.startswith("PrivateTest_"):
            return 2
    return _UNPREFIXED[top]


def list_folder(path: str) -> list[tuple[str, str, str]]:
    """Image files of the folder layout: sorted [(relative path, top folder kind, emotion folder)]."""
    found = []
    for entry in sorted(os.listdir(path)):
        top = _TOP_FOLDERS.get(entry.lower())
        full = os.path.join(path, entry)
        if top is None or not os.path.isdir(full):
            continue
        for dirpath, dirnames, filenames in os.walk(full):
            dirnames.sort()
            for name in sorted(filenames):
                if not name.lower().endswith(storage.IMAGE_EXTENSIONS):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), path)
                parts = rel.split(os.sep)
                emotion = parts[1] if len(parts) > 2 else ""
                found.append((rel.replace(os.sep, "/"), top, emotion))
    if not found:
        raise FerRayError(
            f"no images found in {path}: expected train/<emotion>/*.png|jpg and test/<emotion>/..."
        )
    return sorted(found)


def _decode_file(full: str):
    from .preprocess import DecodeError, decode, to_gray48

    with open(full, "rb") as f:
        payload = f.read()
    try:
        img = decode(payload)
        size = img.size
        return payload, to_gray48(img), size, None
    except DecodeError as exc:
        return payload, None, None, str(exc)


def read_folder(path: str, threads: int | None = None) -> Raw:
    """The image-folder layout; every image goes through preprocess.decode + to_gray48."""
    files = list_folder(path)
    h = hashlib.sha256()
    bad, px, labels, splits, rows = [], [], [], [], []
    resized = 0
    threads = threads or min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(_decode_file, [os.path.join(path, rel) for rel, _, _ in files])
        for row, ((rel, top, emotion), (payload, gray, size, error)) in enumerate(zip(files, results)):
            h.update(rel.encode() + b"\0" + len(payload).to_bytes(8, "little"))
            h.update(payload)
            label = _EMOTION_FOLDERS.get(emotion.lower())
            reasons = []
            if not emotion:
                reasons.append("not inside an emotion folder")
            elif label is None:
                reasons.append(f"unknown emotion folder {emotion!r} (expected one of {', '.join(EMOTIONS)})")
            if error:
                reasons.append(error)
            if reasons:
                bad.append({"row": row, "file": rel, "reason": "; ".join(reasons)})
                continue
            resized += size != (INPUT_SIZE, INPUT_SIZE)
            px.append(gray)
            labels.append(label)
            splits.append(_folder_split(top, os.path.basename(rel)))
            rows.append(row)
    pixels = np.stack(px) if px else np.zeros((0, INPUT_SIZE, INPUT_SIZE), np.uint8)
    return Raw(
        kind="folder", path=os.path.abspath(path), sha256=h.hexdigest(), total_rows=len(files),
        pixels=pixels, labels=np.asarray(labels, np.int64), splits=np.asarray(splits, np.int8),
        source_rows=np.asarray(rows, np.int64), bad_rows=bad,
        info={"resized_images": int(resized)}, files=[rel for rel, _, _ in files],
    )


def read_raw(path: str) -> Raw:
    if not os.path.exists(path):
        raise FerRayError(f"source not found: {path}")
    if os.path.isdir(path):
        return read_folder(path)
    try:
        return read_csv(path)
    except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:  # truncated/corrupt gzip or tar
        raise FerRayError(f"cannot read {path}: {exc or type(exc).__name__}") from None


# FER+ ---------------------------------------------------------------------------------------

# FER+ column -> EMOTIONS index; contempt, unknown and NF are dropped.
FERPLUS_COLUMNS = {"anger": 0, "disgust": 1, "fear": 2, "happiness": 3, "sadness": 4, "surprise": 5,
                   "neutral": 6}


def read_ferplus(path: str) -> tuple[np.ndarray, list[str], str]:
    """fer2013new.csv -> (votes float32 (R,7) in EMOTIONS order, Usage per row, sha256)."""
    if not os.path.isfile(path):
        raise FerRayError(f"FER+ file not found: {path}")
    with open(path, "rb") as f:
        payload = f.read()
    text = payload.decode("utf-8-sig", "replace")
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in FERPLUS_COLUMNS if c not in header]
    if missing:
        raise FerRayError(f"not a FER+ votes file (fer2013new.csv): {path} lacks {', '.join(missing)}")
    cols = [(header.index(name), k) for name, k in FERPLUS_COLUMNS.items()]
    iu = header.index("usage") if "usage" in header else None
    votes, usage = [], []
    for rec in reader:
        if not any(c.strip() for c in rec):
            continue
        v = np.zeros(NUM_CLASSES, np.float32)
        for i, k in cols:
            try:
                v[k] = float(rec[i]) if i < len(rec) and rec[i].strip() else 0.0
            except ValueError:
                v[k] = 0.0
        votes.append(v)
        usage.append(rec[iu].strip() if iu is not None and iu < len(rec) else "")
    arr = np.stack(votes) if votes else np.zeros((0, NUM_CLASSES), np.float32)
    return arr, usage, hashlib.sha256(payload).hexdigest()


# --------------------------------------------------------------------------------------------
# Analysis and the prepare job


def _class_counts(labels) -> dict:
    counts = np.bincount(np.asarray(labels, np.int64), minlength=NUM_CLASSES)
    return {EMOTIONS[i]: int(counts[i]) for i in range(NUM_CLASSES)}


def _group_ids(pixels: np.ndarray) -> np.ndarray:
    """Group id per row; rows with identical pixels share an id."""
    flat = np.ascontiguousarray(pixels.reshape(len(pixels), -1))
    if len(flat) == 0:
        return np.zeros(0, np.int64)
    keys = flat.view(np.dtype((np.void, flat.shape[1]))).ravel()
    _, inverse = np.unique(keys, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def _conflicting_groups(groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Group ids (among `groups`) whose rows hold more than one label."""
    if len(groups) == 0:
        return np.zeros(0, np.int64)
    pairs = np.unique(np.stack([groups, labels]), axis=1)
    ids, n_labels = np.unique(pairs[0], return_counts=True)
    return ids[n_labels > 1]


def analyse(data: Raw, drop_blank: bool = False, drop_duplicates: bool = False) -> dict:
    """Defects of the valid rows and which Training rows to drop. Returns a dict with 'keep'
    (bool per valid row), 'in_training' (bool per valid row, against the kept Training rows)
    and the summary sections 'blank', 'duplicates', 'leakage', 'dropped'."""
    n = len(data.labels)
    flat = data.pixels.reshape(n, -1)
    train = data.splits == 0
    hi = flat.max(axis=1, initial=0).astype(np.int16)
    lo = flat.min(axis=1, initial=255).astype(np.int16)
    blank = hi - lo <= BLANK_MAX_RANGE
    all_black = hi == 0

    groups = _group_ids(data.pixels)
    n_groups = int(groups.max()) + 1 if n else 0
    sizes = np.bincount(groups, minlength=n_groups)
    conflicting = _conflicting_groups(groups, data.labels)

    def contains(mask):
        present = np.zeros(n_groups, bool)
        present[groups[mask]] = True
        return present

    in_raw_training = contains(train)[groups]
    in_public = contains(data.splits == 1)[groups]

    # Training-only duplicate structure: what --drop-duplicates acts on.
    t_idx = np.flatnonzero(train)
    t_groups, t_labels = groups[t_idx], data.labels[t_idx]
    t_sizes = np.bincount(t_groups, minlength=n_groups)
    t_conflicting = _conflicting_groups(t_groups, t_labels)
    is_t_conflicting = np.zeros(n_groups, bool)
    is_t_conflicting[t_conflicting] = True

    keep = np.ones(n, bool)
    dropped_blank = dropped_dup = dropped_conflict = 0
    if drop_blank:
        drop = train & blank
        dropped_blank = int(drop.sum())
        keep &= ~drop
    if drop_duplicates:
        conflict_rows = t_idx[is_t_conflicting[t_groups]]
        before = keep[conflict_rows].sum()
        keep[conflict_rows] = False
        dropped_conflict = int(before)
        _, first = np.unique(t_groups, return_index=True)
        first_rows = np.zeros(n, bool)
        first_rows[t_idx[first]] = True
        later = train & ~first_rows & keep  # conflicting groups are already out
        dropped_dup = int(later.sum())
        keep &= ~later

    in_training = contains(train & keep)[groups] & ~train

    def by_split(mask):
        return {s: int((mask & (data.splits == i)).sum()) for i, s in enumerate(SPLITS)}

    return {
        "keep": keep,
        "in_training": in_training,
        "blank": {
            "rule": f"max - min pixel value <= {BLANK_MAX_RANGE}",
            "rows": int(blank.sum()),
            "all_black": int(all_black.sum()),
            "by_split": by_split(blank),
            "source_rows": [int(r) for r in data.source_rows[blank]],
        },
        "duplicates": {
            "unique_images": n_groups,
            "groups": int((sizes > 1).sum()),
            "rows_in_groups": int(sizes[sizes > 1].sum()),
            "conflicting_label_groups": int(len(conflicting)),
            "training_groups": int((t_sizes > 1).sum()),
            "training_rows_in_groups": int(t_sizes[t_sizes > 1].sum()),
            "training_conflicting_label_groups": int(len(t_conflicting)),
        },
        "leakage": {
            "PublicTest_in_Training": int((in_raw_training & (data.splits == 1)).sum()),
            "PrivateTest_in_Training": int((in_raw_training & (data.splits == 2)).sum()),
            "PrivateTest_in_PublicTest": int((in_public & (data.splits == 2)).sum()),
        },
        "dropped": {
            "blank": dropped_blank,
            "duplicate": dropped_dup,
            "conflicting_label": dropped_conflict,
            "total": int((~keep).sum()),
            "source_rows": [int(r) for r in data.source_rows[~keep]],
        },
    }


def prepare(raw: str, output: str, ferplus: str | None = None, drop_duplicates: bool = False,
            drop_blank: bool = False, png: bool = False) -> dict:
    """Read, validate and analyse the raw FER-2013 CSV or folder `raw` (prepare's --source); write
    DIR/<split>.parquet and DIR/prepare.json.
    Returns the summary (also written to prepare.json)."""
    started = time.time()
    if not os.path.exists(raw):
        raise FerRayError(f"source not found: {raw}")
    if ferplus is not None and os.path.isdir(raw):
        raise UsageError(
            "--ferplus needs the CSV source: FER+ votes are joined by row position, which an image "
            "folder does not have"
        )
    if not storage.is_s3(output) and os.path.exists(output) and not os.path.isdir(output):
        raise FerRayError(f"output exists and is not a folder: {output}")
    fp_votes = fp_usage = fp_sha = None
    if ferplus is not None:
        fp_votes, fp_usage, fp_sha = read_ferplus(ferplus)  # fail fast, before the long read

    data = read_raw(raw)
    n = len(data.labels)
    if n == 0:
        raise FerRayError(f"no valid rows in {raw} ({len(data.bad_rows)} bad rows; first: "
                          f"{data.bad_rows[0]['reason'] if data.bad_rows else 'none'})")

    votes = None
    ferplus_info = None
    if fp_votes is not None:
        if len(fp_votes) != data.total_rows:
            raise FerRayError(
                f"FER+ file has {len(fp_votes)} rows but the source has {data.total_rows}: "
                "they must be the same rows in the same order (join is by row position)"
            )
        votes = fp_votes[data.source_rows].copy()
        empty = votes.sum(axis=1) <= 0
        votes[empty] = np.nan
        raw_split_names = np.asarray(SPLITS)[data.splits]
        fp_split = np.asarray(fp_usage, dtype=object)[data.source_rows]
        mismatch = int(sum(1 for a, b in zip(raw_split_names, fp_split) if b and a != b))
        ferplus_info = {
            "path": os.path.abspath(ferplus), "sha256": fp_sha, "rows": int(len(fp_votes)),
            "rows_with_votes": int((~empty).sum()), "rows_without_votes": int(empty.sum()),
            "usage_mismatches": mismatch,
            "mapping": "anger->angry, disgust, fear, happiness->happy, sadness->sad, surprise, "
                       "neutral; contempt/unknown/NF dropped; raw vote counts",
        }

    result = analyse(data, drop_blank=drop_blank, drop_duplicates=drop_duplicates)
    keep, in_training = result.pop("keep"), result.pop("in_training")

    raw_counts, counts, written = {}, {}, []
    for i, split in enumerate(SPLITS):
        in_split = data.splits == i
        raw_counts[split] = {"rows": int(in_split.sum()), "classes": _class_counts(data.labels[in_split])}
        sel = np.flatnonzero(in_split & keep)
        name = f"{split}.parquet"
        if len(sel) == 0:
            remove(output, name)  # no stale split from an earlier run
            counts[split] = {"rows": 0, "classes": _class_counts([]), "in_training": 0}
            continue
        write_split(output, split, data.pixels[sel], data.labels[sel], source_rows=data.source_rows[sel],
                    in_training=in_training[sel], votes=None if votes is None else votes[sel], png=png)
        written.append(split)
        counts[split] = {"rows": int(len(sel)), "classes": _class_counts(data.labels[sel]),
                         "in_training": int(in_training[sel].sum())}
    if data.files is not None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["source_row", "file"])
        w.writerows(enumerate(data.files))
        write_bytes(output, SOURCES_FILE, buf.getvalue().encode())
    else:
        remove(output, SOURCES_FILE)

    from . import __version__

    summary = {
        "format": 1,
        "fer_ray_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {"path": data.path, "kind": data.kind, "sha256": data.sha256, "rows": data.total_rows,
                   "valid_rows": n, **data.info},
        "ferplus": ferplus_info,
        "options": {"drop_duplicates": drop_duplicates, "drop_blank": drop_blank, "png": png,
                    "blank_max_range": BLANK_MAX_RANGE,
                    "drops_apply_to": "Training only; test splits are kept intact"},
        "splits": written,
        "counts": counts,
        "source_counts": raw_counts,
        "bad_row_count": len(data.bad_rows),
        "bad_rows": data.bad_rows,
        **result,
        "checksum": checksum(output),
        "elapsed_s": round(time.time() - started, 2),
    }
    write_summary(output, summary)
    return summary


def format_summary(summary: dict, output: str) -> str:
    """The short human summary `fer-ray prepare` prints."""
    raw = summary["source"]
    lines = [f"prepared {raw['path']} ({raw['kind']}, {raw['rows']} rows) -> {output} "
             f"in {summary['elapsed_s']:.1f}s"]
    for split in SPLITS:
        c = summary["counts"][split]
        sc = summary["source_counts"][split]
        extra = f" (of {sc['rows']})" if sc["rows"] != c["rows"] else ""
        leak = f", {c['in_training']} also in Training" if c["in_training"] and split != "Training" else ""
        lines.append(f"  {split:<12} {c['rows']:>6} rows{extra}{leak}")
    bad = summary["bad_rows"]
    if bad:
        shown = ", ".join(f"row {b['row']}: {b['reason']}" for b in bad[:3])
        lines.append(f"  bad rows: {len(bad)} skipped ({shown}{', ...' if len(bad) > 3 else ''})")
    else:
        lines.append("  bad rows: 0")
    b, d, lk, dr = summary["blank"], summary["duplicates"], summary["leakage"], summary["dropped"]
    lines.append(f"  blank images: {b['rows']} ({b['all_black']} all black)")
    lines.append(f"  duplicates: {d['unique_images']} unique images, {d['groups']} groups, "
                 f"{d['conflicting_label_groups']} with conflicting labels")
    lines.append(f"  leakage: PublicTest {lk['PublicTest_in_Training']} and PrivateTest "
                 f"{lk['PrivateTest_in_Training']} rows also in Training; PrivateTest "
                 f"{lk['PrivateTest_in_PublicTest']} also in PublicTest")
    if dr["total"]:
        lines.append(f"  dropped from Training: {dr['total']} (blank {dr['blank']}, duplicate "
                     f"{dr['duplicate']}, conflicting label {dr['conflicting_label']})")
    fp = summary.get("ferplus")
    if fp:
        lines.append(f"  FER+ votes: {fp['rows_with_votes']} rows, {fp['rows_without_votes']} without "
                     f"(null), {fp['usage_mismatches']} Usage mismatches")
    lines.append(f"  checksum {summary['checksum'][:16]}…  summary: {SUMMARY_FILE}")
    return "\n".join(lines)
