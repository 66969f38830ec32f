"""Int8 inference: calibration, storage in the bundle, precision selection, the `fer-ray quantize` CLI."""

import json
import os

import numpy as np
import pytest
import torch

from fer_ray import bundle, cli, data, models, preprocess, quantize
from conftest import face_like, probabilities

pytestmark = pytest.mark.skipif(not quantize.available(), reason="no x86 quantised engine in this torch")


def _faces(n: int, offset: int = 0) -> np.ndarray:
    return np.stack([face_like(offset + i) for i in range(n)])


def _settled_model(seed: int = 0) -> torch.nn.Module:
    """A fastnet whose BatchNorm statistics come from face-like input, so activations have the
    scales of a trained net (a fresh one's running stats are 0/1 and tell int8 nothing)."""
    torch.manual_seed(seed)
    m = models.build("fastnet", widths=(16, 32, 64, 128))
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # cumulative average over the batches below
    m.train()
    with torch.no_grad():
        for i in range(4):
            m(preprocess.normalize(_faces(32, 100 * i)))
    return m.eval()


def _rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_int8_logits_follow_fp32():
    m = _settled_model()
    x = preprocess.normalize(_faces(64, 1000))  # not the calibration images
    observers = quantize.calibrate(m, [preprocess.normalize(_faces(64, 0))])
    q = quantize.convert(m, observers)
    with torch.no_grad():
        want, got = m(x), q(x)
    assert _rel_error(got, want) < 0.1
    # a wrong calibration (activations claimed 100x smaller) must show: the check above can fail
    squeezed = {k: v / 100 if k.endswith(("min_val", "max_val")) else v for k, v in observers.items()}
    with torch.no_grad():
        assert _rel_error(quantize.convert(m, squeezed)(x), want) > 0.3


def test_convert_rejects_observers_of_another_model():
    observers = quantize.calibrate(_settled_model(), [preprocess.normalize(_faces(8))])
    with pytest.raises(ValueError, match="does not match"):
        quantize.convert(models.build("fastnet"), observers)


def test_bundle_int8_round_trip_and_precision_choice(tmp_path):
    d = str(tmp_path / "b")
    meta = bundle.save(d, _settled_model(), "fastnet", {"widths": [16, 32, 64, 128]})
    with pytest.raises(bundle.BundleError, match="no int8 calibration"):
        bundle.load(d, precision="int8")
    assert bundle.load(d).precision == "fp32"  # auto without a calibration

    after = bundle.calibrate(d, _faces(40), samples=32, calibrated_from="fixture")
    assert after["model_id"] == meta["model_id"]  # same weights, same identity
    assert after["int8"]["calibration"] == {"images": 32, "seed": 0, "source": "fixture"}
    auto, fp32 = bundle.load(d), bundle.load(d, precision="fp32")
    assert (auto.precision, fp32.precision, bundle.load(d, gpu=True).precision) == ("int8", "fp32", "fp32")
    px = _faces(16, 500)
    p8, p32 = probabilities(auto, px), probabilities(fp32, px)
    assert torch.equal(p8, probabilities(bundle.load(d), px))  # rebuilt the same way every load
    assert (p8 - p32).abs().max() < 0.05 and not torch.equal(p8, p32)

    bundle.save(d, models.build("fastnet", widths=(16, 32, 64, 128)), "fastnet", {"widths": [16, 32, 64, 128]})
    assert not os.path.exists(os.path.join(d, bundle.INT8_FILE))  # new weights: old calibration gone
    assert bundle.load(d).precision == "fp32"


def test_bad_precision_and_corrupt_calibration(tmp_path):
    d = str(tmp_path / "b")
    bundle.save(d, _settled_model(), "fastnet", {"widths": [16, 32, 64, 128]})
    with pytest.raises(bundle.BundleError, match="precision must be one of"):
        bundle.load(d, precision="fp16")
    with pytest.raises(bundle.BundleError, match="int8 runs on CPU only"):
        bundle.load(d, gpu=True, precision="int8")
    bundle.calibrate(d, _faces(8))
    (tmp_path / "b" / bundle.INT8_FILE).write_bytes(b"garbage")
    with pytest.raises(bundle.BundleError, match="bad int8 calibration"):
        bundle.load(d)


def test_quantize_and_evaluate_cli(tmp_path, capsys):
    ddir, d = str(tmp_path / "data"), str(tmp_path / "b")
    rng = np.random.default_rng(0)
    data.write_split(ddir, "Training", _faces(48), rng.integers(0, 7, 48))
    data.write_split(ddir, "PrivateTest", _faces(20, 300), rng.integers(0, 7, 20))
    bundle.save(d, _settled_model(), "fastnet", {"widths": [16, 32, 64, 128]})

    assert cli.main(["quantize", "--model", d, "--data", ddir, "--samples", "0"]) == 2
    assert "--samples must be a positive integer" in capsys.readouterr().err
    assert cli.main(["quantize", "--model", d, "--data", ddir, "--samples", "1000"]) == 0
    assert "int8 calibration on 48 Training images" in capsys.readouterr().out

    assert cli.main(["evaluate", "--model", d, "--data", ddir, "--samples", "4"]) == 0
    assert cli.main(["evaluate", "--model", d, "--data", ddir, "--samples", "4", "--precision", "fp32"]) == 0
    metrics = json.load(open(os.path.join(d, bundle.META_FILE)))["metrics"]
    assert metrics["PrivateTest-int8"]["precision"] == "int8" and metrics["PrivateTest"]["precision"] == "fp32"
    assert os.path.isfile(os.path.join(d, "eval-PrivateTest-int8", "metrics.json"))
