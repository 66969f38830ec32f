"""`fer-ray predict`: one line per image, errors per file, --show, default bundle, bad arguments."""

import json
import os

import numpy as np
import pytest
import torch

from fer_ray import bundle, cli, models, preprocess
from fer_ray.emotions import EMOTIONS
from conftest import face_like, image_bytes, probabilities


@pytest.fixture
def tiny_bundle(tmp_path):
    torch.manual_seed(0)
    bdir = str(tmp_path / "bundle")
    bundle.save(bdir, models.build("fastnet", widths=(8, 8, 16, 16)), "fastnet", arch_args={"widths": [8, 8, 16, 16]})
    return bdir


@pytest.fixture
def images(tmp_path):
    """A 48x48 PNG, a larger RGB JPEG, a 16-bit PNG, and a corrupt file."""
    d = tmp_path / "img"
    d.mkdir()
    paths = {}
    paths["png"] = d / "a.png"
    paths["png"].write_bytes(image_bytes(face_like(1)))
    big = np.kron(face_like(2), np.ones((3, 3), np.uint8))  # 144x144
    paths["jpg"] = d / "b.jpg"
    paths["jpg"].write_bytes(image_bytes(big, "JPEG", mode="RGB"))
    from PIL import Image
    import io

    buf = io.BytesIO()
    Image.fromarray(face_like(3).astype(np.uint16) * 257).save(buf, format="PNG")
    paths["png16"] = d / "c16.png"
    paths["png16"].write_bytes(buf.getvalue())
    paths["bad"] = d / "broken.jpg"
    paths["bad"].write_bytes(image_bytes(face_like(4), "JPEG")[:40])  # truncated header
    return {k: str(v) for k, v in paths.items()}


def _expected(bdir, path):
    b = bundle.load(bdir)
    with open(path, "rb") as f:
        px = preprocess.to_gray48(preprocess.decode(f.read()))
    return probabilities(b, px[None]).numpy()[0]


def test_predict_lines_errors_and_exit_code(tiny_bundle, images, capsys):
    argv = ["predict", images["png"], images["bad"], images["jpg"], images["png16"], "--model", tiny_bundle]
    assert cli.main(argv) == 1  # one file failed
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == [images["png"], images["jpg"], images["png16"]]
    for line, key in zip(lines, ("png", "jpg", "png16")):
        path, emotion, conf, top = line.split("\t")
        probs = _expected(tiny_bundle, images[key])
        assert emotion == EMOTIONS[int(probs.argmax())]
        assert float(conf) == pytest.approx(float(probs.max()), abs=1e-3)
        ranked = [t.rsplit(" ", 1)[0] for t in top.split(", ")]
        assert ranked == [EMOTIONS[i] for i in np.argsort(-probs, kind="stable")[:3]]
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {images['bad']}:") and "decode" in err[0]


def test_predict_all_good_exit_0_json_top_and_directory(tiny_bundle, images, capsys):
    os.remove(images["bad"])
    folder = os.path.dirname(images["png"])
    assert cli.main(["predict", folder, "--model", tiny_bundle, "--json", "--top", "7"]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.strip().splitlines()]
    assert sorted(os.path.basename(r["image"]) for r in rows) == ["a.png", "b.jpg", "c16.png"]
    for r in rows:
        assert len(r["top"]) == 7 and sum(p for _, p in r["top"]) == pytest.approx(1, abs=1e-3)
        assert r["emotion"] == r["top"][0][0] and r["box"][:2] == [0, 0]


def test_predict_missing_file_is_a_per_file_error(tiny_bundle, images, tmp_path, capsys):
    missing = str(tmp_path / "nope.png")
    assert cli.main(["predict", missing, images["png"], "--model", tiny_bundle]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(images["png"])
    assert captured.err.strip() == f"error: {missing}: not found"


def test_predict_show_writes_a_png(tiny_bundle, images, tmp_path, capsys):
    out = str(tmp_path / "show.png")
    assert cli.main(["predict", images["png"], images["jpg"], images["bad"], "--model", tiny_bundle, "--show", out]) == 1
    from PIL import Image

    img = Image.open(out)
    assert img.format == "PNG" and img.height > 300  # two rows of panels
    assert np.asarray(img.convert("L")).std() > 10


def test_predict_default_bundle(images, capsys):
    """Without --model the shipped bundle is used."""
    assert cli.main(["predict", images["png"]]) == 0
    path, emotion, conf, _ = capsys.readouterr().out.strip().split("\t")
    assert path == images["png"] and emotion in EMOTIONS and 0 < float(conf) <= 1


def test_predict_from_s3(tiny_bundle, images, bucket, capsys):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    uri = f"{bucket}/faces/a.png"
    fs.put(images["png"], uri[len("s3://"):])
    assert cli.main(["predict", uri, "--model", tiny_bundle]) == 0
    local = capsys.readouterr().out
    assert cli.main(["predict", images["png"], "--model", tiny_bundle]) == 0
    assert local.split("\t")[1:] == capsys.readouterr().out.split("\t")[1:]


@pytest.mark.parametrize(
    "argv, code, needle",
    [
        (["predict"], 2, "IMAGE"),
        (["predict", "x.png", "--faces", "nose"], 2, "--faces"),
        (["predict", "x.png", "--top", "0"], 2, "--top"),
        (["predict", "x.png", "--show", "out.jpg"], 2, "--show"),
        (["predict", "x.png", "--model", "{missing}"], 1, "not a model bundle"),
    ],
)
def test_predict_cli_errors_are_one_line(tmp_path, capsys, argv, code, needle):
    argv = [a.format(missing=str(tmp_path / "missing")) for a in argv]
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:") and needle in err


def test_an_http_url_is_not_supported_rather_than_not_found(capsys):
    from fer_ray import cli

    assert cli.main(["predict", "http://example.com/face.jpg"]) == 1
    err = capsys.readouterr().err
    assert "http:// is not supported" in err and "not found" not in err and len(err.strip().splitlines()) == 1
