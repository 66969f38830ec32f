"""Ensemble bundles (one model from K bundles), model names, and shipped bundles being read-only."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from conftest import face_like, probabilities
from fer_ray import bundle, cli, data, models, quantize


def _bundle(path, seed, widths=(8, 8, 16, 16)):
    torch.manual_seed(seed)
    model = models.build("fastnet", widths=widths)
    bundle.save(str(path), model, "fastnet", arch_args={"widths": list(widths)})
    return str(path)


@pytest.fixture
def members(tmp_path):
    return [_bundle(tmp_path / "a", 0), _bundle(tmp_path / "b", 1, widths=(8, 16, 16, 32))]


def test_ensemble_is_the_mean_of_its_members(members, tmp_path):
    out = str(tmp_path / "ens")
    assert cli.main(["ensemble", "--output", out, *members]) == 0
    meta = bundle.read_meta(out)
    assert meta["members"] == ["m0", "m1"] and meta["model_id"].startswith("ensemble2-")
    assert [m["model_id"] for m in meta["member_info"]] == [bundle.read_meta(m)["model_id"] for m in members]
    px = np.stack([face_like(i) for i in range(6)])
    ens = bundle.load(out, precision="fp32")
    one = [bundle.load(m, precision="fp32") for m in members]
    want = (probabilities(one[0], px) + probabilities(one[1], px)) / 2
    assert torch.allclose(probabilities(ens, px), want, atol=1e-5)
    assert not torch.allclose(probabilities(one[0], px), probabilities(one[1], px), atol=1e-3)  # members differ


def test_ensemble_refuses_one_member_nesting_and_an_existing_output(members, tmp_path, capsys):
    assert cli.main(["ensemble", "--output", str(tmp_path / "x"), members[0]]) == 1
    out = str(tmp_path / "ens")
    assert cli.main(["ensemble", "--output", out, *members]) == 0
    assert cli.main(["ensemble", "--output", str(tmp_path / "y"), out, members[0]]) == 1
    assert cli.main(["ensemble", "--output", out, *members]) == 2
    err = capsys.readouterr().err
    assert "at least 2" in err and "single model, not an ensemble" in err and "already holds a bundle" in err


@pytest.mark.skipif(not quantize.available(), reason="no x86 quantised engine in this torch")
def test_quantize_an_ensemble_calibrates_every_member(members, tmp_path):
    out = str(tmp_path / "ens")
    bundle.save_ensemble(out, members)
    ddir = str(tmp_path / "data")
    data.write_split(ddir, "Training", np.stack([face_like(i) for i in range(40)]), np.arange(40) % 7)
    assert cli.main(["quantize", "--model", out, "--data", ddir, "--samples", "32"]) == 0
    assert all(os.path.exists(os.path.join(out, m, bundle.INT8_FILE)) for m in ("m0", "m1"))
    b = bundle.load(out)
    assert b.precision == "int8"
    px = np.stack([face_like(100 + i) for i in range(8)])
    fp32 = probabilities(bundle.load(out, precision="fp32"), px)
    assert float((probabilities(b, px) - fp32).abs().max()) < 0.1


def test_models_are_picked_by_name():
    assert bundle.resolve("fast") == bundle.shipped_dir("fast")
    assert bundle.resolve("runs/x/bundle") == "runs/x/bundle"
    assert bundle.load("fast").model_id == bundle.load().model_id
    assert bundle.is_shipped(bundle.shipped_dir("fast")) and not bundle.is_shipped("runs/x/bundle")


def test_shipped_bundles_are_never_written(tmp_path, capsys, monkeypatch):
    ddir = str(tmp_path / "data")
    px = np.stack([face_like(i) for i in range(20)])
    data.write_split(ddir, "PrivateTest", px, np.arange(20) % 7)
    data.write_split(ddir, "Training", px, np.arange(20) % 7)
    before = open(os.path.join(bundle.shipped_dir("fast"), bundle.META_FILE)).read()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["evaluate", "--model", "fast", "--data", ddir]) == 0
    out = capsys.readouterr().out
    assert "shipped bundles are read-only" in out
    assert open(os.path.join(bundle.shipped_dir("fast"), bundle.META_FILE)).read() == before
    assert any(n.startswith("eval-") for n in os.listdir(tmp_path))  # its outputs went to the working dir
    assert cli.main(["quantize", "--model", "fast", "--data", ddir]) == 2
    assert "read-only" in capsys.readouterr().err
    inside = os.path.join(bundle.shipped_dir("fast"), "x")
    assert cli.main(["evaluate", "--model", "fast", "--data", ddir, "--out", inside]) == 2
    assert "read-only" in capsys.readouterr().err and not os.path.exists(inside)
    assert cli.main(["ensemble", "--output", os.path.join(bundle.shipped_dir("accurate"), "e"),
                     bundle.shipped_dir("fast"), bundle.shipped_dir("fast")]) != 0
    assert "read-only" in capsys.readouterr().err
    for write in (lambda: bundle.calibrate(bundle.shipped_dir("fast"), px),
                  lambda: bundle.write_meta(bundle.shipped_dir("fast"), {}),
                  lambda: bundle.save_ensemble(os.path.dirname(bundle.shipped_dir("fast")), [])):
        with pytest.raises(bundle.BundleError, match="read-only"):
            write()
    assert open(os.path.join(bundle.shipped_dir("fast"), bundle.META_FILE)).read() == before


def test_a_result_on_other_data_is_never_overwritten(members, tmp_path, capsys):
    b = members[0]
    for k, n in enumerate((20, 21)):  # two different prepared copies: different checksums
        ddir = str(tmp_path / f"data{k}")
        data.write_split(ddir, "PrivateTest", np.stack([face_like(i) for i in range(n)]), np.arange(n) % 7)
        assert cli.main(["evaluate", "--model", b, "--data", ddir, "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "measured on other data" in out
    # the file says what the terminal said
    written = json.load(open(os.path.join(b, "eval-PrivateTest", "metrics.json")))
    assert any("measured on other data" in n for n in written["notes"])
    recorded = bundle.read_meta(b)["metrics"]["PrivateTest"]
    assert recorded["n"] == 20 and recorded["data_checksum"] == data.checksum(str(tmp_path / "data0"))
