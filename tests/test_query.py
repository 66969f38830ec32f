"""fer_ray.query and `fer-ray query` on outputs written by the real labeling job (fer_ray.label.run).

One labeled output per session, shared with test_report.py (`outputs` below):
  local: run 1 labels 30 sample faces + 2 bad files; run 2 (--incremental) adds 12 more samples
         and 10 generated faces in a sub-folder; then an uncommitted `run_id=` folder and a staging
         folder (copies of run 1's file) are planted, which every reader must ignore.
  s3:    the whole source uploaded to a bucket and labeled S3 -> S3 in one run.
The model is a fixed-seed fastnet whose last layer is set (PCA of its features) so that its labels
spread over all seven emotions with confidences from ~0.2 to ~1 -- an untrained model would give
one class at ~0.15 and the filters would have nothing to tell apart.
The reference for every check is a brute-force pandas computation over the committed files read
with plain pyarrow.parquet, file by file, as the markers list them.
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import FACE_VARIANTS, face_like, image_bytes, real_face
from fer_ray import cli, label, query, runs, storage
from fer_ray.emotions import EMOTIONS
from fer_ray.errors import FerRayError, UsageError
from fer_ray.schema import LABEL_SCHEMA, error_reason

N_SAMPLES = 42


def sample_pixels(i: int) -> np.ndarray:
    """Sample face i of N_SAMPLES: the real test face (a variant), shifted, blended with a generated pattern."""
    face = np.asarray(real_face(FACE_VARIANTS[i % len(FACE_VARIANTS)], 48), np.float32)
    face = np.roll(face, (i % 7 - 3, i % 5 - 2), axis=(0, 1))
    return np.clip(0.7 * face + 0.3 * face_like(2000 + i), 0, 255).astype(np.uint8)


def write_samples(folder) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, f"sample_{i:02d}.png") for i in range(N_SAMPLES)]
    for i, p in enumerate(paths):
        with open(p, "wb") as f:
            f.write(image_bytes(sample_pixels(i)))
    return paths


BAD = {"bad/not-an-image.jpg": b"hello, I am not a JPEG", "bad/empty.png": b""}

_CACHE: dict = {}


# ------------------------------------------------------------------------------------ fixtures


def spread_bundle(directory: str) -> str:
    """A fastnet bundle with diverse predictions (see the module docstring)."""
    import torch

    from fer_ray import bundle, models, preprocess

    torch.manual_seed(0)
    m = models.build("fastnet").eval()
    last = [x for x in m.modules() if isinstance(x, torch.nn.Linear)][-1]
    px = np.stack([sample_pixels(i) for i in range(N_SAMPLES)]
                  + [face_like(i) for i in range(40)])
    feats = []
    hook = last.register_forward_hook(lambda mod, inp, out: feats.append(inp[0].detach()))
    with torch.no_grad():
        m(preprocess.normalize(px))
    hook.remove()
    f = feats[0]
    mu = f.mean(0)
    _, _, v = torch.pca_lowrank(f - mu, q=len(EMOTIONS), center=False)
    w = v.T
    w = w / ((f - mu) @ w.T).std(0, keepdim=True).T * 1.5
    with torch.no_grad():
        last.weight.copy_(w)
        last.bias.copy_(-(w @ mu))
    bundle.save(directory, m, "fastnet")
    return directory


def _write_source(root: str, names: list[str], generated: int = 0) -> None:
    os.makedirs(root, exist_ok=True)
    for p in names:
        shutil.copy(p, os.path.join(root, os.path.basename(p)))
    for i in range(generated):
        os.makedirs(os.path.join(root, "gen"), exist_ok=True)
        with open(os.path.join(root, "gen", f"face{i:03d}.jpg"), "wb") as f:
            f.write(image_bytes(face_like(1000 + i, 64), "JPEG"))


def brute(dest: str) -> pd.DataFrame:
    """All committed rows, read file by file with plain pyarrow (the reference)."""
    d = runs.Dest(dest)
    tables = []
    for name in sorted(d.ls_names(d.runs_dir())):
        with d.fs.open(d.path(runs.RUNS_DIR, name), "rb") as f:
            marker = json.load(f)
        for rel in marker["files"]:
            with d.fs.open(d.path(rel), "rb") as f:
                tables.append(pq.read_table(f))
    return pa.concat_tables(tables).to_pandas()


def make_outputs(tmp_path_factory, s3_server) -> dict:
    """The shared labeled outputs (cached for the session; test_report.py uses the same)."""
    if _CACHE:
        return _CACHE
    base = tmp_path_factory.mktemp("labeled")
    model = spread_bundle(str(base / "bundle"))
    src = str(base / "src")
    samples = write_samples(str(base / "samples"))
    _write_source(src, samples[:30])
    for k, v in BAD.items():
        os.makedirs(os.path.dirname(os.path.join(src, k)), exist_ok=True)
        with open(os.path.join(src, k), "wb") as f:
            f.write(v)
    local = str(base / "out")
    kw = dict(model=model, batch_size=16, workers=1, progress=False, echo=lambda m: None)
    m1 = label.run(src, local, **kw)
    _write_source(src, samples[30:], generated=10)
    m2 = label.run(src, local, incremental=True, **kw)

    # debris a reader must ignore: a crashed run's staging and an uncommitted run folder
    first = os.path.join(local, m1["files"][0])
    for folder in (os.path.join(local, runs.STAGING_DIR, "20990101T000000Z-crash1"),
                   os.path.join(local, f"{runs.RUN_PREFIX}20990101T000000Z-crash2")):
        os.makedirs(folder, exist_ok=True)
        shutil.copy(first, os.path.join(folder, "part-00000.parquet"))

    # S3: the same source in a bucket, labeled S3 -> S3
    fs = storage.filesystem("s3://x")[0]
    bucket = f"q-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    fs.put(src + "/", f"{bucket}/src/", recursive=True)
    fs.invalidate_cache()
    s3_dest = f"s3://{bucket}/labels"
    m3 = label.run(f"s3://{bucket}/src", s3_dest, **kw)

    _CACHE.update(local=local, src=src, markers=[m1, m2], s3=s3_dest, s3_src=f"s3://{bucket}/src",
                  s3_markers=[m3], model=model, bucket=bucket)
    _CACHE["local_df"] = brute(local)
    _CACHE["s3_df"] = brute(s3_dest)
    return _CACHE


@pytest.fixture(scope="session")
def outputs(ray_local, s3_server, tmp_path_factory):
    return make_outputs(tmp_path_factory, s3_server)


def run_cli(capsys, *argv):
    rc = cli.main(["query", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _key(df):
    return df.sort_values(["run_id", "image_path", "face_index"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------ counts


def test_the_fixture_is_what_the_tests_assume(outputs):
    df = outputs["local_df"]
    m1, m2 = outputs["markers"]
    assert m1["objects"] == 32 and m2["objects"] == 22 and len(df) == 54
    assert df["label"].nunique() >= 5  # the spread model: labels to filter on
    reasons = set(df["error"].dropna().map(error_reason))
    assert reasons == {"empty file", "cannot decode image: UnidentifiedImageError"}
    assert len(outputs["s3_df"]) == 54


@pytest.mark.parametrize("where", ["local", "s3"])
def test_summary_counts_match_markers_and_rows(outputs, where):
    dest = outputs[where]
    df = outputs[f"{where}_df"]
    markers = outputs["markers"] if where == "local" else outputs["s3_markers"]
    s = query.summary(dest)
    assert s["rows"] == len(df) == sum(m["rows"] for m in markers)
    assert s["images"] == df["image_path"].nunique()
    assert s["errors"] == df["error"].notna().sum() == sum(m["error_rows"] for m in markers)
    assert s["labeled"] == df["label"].notna().sum()
    # errors by reason: the same grouping as the markers' counts
    want = {}
    for m in markers:
        for r, n in m["errors"].items():
            want[r] = want.get(r, 0) + n
    assert {r["reason"]: r["count"] for r in s["errors_by_reason"]} == want
    for r in s["errors_by_reason"]:
        assert set(r["examples"]) <= set(df.loc[df["error"].notna(), "image_path"])
    # per emotion: count, share, quantiles
    ok = df[df["error"].isna()]
    assert [e["emotion"] for e in s["emotions"]] == list(EMOTIONS)
    for e in s["emotions"]:
        sub = ok[ok["label"] == e["emotion"]]["confidence"].astype("float64")
        assert e["count"] == len(sub)
        assert e["share"] == pytest.approx(len(sub) / len(ok), abs=1e-6)
        if len(sub):
            for k, q in (("p10", 10), ("p50", 50), ("p90", 90)):
                assert e[k] == pytest.approx(np.percentile(sub, q), abs=1e-5)
        else:
            assert e["p50"] is None
    assert s["confidence"]["p50"] == pytest.approx(np.percentile(ok["confidence"].astype("float64"), 50), abs=1e-5)
    # per run
    assert [r["run_id"] for r in s["runs"]] == [m["run_id"] for m in markers]
    for r, m in zip(s["runs"], markers):
        mine = df[df["run_id"] == r["run_id"]]
        assert r["rows"] == len(mine) == m["rows"] and r["errors"] == m["error_rows"]
        assert r["model_id"] == m["model_id"] and r["source"] == m["source"]
        assert r["emotions"] == {e: int((mine["label"] == e).sum()) for e in EMOTIONS}
        assert r["errors_by_reason"] == m["errors"]


def test_uncommitted_and_staging_files_are_ignored(outputs):
    local = outputs["local"]
    on_disk = glob.glob(os.path.join(local, "**", "*.parquet"), recursive=True)
    committed = runs.committed_files(local)
    assert len(on_disk) == len(committed) + 2  # the planted debris exists ...
    out = query.open_labels(local)
    assert sorted(out.files) == sorted(committed)  # ... and is not read
    assert query.sql(local, "SELECT count(*) AS n FROM labels")["n"][0] == len(outputs["local_df"])
    assert set(query.sql(local, "SELECT DISTINCT run_id FROM labels")["run_id"]) == {
        m["run_id"] for m in outputs["markers"]}


# ------------------------------------------------------------------------------------ filters

FILTERS = [
    dict(emotion="happy"),
    dict(emotion=["sad", "angry"]),
    dict(min_confidence=0.5),
    dict(max_confidence=0.4),
    dict(emotion="neutral,fear,surprise", min_confidence=0.3, max_confidence=0.8),
    dict(errors_only=True),
    dict(path_glob="*/gen/*.jpg"),
    dict(path_glob="*/sample_[13]*.png", min_confidence=0.35),
    dict(run="latest"),
    dict(run="FIRST", emotion="disgust"),
]


def pandas_filter(df: pd.DataFrame, emotion=None, min_confidence=None, max_confidence=None,
                  run=None, path_glob=None, errors_only=False) -> pd.DataFrame:
    import fnmatch

    keep = pd.Series(True, index=df.index)
    if emotion is not None:
        names = [n for e in ([emotion] if isinstance(emotion, str) else emotion) for n in e.split(",")]
        keep &= df["label"].isin(names)
    conf = df["confidence"].astype("float64")
    if min_confidence is not None:
        keep &= conf >= np.float32(min_confidence)
    if max_confidence is not None:
        keep &= conf <= np.float32(max_confidence)
    if run is not None:
        keep &= df["run_id"] == run
    if path_glob is not None:
        keep &= df["image_path"].map(lambda p: fnmatch.fnmatchcase(p, path_glob))
    if errors_only:
        keep &= df["error"].notna()
    return df[keep]


def _resolve(f: dict, markers) -> dict:
    f = dict(f)
    if f.get("run") == "FIRST":
        f["run"] = markers[0]["run_id"]
    return f


@pytest.mark.parametrize("f", FILTERS, ids=[",".join(f"{k}={v}" for k, v in f.items()) for f in FILTERS])
def test_filters_match_a_brute_force_pandas_computation(outputs, f):
    df, markers = outputs["local_df"], outputs["markers"]
    f = _resolve(f, markers)
    run = markers[-1]["run_id"] if f.get("run") == "latest" else f.get("run")
    want = pandas_filter(df, **{**f, "run": run})
    got = query.labels(outputs["local"], columns="all", **f)
    assert list(got.columns) == LABEL_SCHEMA.names
    assert len(want) > 0 or f.get("run") or f.get("emotion") == "disgust"
    pd.testing.assert_frame_equal(_key(got), _key(want), check_dtype=False)
    # the summary and SQL see the same filtered rows
    assert query.summary(outputs["local"], **f)["rows"] == len(want)
    assert query.sql(outputs["local"], "SELECT count(*) AS n FROM labels", **f)["n"][0] == len(want)


def test_filters_on_s3_match_pandas(outputs):
    df = outputs["s3_df"]
    for f in (dict(emotion="happy", min_confidence=0.3), dict(errors_only=True), dict(path_glob="s3://*/src/gen/*")):
        want = pandas_filter(df, **f)
        got = query.labels(outputs["s3"], columns="all", **f)
        assert len(want) > 0
        pd.testing.assert_frame_equal(_key(got), _key(want), check_dtype=False)


def test_open_prunes_files_by_run_and_where_narrows(outputs):
    m1, m2 = outputs["markers"]
    out = query.open_labels(outputs["local"], run=m1["run_id"])
    assert out.run_ids == [m1["run_id"]]
    assert sorted(out.files) == sorted(runs.committed_files(outputs["local"], [m1["run_id"]]))
    assert query.open_labels(outputs["local"], run="latest").run_ids == [m2["run_id"]]
    happy = out.where(emotion="happy")
    n = ((outputs["local_df"]["run_id"] == m1["run_id"]) & (outputs["local_df"]["label"] == "happy")).sum()
    assert happy.dataset.count_rows() == n
    assert query.labels(happy, sort="confidence:desc")["confidence"].is_monotonic_decreasing


def test_glob_to_regex():
    import re

    cases = {"*.png": ["a.png", "x/y/z.png"], "img?.jpg": ["img1.jpg"], "[!a]*": ["b"], "a[bc]d": ["abd", "acd"],
             "a.b+(c)": ["a.b+(c)"]}
    for g, good in cases.items():
        rx = re.compile(query.glob_to_regex(g))
        assert all(rx.match(s) for s in good), g
    assert not re.match(query.glob_to_regex("img?.jpg"), "img12.jpg")
    assert not re.match(query.glob_to_regex("a.b"), "axb")


# ------------------------------------------------------------------------------------ SQL


def test_sql_group_by_matches_pandas(outputs):
    df = outputs["local_df"]
    got = query.sql(outputs["local"], """
        SELECT label, count(*) AS n, avg(confidence) AS mean_conf
        FROM labels WHERE error IS NULL GROUP BY label ORDER BY label""")
    ok = df[df["error"].isna()]
    want = ok.groupby("label").agg(n=("label", "size"), mean_conf=("confidence", "mean")).reset_index()
    assert list(got["label"]) == list(want["label"])
    assert list(got["n"]) == list(want["n"])
    np.testing.assert_allclose(got["mean_conf"], want["mean_conf"], rtol=1e-5)
    # the commit markers are a table too
    r = query.sql(outputs["local"], "SELECT run_id, rows FROM runs ORDER BY run_id")
    assert list(r["rows"]) == [m["rows"] for m in sorted(outputs["markers"], key=lambda m: m["run_id"])]
    # Arrow out, and DuckDB-only syntax works
    t = query.sql(outputs["local"], "FROM labels SELECT image_path QUALIFY row_number() OVER () <= 3", arrow=True)
    assert isinstance(t, pa.Table) and t.num_rows == 3


def test_filters_are_pushed_into_the_arrow_scan(outputs):
    """DuckDB's plan shows projections and string filters inside the Arrow scan; the structured
    filters live in the dataset itself (Dataset.filter), so they run in the scan too."""
    out = query.open_labels(outputs["local"], min_confidence=0.5)
    con = out.connect()
    plan = "\n".join(r[1] for r in con.execute(
        "EXPLAIN SELECT image_path FROM labels WHERE label = 'happy'").fetchall())
    assert "ARROW_SCAN" in plan.upper()
    assert "Filters:" in plan and "label" in plan and "happy" in plan
    assert "Projections:" in plan and "image_path" in plan
    # the confidence filter is part of the dataset DuckDB scans: its own row count is filtered
    df = outputs["local_df"]
    assert out.dataset.count_rows() == (df["confidence"] >= np.float32(0.5)).sum()


def _bigger_output(outputs, tmp_path) -> str:
    """The labeled rows repeated to ~110k rows in two committed runs: Parquet files large enough
    that column chunks, not the footer read, dominate what is read."""
    base = outputs["local_df"]
    dest = str(tmp_path / "big")
    d = runs.Dest(dest)
    rng = np.random.default_rng(0)
    for k in range(2):
        run_id, _ = runs.open_run(d, {"run_id": f"20260101T00000{k}Z-big{k:03d}"})
        df = pd.concat([base] * 1000, ignore_index=True)
        df["run_id"] = run_id
        # distinct paths and probabilities, as in a real bucket (repeats would compress to nothing)
        df["image_path"] = df["image_path"] + "?" + pd.Series(np.arange(len(df))).astype(str)
        for c in [c for c in df.columns if c.startswith("prob_")]:
            df[c] = np.where(df[c].isna(), np.nan, rng.random(len(df))).astype("float32")
        t = pa.Table.from_pandas(df, schema=LABEL_SCHEMA, preserve_index=False)
        pq.write_table(t, d.path(runs.STAGING_DIR, run_id, runs.part_name(0)), row_group_size=20_000)
        runs.commit(d, run_id, {"rows": t.num_rows})
    return dest


def test_projection_reads_only_the_needed_columns(outputs, monkeypatch, tmp_path):
    """Count the bytes pyarrow reads from the Parquet files: a one-column count reads a fraction
    of what SELECT * reads, and --run opens that
    run's files only."""
    import fsspec
    import pyarrow.fs as pafs

    dest = _bigger_output(outputs, tmp_path)
    read = {"bytes": 0, "files": set()}

    class Counting(pafs.FSSpecHandler):
        def open_input_file(self, path):
            read["files"].add(path)
            f = self.fs.open(path, "rb")
            orig = f.read

            def counted(n=-1):
                b = orig(n)
                read["bytes"] += len(b)
                return b

            f.read = counted
            return pa.PythonFile(f, mode="r")

    counting = pafs.PyFileSystem(Counting(fsspec.filesystem("file")))
    real = storage.arrow_filesystem
    monkeypatch.setattr(storage, "arrow_filesystem", lambda uri: (counting, real(uri)[1]))

    def measure(q, **f):
        read["bytes"], read["files"] = 0, set()
        res = query.sql(dest, q, **f)
        return read["bytes"], set(read["files"]), res

    everything, files_all, _ = measure("SELECT * FROM labels")
    one_col, _, res = measure("SELECT count(*) AS n FROM labels WHERE label = 'happy'")
    assert res["n"][0] == 2000 * (outputs["local_df"]["label"] == "happy").sum()
    assert one_col < everything * 0.2, (one_col, everything)
    first = runs.committed_runs(dest)[0]["run_id"]
    _, files_run, res = measure("SELECT count(*) AS n FROM labels", run=first)
    assert files_all == {real(f)[1] for f in runs.committed_files(dest)} and len(files_all) == 2
    assert files_run == {real(f)[1] for f in runs.committed_files(dest, [first])}
    assert res["n"][0] == 1000 * len(outputs["local_df"])


# ------------------------------------------------------------------------------------ CLI


def test_cli_summary_table_and_json(outputs, capsys):
    rc, out, err = run_cli(capsys, outputs["local"], "--summary")
    assert rc == 0 and err == ""
    s = query.summary(outputs["local"])
    assert f"rows: {s['rows']:,}" in out and f"images: {s['images']:,}" in out
    assert "per run:" in out and all(m["run_id"] in out for m in outputs["markers"])
    assert "empty file" in out
    rc, out, _ = run_cli(capsys, outputs["local"], "--summary", "--format", "json")
    assert rc == 0 and json.loads(out)["rows"] == s["rows"]


def test_cli_formats_round_trip(outputs, capsys, tmp_path):
    df = outputs["local_df"]
    want = _key(pandas_filter(df, emotion="happy"))
    rc, out, _ = run_cli(capsys, outputs["local"], "--emotion", "happy", "--format", "csv")
    assert rc == 0
    got = pd.read_csv(io.StringIO(out))
    assert list(got.columns) == LABEL_SCHEMA.names and len(got) == len(want)
    assert sorted(got["image_path"]) == sorted(want["image_path"])
    np.testing.assert_allclose(_key(got)["confidence"], want["confidence"], rtol=1e-6)

    rc, out, _ = run_cli(capsys, outputs["local"], "--emotion", "happy", "--format", "json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == len(want) and all(r["label"] == "happy" for r in rows)
    assert isinstance(rows[0]["box_w"], int) and rows[0]["labeled_at"].endswith("Z")

    p = tmp_path / "happy.parquet"  # format from the suffix
    rc, _, _ = run_cli(capsys, outputs["local"], "--emotion", "happy", "--output", str(p))
    assert rc == 0 and pq.read_table(p).schema.names == LABEL_SCHEMA.names and pq.read_table(p).num_rows == len(want)

    rc, out, _ = run_cli(capsys, outputs["local"], "--sql", "SELECT label, count(*) AS n FROM labels GROUP BY 1",
                         "--format", "json")
    got = {r["label"]: r["n"] for r in map(json.loads, out.splitlines())}
    from collections import Counter

    assert got == Counter(v if isinstance(v, str) else None for v in df["label"])


def test_cli_table_listing_limits(outputs, capsys):
    rc, out, _ = run_cli(capsys, outputs["local"], "--limit", "5", "--sort=-confidence")
    lines = out.strip().splitlines()
    assert rc == 0 and lines[0].split() == query.DEFAULT_COLUMNS and len(lines) == 1 + 5 + 1
    top = outputs["local_df"]["confidence"].max()
    assert f"{top:.4f}" in lines[1]
    rc, out, _ = run_cli(capsys, outputs["local"], "--errors-only", "--columns", "image_path,error")
    assert rc == 0 and "not-an-image.jpg" in out and "empty file" in out and "(first" not in out


@pytest.mark.parametrize("argv, message", [
    (["--sql", "SELEC nonsense"], "SQL error: Parser Error"),
    (["--sql", "SELECT no_such_column FROM labels"], "SQL error: Binder Error"),
    (["--emotion", "joy"], "unknown emotion 'joy'"),
    (["--min-confidence", "1.5"], "between 0 and 1"),
    (["--run", "20000101T000000Z-nope00"], "no committed run '20000101T000000Z-nope00'"),
    (["--columns", "image_path,nope"], "unknown column 'nope'"),
    (["--sort", "nope"], "unknown sort column"),
    (["--format", "parquet"], "needs --output"),
    (["--summary", "--format", "csv"], "--summary prints"),
])
def test_bad_queries_give_one_line_and_nonzero_exit(outputs, capsys, argv, message):
    rc, out, err = run_cli(capsys, outputs["local"], *argv)
    assert rc != 0 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_bad_destinations(outputs, capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    staged_only = tmp_path / "staged"
    shutil.copytree(os.path.join(outputs["local"], runs.STAGING_DIR), staged_only / runs.STAGING_DIR)
    cases = [
        (str(tmp_path / "missing"), "no labeling output at"),
        (str(empty), "no committed labeling runs"),
        (str(staged_only), "no committed labeling runs"),
        ("s3://no-such-bucket-fer-ray-test/labels", "no such bucket: s3://no-such-bucket-fer-ray-test"),
        (f"s3://{outputs['bucket']}/nothing-here", "no labeling output at"),
    ]
    for dest, message in cases:
        for argv in ([dest, "--summary"], [dest, "--sql", "SELECT 1"]):
            rc, out, err = run_cli(capsys, *argv)
            assert rc == 1 and out == "" and err.count("\n") == 1 and message in err, (dest, err)
    with pytest.raises(FerRayError, match="no committed labeling runs"):
        query.summary(str(empty))
    with pytest.raises(UsageError):
        query.labels(outputs["local"], emotion="joy")


def test_a_real_process_prints_no_traceback(outputs):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "fer_ray.cli", "query", outputs["local"], "--sql", "SELECT * FROM nope"],
                       capture_output=True, text=True)
    assert p.returncode == 1 and p.stdout == "" and "Traceback" not in p.stderr
    assert p.stderr.startswith("error: SQL error: Catalog Error") and p.stderr.count("\n") == 1


# ---------------------------------------------------------------- hostile arguments (no Ray)


def tiny_output(root) -> str:
    """A committed output written without Ray: one photo face and two frames of a video."""
    import datetime as dt

    dest = str(root / "tiny")
    d = runs.Dest(dest)
    run_id, _ = runs.open_run(d, {"run_id": "20260101T000000Z-tiny00"})
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    base = dict(face_index=0, label="happy", confidence=0.9, model_id="m", run_id=run_id, labeled_at=now)
    rows = [dict(base, image_path="/img/a.png"),
            dict(base, image_path="/v/b.mp4", frame_index=0, timestamp_s=0.0),
            dict(base, image_path="/v/b.mp4", frame_index=1, timestamp_s=1.5, label="sad")]
    pq.write_table(pa.Table.from_pylist(rows, schema=LABEL_SCHEMA), d.path(runs.STAGING_DIR, run_id, runs.part_name(0)))
    runs.commit(d, run_id, {"rows": len(rows)})
    return dest


def assert_usage_error(capsys, dest, argv, message):
    """Exit 2 with one line on stderr, whatever DEST is: arguments are checked before it is read."""
    rc, out, err = run_cli(capsys, str(dest), *argv)
    assert rc == 2 and out == "", err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("window", ["inf", "-inf", "nan", "0", "-5", "1e999"])
def test_timeline_takes_only_finite_positive_seconds(tmp_path, capsys, window):
    assert_usage_error(capsys, tmp_path / "missing", [f"--timeline={window}"],
                       "--timeline must be a finite number of seconds > 0")
    with pytest.raises(UsageError, match="finite number of seconds"):
        query.timeline_sql(float(window))


def test_timeline_of_a_small_output(tmp_path, capsys):
    rc, out, err = run_cli(capsys, tiny_output(tmp_path), "--timeline", "1", "--format", "csv")
    lines = out.splitlines()
    assert rc == 0 and err == "" and len(lines) == 3, (out, err)
    assert lines[1].startswith('"/v/b.mp4",0,1,1,1,1,"happy"') and lines[2].startswith('"/v/b.mp4",1,2,1,1,1,"sad"')


@pytest.mark.parametrize("argv, message", [
    (["--emotion", ""], "--emotion is empty: choose from " + ", ".join(EMOTIONS)),
    (["--emotion", " , "], "--emotion is empty: choose from " + ", ".join(EMOTIONS)),
    (["--emotion", "happy", "--emotion", ""], "--emotion is empty"),  # each flag must name one
    (["--run", ""], "--run is empty"),
])
def test_empty_filter_flags_are_refused(tmp_path, capsys, argv, message):
    assert_usage_error(capsys, tmp_path / "missing", argv, message)
    with pytest.raises(UsageError, match="is empty"):
        query.Filters.make(**{argv[0][2:]: argv[1::2]})


@pytest.mark.parametrize("pattern, message", [
    ("[", "a '[' is not closed by ']'"),
    ("s3://b/[!x", "a '[' is not closed by ']'"),
    ("*/img[]", "a '[' is not closed by ']'"),
    ("*[z-a]*", "invalid character class range"),
    ("", "--path-glob is empty"),
])
def test_bad_path_globs_are_refused(tmp_path, capsys, pattern, message):
    assert_usage_error(capsys, tmp_path / "missing", ["--path-glob", pattern], message)
    with pytest.raises(UsageError, match="path-glob"):
        query.open_labels(tmp_path / "missing", path_glob=pattern)


def test_path_glob_sets_match_like_fnmatch():
    """In RE2 (the scan's regex engine, unlike Python's re) '[:' inside a set starts a class."""
    import fnmatch

    import pyarrow.compute as pc

    names = ["[x", "x", ":", "a", "]", "b]", "\\", "-", "p"]
    for g in ["[[]x", "[[:a]", "[]]", "[!]]", "[!a]]", "[\\]", "[a-]", "[]-a]", "[[:alpha:]]"]:
        hits = pc.match_substring_regex(pa.array(names), query.glob_to_regex(g)).to_pylist()
        assert [n for n, hit in zip(names, hits) if hit] == [n for n in names if fnmatch.fnmatchcase(n, g)], g


@pytest.mark.parametrize("sql", [
    "INSTALL httpfs",
    "LOAD httpfs",
    "FORCE INSTALL httpfs FROM 'http://127.0.0.1:9/'",
    "LOAD '/tmp/fer-ray-no-such.duckdb_extension'",
    "SET autoload_known_extensions = true; LOAD httpfs",
    "SELECT * FROM read_csv('/etc/passwd')",
    "COPY labels TO '{tmp}/copy.csv'",
])
def test_sql_cannot_install_load_or_touch_files(tmp_path, capsys, sql):
    dest = tiny_output(tmp_path)
    rc, out, err = run_cli(capsys, dest, "--sql", sql.format(tmp=tmp_path))
    assert rc == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith("error: SQL error: Permission Error") and "no files, no extensions" in err, err
    assert not (tmp_path / "copy.csv").exists()


def test_sql_still_reads_labels_and_runs(tmp_path, capsys):
    dest = tiny_output(tmp_path)
    rc, out, err = run_cli(capsys, dest, "--format", "csv", "--sql",
                           "SELECT label, count(*) AS n, error_reason('empty file') AS r FROM labels GROUP BY 1 ORDER BY 1")
    assert (rc, err, out.splitlines()) == (0, "", ['"label","n","r"', '"happy",2,"empty file"', '"sad",1,"empty file"'])
    rc, out, err = run_cli(capsys, dest, "--format", "csv", "--sql", "SELECT run_id, rows FROM runs")
    assert (rc, out.splitlines()[1]) == (0, '"20260101T000000Z-tiny00",3')
    assert query.sql(dest, "SELECT current_setting('enable_external_access') AS x")["x"][0] == False  # noqa: E712


def test_outputs_written_before_face_source_stay_readable(outputs, tmp_path, capsys):
    """A run committed by an older fer-ray has no face_source column: query and report still read
    it (the column reads as null) beside a run that has it."""
    base = outputs["local_df"]
    dest = str(tmp_path / "mixed")
    d = runs.Dest(dest)
    for k, old in enumerate((True, False)):
        run_id, _ = runs.open_run(d, {"run_id": f"20260101T00000{k}Z-mix{k:03d}"})
        df = base.assign(run_id=run_id)
        schema = LABEL_SCHEMA
        if old:
            df = df.drop(columns=["face_source"])
            schema = pa.schema([f for f in LABEL_SCHEMA if f.name != "face_source"])
        t = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
        pq.write_table(t, d.path(runs.STAGING_DIR, run_id, runs.part_name(0)))
        runs.commit(d, run_id, {"rows": t.num_rows})
    got = query.labels(dest, columns="all")
    assert len(got) == 2 * len(base)
    old_rows = got[got["run_id"].str.endswith("mix000")]
    assert old_rows["face_source"].isna().all()
    assert query.summary(dest)["rows"] == 2 * len(base)
    assert cli.main(["report", dest, "--out", str(tmp_path / "r.html")]) == 0


def test_summary_counts_photos_without_a_face(tmp_path, ray_local):
    """A photo in which no face is found is one row without a label and without an error: the
    summary and its text count it apart from labeled faces and errors."""
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (640, 480), (90, 140, 200)).save(src / "sky.jpg")
    Image.new("L", (640, 480), 30).save(src / "dark.png")
    (src / "face.png").write_bytes(image_bytes(face_like(7, 48)))
    marker = label.run(str(src), str(tmp_path / "out"), progress=False, echo=lambda m: None)
    s = query.summary(str(tmp_path / "out"))
    assert (s["rows"], s["labeled"], s["no_face"], s["errors"]) == (3, 1, 2, 0)
    assert s["runs"][0]["no_face"] == 2 and marker["error_rows"] == 0
    assert "no face found: 2" in query.format_summary(s)
