import numpy as np
import pytest
import torch

from fer_ray import bundle, data, models, preprocess
from fer_ray.emotions import EMOTIONS
from conftest import face_like, image_bytes, probabilities


def test_preprocess_shapes_and_normalisation():
    img = preprocess.decode(image_bytes(np.full((100, 80), 255, np.uint8)))
    x = preprocess.preprocess(img)
    assert x.shape == (1, 1, 48, 48)
    assert torch.allclose(x, torch.full_like(x, (1 - preprocess.MEAN) / preprocess.STD))


def test_decode_rejects_garbage():
    with pytest.raises(preprocess.DecodeError, match="empty"):
        preprocess.decode(b"")
    with pytest.raises(preprocess.DecodeError, match="cannot decode"):
        preprocess.decode(b"%PDF-1.4 not an image")


@pytest.mark.parametrize("name", ["classic", "resnet", "fastnet"])
def test_models_output_seven_logits(name):
    m = models.build(name).eval()
    assert m(torch.zeros(2, 1, 48, 48)).shape == (2, len(EMOTIONS))


def test_bundle_round_trip(tmp_path):
    m = models.build("fastnet")
    meta = bundle.save(str(tmp_path / "b"), m, "fastnet", training={"epochs": 1})
    b = bundle.load(str(tmp_path / "b"))
    assert b.model_id == meta["model_id"] and b.classes == list(EMOTIONS)
    px = np.stack([face_like(i) for i in range(3)])
    m.eval()
    with torch.no_grad():
        want = torch.softmax(m(preprocess.normalize(px)), 1)
    assert torch.allclose(probabilities(b, px), want, atol=1e-6)


def test_bundle_rejects_foreign_and_corrupt(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(bundle.BundleError, match="not a model bundle"):
        bundle.load(str(tmp_path / "x"))
    bundle.save(str(tmp_path / "b"), models.build("fastnet"), "fastnet")
    (tmp_path / "b" / bundle.WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(bundle.BundleError, match="corrupt weights"):
        bundle.load(str(tmp_path / "b"))


def test_prepared_split_round_trip(tmp_path):
    px = np.stack([face_like(i) for i in range(5)])
    votes = np.eye(7, dtype=np.float32)[[0, 1, 2, 3, 4]] * 10
    data.write_split(str(tmp_path), "Training", px, [0, 1, 2, 3, 4], votes=votes)
    s = data.load_split(str(tmp_path), "Training")
    assert (s.pixels == px).all() and list(s.labels) == [0, 1, 2, 3, 4]
    assert (s.votes == votes).all()
    data.write_split(str(tmp_path), "PublicTest", px, [6] * 5)
    assert data.load_split(str(tmp_path), "PublicTest").votes is None
