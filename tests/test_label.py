"""The labeling job against the local S3 server and a local Ray: every object -> >= 1 row,
exactly once, across crashes, killed actors and incremental re-runs."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import (FACE_VARIANTS, env_without_cluster, expire_lease, face_like, fer_ray_command, image_bytes,
                      real_face, wait_for)
from fer_ray import cli, label, runs, sources, storage
from fer_ray import labeler as labeler_mod
from fer_ray.emotions import EMOTIONS
from fer_ray.schema import LABEL_SCHEMA, PROB_COLUMNS


def _s3fs():
    return storage.filesystem("s3://x")[0]


def _images(start, n):
    """n generated face crops, alternating JPEG and PNG, some in a sub-prefix."""
    out = {}
    for i in range(start, start + n):
        fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
        sub = "deep/er/" if i % 5 == 0 else ""
        out[f"{sub}img{i:05d}.{ext}"] = image_bytes(face_like(i), fmt)
    return out


INLINE_BAD = {
    "bad/zero.jpg": (b"", "empty file"),
    "bad/text.jpg": (b"hello, I am not a JPEG", "cannot decode image"),
    "bad/truncated.jpg": (image_bytes(face_like(1, 200), "JPEG")[:300], "cannot decode image: truncated"),
}


def _put(prefix, files):
    fs = _s3fs()
    fs.pipe({f"{prefix.split('://', 1)[1]}/{k}": v for k, v in files.items()})
    fs.invalidate_cache()


def _save(folder, files) -> set[str]:
    """_put into a local folder (a pathlib.Path): returns the files' paths."""
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return {str(folder / name) for name in files}


def _read(dest):
    files = runs.committed_files(dest)
    afs, _ = storage.arrow_filesystem(dest)
    for f in files:  # every file carries exactly the fixed schema, null-only columns included
        assert pq.read_schema(storage.arrow_filesystem(f)[1], filesystem=afs).remove_metadata().equals(LABEL_SCHEMA)
    if not files:
        return LABEL_SCHEMA.empty_table()
    return pads.dataset([storage.arrow_filesystem(f)[1] for f in files], format="parquet", filesystem=afs,
                        schema=LABEL_SCHEMA).to_table()


def _check_rows(t: pa.Table, marker=None):
    rows = t.to_pylist()
    for r in rows:
        assert r["image_path"] and r["model_id"] and r["run_id"] and r["labeled_at"] is not None
        probs = [r[c] for c in PROB_COLUMNS]
        if r["face_source"] == "no-face":  # a photo without a face found: no label, no error
            assert r["error"] is None and r["label"] is None and all(p is None for p in probs)
            assert r["image_width"] > 0 and r["box_w"] is None
        elif r["error"] is None:
            assert r["label"] in EMOTIONS and abs(sum(probs) - 1) < 1e-4
            assert r["confidence"] == pytest.approx(max(probs)) and r["label"] == EMOTIONS[int(np.argmax(probs))]
            assert r["image_width"] > 0 and r["box_w"] > 0
        else:
            assert r["label"] is None and r["confidence"] is None and all(p is None for p in probs)
    if marker:
        assert marker["rows"] == len(rows)
        assert marker["error_rows"] == sum(r["error"] is not None for r in rows)
        assert sum(marker["errors"].values()) == marker["error_rows"]


def _once(t: pa.Table, listing):
    """Every listed object has exactly one face_index-0 row (crop mode: exactly one row)."""
    paths = t.column("image_path").to_pylist()
    assert sorted(paths) == sorted(o.uri for o in listing)


# ------------------------------------------------------------------------- in-process (no Ray)


@pytest.fixture(scope="module")
def labeler():
    from fer_ray import bundle

    meta = bundle.load().meta
    return labeler_mod.Labeler(bundle.default_path(), meta["model_id"], "test-run")


def _batch(uris, sizes=None):
    sizes = sizes or [os.path.getsize(u) if os.path.exists(u) else -1 for u in uris]
    return pa.Table.from_pydict({"uri": uris, "size": sizes, "etag": ["e"] * len(uris)}, schema=labeler_mod.INPUT_SCHEMA)


def _catalogue():
    """{name: (bytes, expected error prefix, or "" for "must be labeled", or None for "a row, either way")}:
    H5's catalogue of bad inputs (tests/badfiles.py) plus a few inline ones."""
    import badfiles  # a failure here fails the tests: the catalogue never shrinks silently

    out = dict(INLINE_BAD)
    assert len(badfiles.catalogue()) >= 30
    for name, data, expect in badfiles.catalogue():
        out[f"cat/{name}"] = (data, badfiles.REASONS.get(name, "cannot decode image") if expect == "error" else "")
    return out


def _check_expectations(rows_by_name, cat):
    for name, (_, expect) in cat.items():
        r = rows_by_name[name]
        if expect == "":  # read: labelled, or a photo where no face was found
            assert r["error"] is None and (r["label"] in EMOTIONS or r["face_source"] == "no-face"), (name, r["error"])
        elif expect:
            assert r["error"] and r["error"].startswith(expect), (name, r["error"])


def test_tta_labels_with_the_mean_over_ten_views(tmp_path):
    """--tta: each face's probabilities are the mean over inference.tta_views, not the single view."""
    from fer_ray import bundle, inference

    paths = []
    for i in range(3):
        p = tmp_path / f"f{i}.png"
        p.write_bytes(image_bytes(face_like(i)))
        paths.append(str(p))
    b = bundle.load()
    stages = [labeler_mod.Labeler(bundle.default_path(), b.model_id, "r", label.LabelConfig(faces="crop", tta=tta))
              for tta in (False, True)]
    plain, tta = (stage(_batch(paths)) for stage in stages)
    px = np.stack([face_like(i) for i in range(3)])
    want = inference.predict_probs(b.model, b.inputs(px), tta=True)
    got = np.stack([tta.column(c).to_numpy() for c in PROB_COLUMNS], 1)
    single = np.stack([plain.column(c).to_numpy() for c in PROB_COLUMNS], 1)
    assert np.allclose(got, want, atol=1e-5) and not np.allclose(got, single, atol=1e-4)


def test_a_frozen_model_labels_like_the_eager_one(labeler, tmp_path):
    import torch

    paths = []
    for i in range(10):
        paths.append(str(tmp_path / f"f{i}.jpg"))
        open(paths[-1], "wb").write(image_bytes(face_like(i), "JPEG"))
    frozen = labeler_mod.Labeler(labeler.rec.bundle.path, labeler.model_id, "test-run", freeze=True)
    assert isinstance(frozen.rec.model, torch.jit.ScriptModule)
    assert not isinstance(labeler.rec.model, torch.jit.ScriptModule)
    want, got = labeler(_batch(paths)), frozen(_batch(paths))
    for col in PROB_COLUMNS:
        assert np.allclose(got.column(col).to_numpy(), want.column(col).to_numpy(), atol=1e-5), col


def test_every_bad_input_gets_a_row_in_process(labeler, tmp_path):
    cat = _catalogue()
    paths = {}
    for name, (data, _) in cat.items():
        p = tmp_path / name.replace("/", "_")
        p.write_bytes(data)
        paths[name] = str(p)
    extra = [str(tmp_path / "missing.jpg"), str(tmp_path)]  # gone since listing; a folder
    t = labeler(_batch(list(paths.values()) + extra))
    assert t.schema.equals(LABEL_SCHEMA)
    rows = {r["image_path"]: r for r in t.to_pylist()}
    assert t.num_rows == len(rows) == len(paths) + 2  # exactly one row each, in crop mode
    _check_expectations({name: rows[p] for name, p in paths.items()}, cat)
    assert rows[extra[0]]["error"] == "not found"
    assert rows[extra[1]]["error"]
    _check_rows(t)


def test_too_large_objects_are_not_fetched_and_big_batches_are_split(labeler, tmp_path, monkeypatch):
    paths = []
    for i in range(6):
        p = tmp_path / f"f{i}.png"
        p.write_bytes(image_bytes(face_like(i)))
        paths.append(str(p))
    sizes = [os.path.getsize(p) for p in paths]
    sizes[2] = labeler_mod.MAX_OBJECT_BYTES + 1  # listed as too large: not even fetched
    monkeypatch.setattr(labeler_mod, "FETCH_BYTES", 2 * max(sizes[:2]))  # -> several fetches per batch
    assert len(labeler_mod._byte_groups([0, 1, 3, 4, 5], sizes)) >= 2
    rows = {r["image_path"]: r for r in labeler(_batch(paths, sizes=sizes)).to_pylist()}
    assert len(rows) == 6 and rows[paths[2]]["error"].startswith("file too large")
    assert all(rows[p]["error"] is None and rows[p]["label"] in EMOTIONS for k, p in enumerate(paths) if k != 2)


def test_s3_fetch_errors_are_rows(labeler, bucket):
    _put(f"{bucket}/x", {"good.png": image_bytes(face_like(2))})
    uris = [f"{bucket}/x/good.png", f"{bucket}/x/gone.png", "s3://no-such-bucket-xyz/a.png"]
    rows = {r["image_path"]: r for r in labeler(_batch(uris, sizes=[1, 1, 1])).to_pylist()}
    assert rows[uris[0]]["error"] is None and rows[uris[0]]["label"] in EMOTIONS
    assert rows[uris[1]]["error"] == "not found" and rows[uris[2]]["error"] == "not found"


def test_detect_mode_rows_per_face(tmp_path):
    """--faces detect: one row per face found, with its box; an image with no face: one row saying so."""
    from fer_ray import bundle, faces

    crops = [real_face(v, 96) for v in FACE_VARIANTS]
    found = [c for c in crops if len(faces.detector.detect(c)) == 1][:3]  # crops the detector sees alone
    assert len(found) == 3
    canvas = Image.new("L", (400, 160), 128)
    for i, c in enumerate(found):
        canvas.paste(c, (20 + 130 * i, 30))
    group, blank = tmp_path / "group.png", tmp_path / "blank.png"
    canvas.save(group)
    blank.write_bytes(image_bytes(np.full((200, 300), 128, np.uint8)))
    meta = bundle.load().meta
    lab = labeler_mod.Labeler(bundle.default_path(), meta["model_id"], "r", label.LabelConfig(faces="detect"))
    rows = lab(_batch([str(group), str(blank)])).to_pylist()
    g = [r for r in rows if r["image_path"] == str(group)]
    boxes = [f.box for f in faces.faces(Image.open(group), "detect")]
    assert len(g) == len(boxes) >= 2
    assert [r["face_index"] for r in g] == list(range(len(g)))
    assert [(r["box_x"], r["box_y"], r["box_w"], r["box_h"]) for r in g] == [tuple(b) for b in boxes]
    assert all(r["error"] is None and r["label"] in EMOTIONS and r["face_source"] == "detected" for r in g)
    (b,) = [r for r in rows if r["image_path"] == str(blank)]
    assert b["error"] is None and b["box_w"] is None and b["label"] is None and b["confidence"] is None
    assert b["face_source"] == "no-face"
    assert (b["image_width"], b["image_height"]) == (300, 200)


def test_auto_mode_never_drops_an_image(tmp_path):
    """--faces auto (the default): a FER-style crop as it is, a photo's faces aligned, a crop without
    a face found -> the whole crop, a photo without one (or with a face too small to find) -> one
    no-face row without a label: never a guess on a whole photo."""
    from fer_ray import bundle

    crop, photo, blank, tiny = (tmp_path / n for n in ("crop.png", "photo.png", "blank.png", "tiny.png"))
    real_face("plain", 48).save(crop)
    canvas = Image.new("L", (640, 480), 150)
    canvas.paste(real_face("plain", 150), (60, 90))
    canvas.paste(real_face("mirror", 160), (380, 200))
    canvas.save(photo)
    Image.new("L", (200, 180), 128).save(blank)
    small = Image.new("L", (1200, 900), 150)
    small.paste(real_face("plain", 12), (500, 400))  # a face of 12 px
    small.save(tiny)
    meta = bundle.load().meta
    lab = labeler_mod.Labeler(bundle.default_path(), meta["model_id"], "r")
    uris = [str(crop), str(photo), str(blank), str(tiny)]
    rows = lab(_batch(uris)).to_pylist()
    by = {u: [r for r in rows if r["image_path"] == u] for u in uris}
    assert [r["face_source"] for r in by[str(crop)]] == ["as-framed"]
    assert [r["face_source"] for r in by[str(photo)]] == ["detected", "detected"]
    assert [r["face_source"] for r in by[str(blank)]] == ["whole-image"]
    assert [(r["face_source"], r["label"], r["image_width"]) for r in by[str(tiny)]] == [("no-face", None, 1200)]
    assert all(r["error"] is None for r in rows)
    assert all(r["label"] in EMOTIONS for u in uris[:3] for r in by[u])


# ------------------------------------------------------------------------- CLI errors (no Ray)


def test_cli_errors_are_one_line(capsys, bucket, tmp_path):
    assert cli.main(["label", str(tmp_path), str(tmp_path / "o"), "--batch-size", "0"]) == 2
    assert cli.main(["label", str(tmp_path), str(tmp_path / "o"), "--faces", "nope"]) == 2
    assert cli.main(["label", str(tmp_path), str(tmp_path / "o"), "--run-id", "a/b"]) == 2
    assert cli.main(["label", str(tmp_path / "nope"), str(tmp_path / "o")]) == 1
    assert cli.main(["label", "s3://no-such-bucket-here/x", str(tmp_path / "o")]) == 1
    assert cli.main(["label", f"{bucket}/empty", str(tmp_path / "o"), "--model", str(tmp_path)]) == 1
    assert cli.main(["label", str(tmp_path), str(tmp_path / "o"), "--gpu", "--precision", "int8"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 7 and all(line.startswith("error: ") for line in err)


# ------------------------------------------------------------------------- with Ray + S3


def test_label_s3_to_s3_every_row(ray_local, bucket, capsys):
    src, dest = f"{bucket}/photos", f"{bucket}/labels"
    files = _images(0, 200)
    cat = _catalogue()
    files.update({k: v for k, (v, _) in cat.items()})
    files["notes/readme.txt"] = b"not an image: filtered out by extension"
    _put(src, files)
    assert cli.main(["label", src, dest, "--batch-size", "64", "--run-id", "first", "--no-progress", "--ray"]) == 0
    out = capsys.readouterr().out
    listing = storage.list_objects(src)
    assert len(listing) == 200 + len(cat)
    assert "run first" in out and f"{len(listing)} labeled in this run" in out and "errors" in out
    assert "left out   1 (neither images nor videos, or unreadable folders): .txt 1" in out
    (marker,) = runs.committed_runs(dest)
    t = _read(dest)
    _once(t, listing)
    _check_rows(t, marker)
    assert marker["objects"] == marker["objects_listed"] == len(listing)
    assert marker["not_images"] == {".txt": 1}  # said, not silently dropped
    assert marker["precision"] == "int8"  # the shipped CPU model is calibrated: its actors run int8
    assert marker["errors"]["empty file"] >= 1 and marker["errors"]["cannot decode image: UnidentifiedImageError"] >= 1
    assert set(t.column("run_id").to_pylist()) == {"first"}
    by = {r["image_path"]: r for r in t.to_pylist()}
    _check_expectations({name: by[f"{src}/{name}"] for name in cat}, cat)
    o = listing[0]
    assert (by[o.uri]["object_etag"], by[o.uri]["object_size"]) == (o.etag, o.size)
    assert not _s3fs().exists(f"{dest.split('://')[1]}/_staging/first")
    assert cli.main(["label", src, dest, "--run-id", "first"]) == 1  # run ids are not reused
    assert "already committed" in capsys.readouterr().err


def test_incremental_labels_only_new_and_changed(ray_local, bucket):
    src, dest = f"{bucket}/in", f"{bucket}/out"
    _put(src, _images(0, 60))
    m1 = label.run(src, dest, incremental=True, workers=1, progress=False)  # 1 actor: quicker start
    assert m1["objects"] == 60
    _put(src, _images(60, 25))
    _put(src, {"img00001.jpg": image_bytes(face_like(999), "JPEG")})  # replaced content: new ETag
    m2 = label.run(src, dest, incremental=True, workers=1, progress=False)
    assert (m2["objects_listed"], m2["objects_skipped"], m2["objects"]) == (85, 59, 26)
    m3 = label.run(src, dest, incremental=True, progress=False)  # nothing new: an empty committed run
    assert m3["objects"] == 0 and m3["files"] == []
    t = _read(dest)
    keys = list(zip(t.column("image_path").to_pylist(), t.column("object_etag").to_pylist()))
    assert len(keys) == len(set(keys)) == 86  # each (object, version) once
    listing = storage.list_objects(src)
    assert {(o.uri, o.etag) for o in listing} <= set(keys)
    assert [m["run_id"] for m in runs.committed_runs(dest)] == [m1["run_id"], m2["run_id"], m3["run_id"]]


def test_small_runs_label_in_this_process_with_the_rows_ray_gives(ray_local, bucket):
    src = f"{bucket}/in"
    files = _images(0, 40)
    files.update({k: v for k, (v, _) in _catalogue().items()})
    _put(src, files)
    here = label.run(src, f"{bucket}/here", progress=False)  # small: no actor pool
    pool = label.run(src, f"{bucket}/pool", ray=True, workers=1, progress=False)
    assert (here["ray"], pool["ray"]) == (False, True)
    a, b = _read(f"{bucket}/here"), _read(f"{bucket}/pool")
    _check_rows(a, here)
    assert here["objects"] == pool["objects"] == len(storage.list_objects(src))
    key = lambda r: (r["image_path"], r["face_index"])  # noqa: E731
    rows_a, rows_b = sorted(a.to_pylist(), key=key), sorted(b.to_pylist(), key=key)
    assert [key(r) for r in rows_a] == [key(r) for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        assert (ra["label"], ra["error"], ra["face_source"]) == (rb["label"], rb["error"], rb["face_source"])
        assert all(abs((ra[c] or 0) - (rb[c] or 0)) < 1e-3 for c in PROB_COLUMNS)


def test_crash_then_rerun_labels_each_object_exactly_once(ray_local, bucket, monkeypatch):
    src, dest = f"{bucket}/in", f"{bucket}/out"
    _put(src, _images(0, 120))
    monkeypatch.setattr(runs, "ROWS_PER_FILE", 40)
    write = runs.StagingWriter.write

    def write_then_crash(writer, table):
        write(writer, table)
        if len(writer.files) >= 2:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(runs.StagingWriter, "write", write_then_crash)
    with pytest.raises(label.FerRayError, match="RuntimeError: simulated crash; nothing committed"):
        label.run(src, dest, batch_size=20, workers=1, progress=False)
    assert runs.committed_runs(dest) == [] and runs.committed_files(dest) == []
    monkeypatch.setattr(runs.StagingWriter, "write", write)
    m = label.run(src, dest, batch_size=20, workers=1, progress=False)
    assert m["resumed_objects"] >= 40 and m["objects"] == 120
    t = _read(dest)
    _once(t, storage.list_objects(src))
    _check_rows(t, m)
    assert len(m["files"]) >= 3


class DyingLabeler(labeler_mod.Labeler):
    """The real stage, except that the first actor to rename `flag` away kills its own process
    in the middle of a batch."""

    flag = ""

    def __call__(self, batch):
        try:
            os.rename(self.flag, f"{self.flag}.claimed")
        except OSError:
            return super().__call__(batch)
        os._exit(1)


def test_actor_killed_mid_run_loses_and_duplicates_nothing(ray_local, bucket, tmp_path, monkeypatch):
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this file
    src, dest = f"{bucket}/in", f"{bucket}/out"
    _put(src, _images(0, 96))
    flag = tmp_path / "die"
    flag.write_text("once")
    monkeypatch.setattr(DyingLabeler, "flag", str(flag))
    monkeypatch.setattr(label, "Labeler", DyingLabeler)
    m = label.run(src, dest, batch_size=16, workers=1, progress=False)  # the one actor dies once
    assert not flag.exists() and (tmp_path / "die.claimed").exists()  # an actor did die
    t = _read(dest)
    _once(t, storage.list_objects(src))
    _check_rows(t, m)


def test_manifest_sources(tmp_path, bucket):
    (tmp_path / "a").mkdir()
    for n in ("x.jpg", "y.png"):
        (tmp_path / "a" / n).write_bytes(image_bytes(face_like(1)))
    (tmp_path / "m.txt").write_text(f"# crops\na/x.jpg\n\n{tmp_path}/a/y.png\na/gone.jpg\na/x.jpg\n")
    got = sources.list_source(str(tmp_path / "m.txt"))
    assert [os.path.basename(o.uri) for o in got] == ["gone.jpg", "x.jpg", "y.png"]
    assert got[0].size == -1 and got[1].size > 0 and got[1].etag
    _put(f"{bucket}/p", {"k1.jpg": b"1", "sub/k2.jpg": b"22"})
    pq.write_table(pa.table({"uri": [f"{bucket}/p/k1.jpg", f"{bucket}/p/sub/k2.jpg"]}), tmp_path / "m.parquet")
    got = sources.list_source(str(tmp_path / "m.parquet"))
    assert [(o.uri, o.size) for o in got] == [(f"{bucket}/p/k1.jpg", 1), (f"{bucket}/p/sub/k2.jpg", 2)]
    assert all(o.etag for o in got)
    many = {f"m{i:02d}.jpg": b"x" * i for i in range(1, 21)}  # > 16 in a folder: one listing, not HEADs
    _put(f"{bucket}/many", many)
    (tmp_path / "many.txt").write_text("".join(f"{bucket}/many/{k}\n" for k in many) + f"{bucket}/many/zz.jpg\n")
    got = sources.list_source(str(tmp_path / "many.txt"))
    assert [o.size for o in got] == list(range(1, 21)) + [-1]
    with pytest.raises(label.FerRayError, match="no such source"):
        sources.list_source(str(tmp_path / "nope.txt"))


def test_worker_plan_never_holds_every_cpu():
    class FakeRay:
        def __init__(self, res, nodes=None):
            self.res = res
            self._nodes = nodes or [res]

        def cluster_resources(self):
            return self.res

        def nodes(self):
            return [{"Alive": True, "Resources": r} for r in self._nodes]

    n, cpus, threads, gpus = label.plan_workers(FakeRay({"CPU": 2.0}), None, False)
    assert (n, threads, gpus) == (2, 1, 0.0) and n * cpus < 2
    n, cpus, threads, gpus = label.plan_workers(FakeRay({"CPU": 16.0, "GPU": 1.0}), None, True)
    assert n > 1 and n * gpus <= 1 and n * cpus < 16 and threads == 1
    with pytest.raises(label.FerRayError, match="no GPU"):
        label.plan_workers(FakeRay({"CPU": 2.0}), None, True)
    # one actor on a cluster of two 1-CPU nodes must still fit on one node
    n, cpus, threads, gpus = label.plan_workers(FakeRay({"CPU": 2.0}, [{"CPU": 1.0}, {"CPU": 1.0}]), 1, False)
    assert n == 1 and cpus <= 1.0


def test_a_local_ray_runs_its_workers_at_the_runs_own_priority():
    """Ray's default (nice 15) left a run's actors ~5 % of the cores beside any busy process."""
    import subprocess
    import sys

    code = ("import os, ray; from fer_ray import label; label._ray_init(); "
            "print('nice', ray.get(ray.remote(lambda: os.nice(0)).remote()))")
    out = subprocess.run([sys.executable, "-c", code], env=env_without_cluster(), capture_output=True, text=True,
                         timeout=600)
    assert f"nice {os.nice(0)}" in out.stdout.splitlines(), out.stderr[-2000:]


def test_forward_passes_side_by_side_in_this_process_keep_every_row_in_order(tmp_path):
    _save(tmp_path / "in", _images(0, 48))
    out = {}
    for k in (1, 2):  # blocks of 4: 12 of them, several in the model at once
        marker = label.run(str(tmp_path / "in"), str(tmp_path / f"out{k}"), progress=False, faces="crop",
                           batch_here=4, model_threads_here=k)
        assert marker["ray"] is False and marker["objects"] == 48
        assert (marker["config"]["batch_here"], marker["config"]["model_threads_here"]) == (4, k)
        out[k] = _read(str(tmp_path / f"out{k}")).to_pylist()
    assert [r["image_path"] for r in out[2]] == [r["image_path"] for r in out[1]]
    assert len({r["image_path"] for r in out[2]}) == 48
    for a, b in zip(out[1], out[2]):
        assert a["label"] == b["label"] and all(abs(a[c] - b[c]) < 1e-5 for c in PROB_COLUMNS)


def test_blocks_are_the_batch_size_except_in_small_runs():
    assert label.block_size(200_000, 1024, 256, 16) == 1024
    assert label.block_size(5_000, 1024, 256, 16) == 313  # 16 blocks: a short head and tail
    assert label.block_size(1_000, 1024, 256, 16) == 256  # never below the floor ...
    assert label.block_size(1_000, 100, 256, 16) == 100  # ... nor above the batch size asked for
    sizes = [len(b) for b in label.blocks([storage.ObjectInfo(f"/x/{i}.jpg", 1, "e") for i in range(700)], 313)]
    assert sizes == [313, 313, 74]
    # unless --batch-size says, a block is about the same work: many crops, or fewer photos
    crops = [storage.ObjectInfo(f"/x/{i}.jpg", 2_000, "e") for i in range(10)]
    photos = [storage.ObjectInfo(f"/x/{i}.jpg", 3_000_000, "e") for i in range(10)]
    def job(**settings):
        return label.Job("/x", "/y", "m", "id", "auto", label.LabelConfig(**settings))

    assert job(faces="crop").block_objects(photos) == 4096
    assert job(faces="auto").block_objects(crops) == 3125
    assert job(faces="auto").block_objects(photos) == job(faces="detect").block_objects(crops) == 1024
    assert job(faces="auto", batch_size=100).block_objects(crops) == 100
    assert job(faces="crop", tta=True).block_objects(crops) == 1024  # ten views each
    assert job(faces="crop").block_objects([]) == 1024


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_second_run_into_the_same_dest_exits_in_one_line(ray_local, bucket, tmp_path, capsys, where):
    """While a run holds DEST's lease another exits with one clear line and touches nothing; once
    the lease is gone the next run labels everything exactly once."""
    src = f"{bucket}/in"
    _put(src, _images(0, 6))
    dest = str(tmp_path / "out") if where == "local" else f"{bucket}/out"
    holder = runs.Lease(runs.Dest(dest), ttl=60, run="scheduled-tick").acquire()
    assert cli.main(["label", src, dest, "--incremental", "--no-progress", "--faces", "crop"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is being labeled by another run (scheduled-tick" in err[0]
    assert runs.committed_runs(dest) == []
    holder.release()
    assert cli.main(["label", src, dest, "--incremental", "--no-progress", "--faces", "crop"]) == 0
    _once(_read(dest), storage.list_objects(src))
    assert runs.Lease(runs.Dest(dest)).acquire().release() is None  # released at the end of the run


# ------------------------------------------------------------------------- killed with SIGKILL

# Run in a child process: fer-ray label, which stops itself (SIGSTOP) at one point of the run so
# that the test can SIGKILL it exactly there. No timing: the test waits for the stop itself.
STOPS_AT = r"""
import os, signal, sys
import s3fs
from fer_ray import cli, runs

point, argv = sys.argv[1], sys.argv[2:]
runs.ROWS_PER_FILE = 20  # several part files
stopped = []

def stop():
    if not stopped:
        stopped.append(1)
        os.kill(os.getpid(), signal.SIGSTOP)

if point == "part-open":  # a part file written to but not closed
    write = runs.StagingWriter.write
    def write_then_stop(self, table):
        write(self, table)
        if self.writer is not None:
            stop()
    runs.StagingWriter.write = write_then_stop
else:  # "commit": the first part file moved (local) or copied (S3) into run_id=, the rest not
    replace, copy = os.replace, s3fs.S3FileSystem.copy
    def replace_then_stop(src, dst, *a, **k):
        replace(src, dst, *a, **k)
        if "run_id=" in str(dst):
            stop()
    def copy_then_stop(self, src, dst, *a, **k):
        copy(self, src, dst, *a, **k)
        if "run_id=" in str(dst):
            stop()
    os.replace, s3fs.S3FileSystem.copy = replace_then_stop, copy_then_stop
sys.exit(cli.main(["label", *argv]))
"""


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.parametrize("point", ["part-open", "commit"])
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_run_killed_mid_write_or_mid_commit_resumes_exactly_once(bucket, tmp_path, where, point):
    import signal
    import subprocess
    import sys

    src = f"{bucket}/in"
    _put(src, _images(0, 70))
    dest = str(tmp_path / "out") if where == "local" else f"{bucket}/out"
    argv = [src, dest, "--faces", "crop", "--no-ray", "--batch-size", "20", "--no-progress"]
    child = subprocess.Popen([sys.executable, "-c", STOPS_AT, point, *argv], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        wait_for(lambda: child.poll() is not None or _stopped(child.pid), f"the run to reach {point}")
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert runs.committed_runs(dest) == []  # killed before its marker: no run for readers

    # the killed run's lease is still there, unexpired: its holder is gone from this host, so the
    # next run takes it over at once
    m = label.run(src, dest, faces="crop", ray=False, batch_size=20, progress=False)
    t = _read(dest)
    _once(t, storage.list_objects(src))
    _check_rows(t, m)
    assert [r["run_id"] for r in runs.committed_runs(dest)] == [m["run_id"]]
    if point == "commit" and where == "s3":  # copied, not moved: the staged parts are resumed
        assert m["resumed_objects"] > 0


# ------------------------------------------------------------------------- S3 that fails


@pytest.mark.parametrize("rate", [0.05, 0.2])
def test_labeling_survives_s3_faults(faulty_s3, bucket, rate):
    from s3faults import KINDS

    src, dest = f"{bucket}/in", f"{bucket}/out"
    _put(src, _images(0, 150))
    faulty_s3.set(rate)  # 503 SlowDown, 500, reset connections, slow answers
    m = label.run(src, dest, faces="crop", batch_size=25, ray=False, progress=False)
    faulty_s3.set(0.0)
    injected = sum(faulty_s3.counts[k] for k in KINDS)
    assert injected >= 0.5 * rate * 150, faulty_s3.counts
    t = _read(dest)
    _once(t, storage.list_objects(src))
    _check_rows(t, m)
    assert m["error_rows"] == 0  # every fault was retried away, none became an error row


def test_an_s3_outage_mid_run_fails_in_one_line_and_the_next_run_resumes(faulty_s3, bucket, monkeypatch, capsys):
    src, dest = f"{bucket}/in", f"{bucket}/out"
    _put(src, _images(0, 100))
    monkeypatch.setattr(runs, "ROWS_PER_FILE", 20)
    monkeypatch.setattr(storage, "RETRIES", 2)  # give up quickly
    faulty_s3.outage_after = _part_completed  # a part file completed: from then on every request gets 503 SlowDown
    argv = [src, dest, "--faces", "crop", "--batch-size", "20", "--no-ray", "--no-progress"]
    assert cli.main(["label", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: run ") and "SlowDown" in err and "the next run resumes" in err, err
    faulty_s3.set(0.0)  # the store is back; the failed run could not release its lease: it expires
    assert faulty_s3.counts["503"] > 0 and runs.committed_runs(dest) == []
    expire_lease(dest)
    m = label.run(src, dest, faces="crop", batch_size=20, ray=False, progress=False)
    assert m["resumed_objects"] >= 20
    t = _read(dest)
    _once(t, storage.list_objects(src))
    _check_rows(t, m)


def _part_completed(method, path, query):
    return "/_staging/" in path and "/part-" in path and (
        (method == "PUT" and "uploadId" not in query) or (method == "POST" and "uploadId" in query))


def test_dest_bucket_deleted_mid_run_fails_in_one_line_and_the_next_run_labels_all(faulty_s3, bucket, s3_server,
                                                                                 monkeypatch, capsys):
    import boto3

    src = f"{bucket}/in"
    _put(src, _images(0, 60))
    direct = boto3.resource("s3", endpoint_url=s3_server)  # not through the proxy
    out = direct.Bucket(f"out-{bucket.split('-', 1)[1]}")
    out.create()
    dest = f"s3://{out.name}/labels"
    monkeypatch.setattr(runs, "ROWS_PER_FILE", 20)
    monkeypatch.setattr(storage, "RETRIES", 2)

    def delete_dest_bucket():
        out.objects.all().delete()
        out.delete()

    faulty_s3.then = (_part_completed, delete_dest_bucket)
    argv = [src, dest, "--faces", "crop", "--batch-size", "20", "--no-ray", "--no-progress"]
    assert cli.main(["label", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: run ") and "bucket does not exist" in err and "nothing committed" in err, err
    out.create()  # the bucket is back, empty: the next run labels everything, once
    m = label.run(src, dest, faces="crop", batch_size=20, ray=False, progress=False)
    t = _read(dest)
    _once(t, storage.list_objects(src))
    _check_rows(t, m)


def test_dest_folder_gone_mid_run_fails_in_one_line_and_the_next_run_resumes(bucket, tmp_path, monkeypatch, capsys):
    import shutil

    src, dest = f"{bucket}/in", tmp_path / "out"
    _put(src, _images(0, 60))
    monkeypatch.setattr(runs, "ROWS_PER_FILE", 20)
    write = runs.StagingWriter.write

    def write_then_lose_dest(writer, table):  # a disk unmounted, a folder replaced by a file
        write(writer, table)
        if writer.files and not (tmp_path / "away").exists():
            shutil.move(str(dest), str(tmp_path / "away"))
            dest.write_text("not a folder")

    monkeypatch.setattr(runs.StagingWriter, "write", write_then_lose_dest)
    argv = [src, str(dest), "--faces", "crop", "--batch-size", "20", "--no-ray", "--no-progress"]
    assert cli.main(["label", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: run ") and "nothing committed" in err, err
    monkeypatch.setattr(runs.StagingWriter, "write", write)
    dest.unlink()
    shutil.move(str(tmp_path / "away"), str(dest))  # the folder is back, with what was staged
    expire_lease(str(dest))  # and with the lease the run could not release
    m = label.run(src, str(dest), faces="crop", batch_size=20, ray=False, progress=False)
    assert m["resumed_objects"] >= 20
    t = _read(str(dest))
    _once(t, storage.list_objects(src))
    _check_rows(t, m)


def test_no_credentials_for_dest_is_one_line_and_touches_nothing(bucket, tmp_path, monkeypatch, capsys):
    for name, data in _images(0, 3).items():
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / os.path.basename(name)).write_bytes(data)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert cli.main(["label", str(tmp_path / "in"), f"{bucket}/out", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: cannot write to {bucket}/out: ") and "Credentials" in err, err


def _moto_auth(endpoint: str, after: str) -> None:
    """moto checks credentials (IAM users, keys and policies) from now on ('0') or never ('inf')."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=after.encode(),
                                                  headers={"Content-Type": "text/plain"}, method="POST")).read()


def test_credentials_revoked_mid_run_fail_in_one_line_and_the_next_run_resumes(bucket, s3_server, tmp_path,
                                                                              monkeypatch, capsys):
    import json

    import boto3

    src, dest = tmp_path / "in", f"{bucket}/out"
    src.mkdir()
    for name, data in _images(0, 60).items():
        (src / os.path.basename(name)).write_bytes(data)
    iam = boto3.client("iam", endpoint_url=s3_server, region_name="us-east-1")
    allow = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
    keys = {}
    for user in ("labeler", "admin"):
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=allow)
        keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
    admin = boto3.client("iam", endpoint_url=s3_server, region_name="us-east-1",
                         aws_access_key_id=keys["admin"]["AccessKeyId"],
                         aws_secret_access_key=keys["admin"]["SecretAccessKey"])

    def use(key):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])

    use(keys["labeler"])
    monkeypatch.setattr(runs, "ROWS_PER_FILE", 20)
    monkeypatch.setattr(storage, "RETRIES", 2)
    write = runs.StagingWriter.write

    def write_then_revoke(writer, table):
        write(writer, table)
        if writer.files and not keys.get("revoked"):
            admin.delete_access_key(UserName="labeler", AccessKeyId=keys["labeler"]["AccessKeyId"])
            keys["revoked"] = True

    _moto_auth(s3_server, "0")
    try:
        monkeypatch.setattr(runs.StagingWriter, "write", write_then_revoke)
        argv = [str(src), dest, "--faces", "crop", "--batch-size", "20", "--no-ray", "--no-progress"]
        assert cli.main(["label", *argv]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: run ") and "nothing committed" in err, err
        assert keys["labeler"]["SecretAccessKey"] not in err and "access key id" in err.lower(), err
        monkeypatch.setattr(runs.StagingWriter, "write", write)
        use(admin.create_access_key(UserName="labeler")["AccessKey"])  # the key is rotated
        assert runs.committed_runs(dest) == []  # nothing half-committed
        expire_lease(dest)  # the stopped run could not release its lease
        m = label.run(str(src), dest, faces="crop", batch_size=20, ray=False, progress=False)
    finally:
        _moto_auth(s3_server, "inf")
    assert m["resumed_objects"] >= 20
    t = _read(dest)
    _once(t, storage.list_objects(str(src)))
    _check_rows(t, m)


@pytest.mark.parametrize("limit", [300, 6000])
def test_a_full_disk_is_one_line_and_the_next_run_leaves_nothing_behind(tmp_path, limit):
    """Writes fail as on a full disk (a file-size limit on the process: EFBIG where a full disk gives
    ENOSPC), at the staging record (300 bytes: the lease fits, the record does not) or at the
    first Parquet part (6000 bytes). One line, exit 1; the next run labels everything and leaves no
    temporary file anywhere under DEST."""
    import subprocess

    src, dest = tmp_path / "in", tmp_path / "out"
    _save(src, _images(0, 12))
    cmd = [*fer_ray_command(), "label", str(src), str(dest), "--faces", "crop", "--no-progress"]
    limited = subprocess.run(["prlimit", f"--fsize={limit}", "--", *cmd], capture_output=True, text=True, timeout=300)
    assert limited.returncode == 1, limited.stderr[-2000:]
    err = [line for line in limited.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "File too large" in err[0] and "Traceback" not in limited.stderr, limited.stderr[-2000:]
    assert not runs.committed_runs(str(dest))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    (m,) = runs.committed_runs(str(dest))
    assert m["objects"] == 12 and m["rows"] == 12
    left = [os.path.join(r, n) for r, _, names in os.walk(dest) for n in names if ".tmp-" in n]
    assert left == []
