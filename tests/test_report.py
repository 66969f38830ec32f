"""`fer-ray report` on the outputs of the real labeling job (the same session fixture as
test_query.py: two local runs, one S3 -> S3 run)."""

from __future__ import annotations

import base64
import io
import os
import re

import numpy as np
import pytest
from PIL import Image

from fer_ray import cli, query, report, storage
from fer_ray.emotions import EMOTIONS
from test_query import make_outputs

DATA_PNG = re.compile(r'<img[^>]* src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="session")
def outputs(ray_local, s3_server, tmp_path_factory):
    return make_outputs(tmp_path_factory, s3_server)


def _pngs(page: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in DATA_PNG.findall(page)]


def _cell(v) -> str:
    return f'<td class="n">{v:,}</td>'


def test_report_local_two_runs(outputs, tmp_path, capsys):
    html_path = tmp_path / "r" / "report.html"
    rc = cli.main(["report", outputs["local"], "--out", str(html_path), "--thumbs", "2"])
    out, err = capsys.readouterr()
    assert rc == 0 and err == "" and str(html_path) in out
    page = html_path.read_text(encoding="utf-8")
    s = query.summary(outputs["local"])

    # self-contained: no scripts, no external stylesheets or images
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'src="(?!data:image/png;base64,)', page)

    # charts inline and beside the page, as real PNGs
    for name in ("emotions", "confidence", "runs"):
        p = html_path.parent / f"report-{name}.png"
        assert p.is_file() and Image.open(p).format == "PNG"
        assert base64.b64encode(p.read_bytes()).decode() in page
    imgs = _pngs(page)
    assert all(im.format == "PNG" and im.width > 0 for im in imgs)

    # the numbers
    assert f'<div class="v">{s["rows"]:,}</div>' in page and f'<div class="v">{s["images"]:,}</div>' in page
    for e in s["emotions"]:
        assert f'{e["emotion"]}</td>{_cell(e["count"])}<td class="n">{e["share"]:.1%}</td>' in page
    for r in s["errors_by_reason"]:
        assert f'<td>{r["reason"]}</td>{_cell(r["count"])}' in page
        assert all(p in page for p in r["examples"])
    for m in outputs["markers"]:
        assert m["run_id"] in page and m["model_id"] in page
    assert "Runs compared" in page

    # thumbnails: at most 2 high + 2 low per emotion with faces, all from real images
    n_thumbs = page.count("<figure")
    with_faces = [e for e in s["emotions"] if e["count"]]
    assert sum(min(4, e["count"]) for e in with_faces) == n_thumbs
    assert len(imgs) == n_thumbs + 3  # + the three charts
    assert "image not available" not in page


def test_report_s3_and_a_missing_image(outputs, tmp_path):
    first = report.build(outputs["s3"], str(tmp_path / "a.html"), thumbs=1)
    page = open(first["html"], encoding="utf-8").read()
    s = first["summary"]
    assert s["rows"] == len(outputs["s3_df"]) and "image not available" not in page
    assert len(first["pngs"]) == 2  # one run: no runs chart
    n = page.count("<figure")

    # delete the source object behind one thumbnail: it becomes a placeholder, the rest stay
    ex = report.extremes(query.open_labels(outputs["s3"]), 1)
    victim = ex["happy" if "happy" in ex else sorted(ex)[0]]["high"][0]["image_path"]
    fs, path = storage.filesystem(victim)
    fs.rm(path)
    fs.invalidate_cache()
    second = report.build(outputs["s3"], str(tmp_path / "b.html"), thumbs=1)
    page = open(second["html"], encoding="utf-8").read()
    assert page.count("image not available") == 1 and "(not found)" in page
    assert page.count("<figure") == n and len(_pngs(page)) == n - 1 + 2


def test_thumbnail_crops_to_the_box():
    img = np.zeros((60, 100, 3), np.uint8)
    img[10:40, 50:80] = (255, 0, 0)  # the "face": 30x30 red square at x=50, y=10
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    t = Image.open(io.BytesIO(report.thumbnail(buf.getvalue(), (50, 10, 30, 30), size=64))).convert("RGB")
    assert t.size == (64, 64)
    px = np.asarray(t)
    assert (px[..., 0] > 200).all() and (px[..., 1] < 60).all()
    whole = Image.open(io.BytesIO(report.thumbnail(buf.getvalue(), (None, None, None, None), size=64)))
    assert whole.size == (64, 38)


def test_report_bad_arguments(outputs, tmp_path, capsys):
    cases = [
        (["report", outputs["local"], "--out", str(tmp_path / "r.txt")], 2, "should name an .html file"),
        (["report", outputs["local"], "--out", str(tmp_path / "r.html"), "--thumbs", "-1"], 2, "--thumbs"),
        (["report", str(tmp_path / "none"), "--out", str(tmp_path / "r.html")], 1, "no labeling output"),
        (["report", outputs["local"], "--out", str(tmp_path / "r.html"), "--emotion", "joy"], 2, "unknown emotion"),
    ]
    for argv, code, message in cases:
        rc = cli.main(argv)
        out, err = capsys.readouterr()
        assert rc == code and err.count("\n") == 1 and message in err, (argv, err)
    assert not os.path.exists(tmp_path / "r.html")


def test_report_with_a_filter_shows_only_those_rows(outputs, tmp_path):
    res = report.build(outputs["local"], str(tmp_path / "f.html"), thumbs=1, emotion="happy")
    page = open(res["html"], encoding="utf-8").read()
    assert "filters: emotions=happy" in page
    assert res["summary"]["labeled"] == (outputs["local_df"]["label"] == "happy").sum()
    assert all(f'alt="{e} ' not in page for e in EMOTIONS if e != "happy")
