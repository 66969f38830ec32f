"""Evaluation: metrics against hand-computed values, TTA properties, the `fer-ray evaluate` CLI."""

import json
import math
import os

import numpy as np
import pytest
import torch

from fer_ray import bundle, cli, data, models, storage
from fer_ray import evaluate as ev
from fer_ray import inference
from fer_ray.emotions import EMOTIONS
from conftest import face_like, probabilities

# ---------------------------------------------------------------- metrics vs hand-computed values

# 6 samples over classes 0..2 (the other 4 classes never occur). Probabilities are powers of 1/2
# so the loss is a multiple of ln 2.
LABELS = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.zeros((6, 7))
PROBS[0, :3] = [0.5, 0.25, 0.25]  # true 0, pred 0, p_true 1/2
PROBS[1, :3] = [0.25, 0.5, 0.25]  # true 0, pred 1, p_true 1/4
PROBS[2, :3] = [0.25, 0.5, 0.25]  # true 1, pred 1, p_true 1/2
PROBS[3, :4] = [0.25, 0.5, 0.125, 0.125]  # true 1, pred 1, p_true 1/2
PROBS[4, :3] = [0.25, 0.25, 0.5]  # true 2, pred 2, p_true 1/2
PROBS[5, :3] = [0.5, 0.25, 0.25]  # true 2, pred 0, p_true 1/4


def test_metrics_match_hand_computed_values():
    m = ev.metrics(PROBS, LABELS)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    # -log p_true = ln2 * (1 + 2 + 1 + 1 + 1 + 2) / 6
    assert m["loss"] == pytest.approx(8 * math.log(2) / 6, abs=1e-6)
    cm = np.zeros((7, 7), int)
    cm[0, 0], cm[0, 1], cm[1, 1], cm[2, 2], cm[2, 0] = 1, 1, 2, 1, 1
    assert m["confusion"] == cm.tolist()
    # predicted 0: rows 0,5 (1 right); predicted 1: rows 1,2,3 (2 right); predicted 2: row 4 (right)
    want = {
        "angry": (1 / 2, 1 / 2, 1 / 2, 2),
        "disgust": (2 / 3, 1.0, 0.8, 2),
        "fear": (1.0, 1 / 2, 2 / 3, 2),
        "happy": (0.0, 0.0, 0.0, 0),
    }
    for name, (p, r, f1, support) in want.items():
        got = m["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f1), abs=1e-6), name
        assert got["support"] == support
    # macro over the 3 classes present; weighted by support (2 each)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3, abs=1e-6)
    assert m["weighted_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3, abs=1e-6)
    # two off-diagonal cells of 1, each half of its true class; tie broken by class order
    assert m["top_confused"] == [
        {"true": "angry", "predicted": "disgust", "count": 1, "rate": 0.5},
        {"true": "fear", "predicted": "angry", "count": 1, "rate": 0.5},
    ]


def test_subset_metrics_and_edge_cases():
    mask = np.array([True, False, True, True, False, False])  # rows 0, 2, 3: all right
    s = ev.subset_metrics(PROBS, LABELS, mask)
    assert s == {"n": 3, "accuracy": 1.0, "loss": pytest.approx(math.log(2), abs=1e-6)}
    assert ev.subset_metrics(PROBS, LABELS, np.zeros(6, bool)) == {"n": 0, "accuracy": None, "loss": None}
    # a true-class probability of exactly 0 gives a finite, capped loss
    probs = np.eye(7)[[1]]
    assert ev.cross_entropy(probs, np.array([0])) == pytest.approx(-math.log(ev.EPS))
    with pytest.raises(ValueError, match="probs must be"):
        ev.metrics(PROBS[:, :3], LABELS)


def test_confused_pairs_order_and_row_normalisation():
    cm = np.array([[5, 3, 0], [0, 2, 4], [1, 0, 0]])
    pairs = ev.confused_pairs(cm, ["a", "b", "c"], k=2)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("b", "c", 4), ("a", "b", 3)]
    assert pairs[0]["rate"] == pytest.approx(4 / 6, abs=1e-6)
    norm = ev.row_normalize(np.array([[1, 3], [0, 0]]))
    assert norm.tolist() == [[0.25, 0.75], [0.0, 0.0]]


def test_sample_indices_cover_every_class_and_are_reproducible():
    labels = np.array([0] * 50 + [1] * 3 + [5] * 20)
    idx = ev.sample_indices(labels, 12)
    assert len(idx) == 12 and len(set(idx.tolist())) == 12
    assert set(labels[idx]) == {0, 1, 5}
    assert (idx == ev.sample_indices(labels, 12)).all()
    assert len(ev.sample_indices(labels[:5], 40)) == 5


# ---------------------------------------------------------------- TTA


def _model(seed=0):
    """Position-sensitive and far from uniform (an untrained BatchNorm net predicts ~1/7 everywhere)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 5, stride=2), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 22 * 22, 7)
    ).eval()


def test_tta_views_shape_and_content():
    x = torch.randn(3, 1, 48, 48)
    v = inference.tta_views(x)
    assert v.shape == (10, 3, 1, 48, 48)
    assert torch.equal(v[0], x)  # the image itself
    assert torch.equal(v[5], x.flip(-1))  # and its mirror
    assert not torch.allclose(v[1], x)  # corner crops are shifted/zoomed, not copies


def test_tta_is_flip_invariant_and_per_sample():
    """The view set of a mirrored image is the mirrored view set, so TTA probabilities of x and of
    flip(x) agree for ANY model, while plain predictions do not (which shows the test has teeth)."""
    model = _model()
    x = (torch.as_tensor(np.stack([face_like(i) for i in range(4)])).float().unsqueeze(1) / 255 - 0.5) / 0.25
    plain, plain_flip = inference.predict_probs(model, x), inference.predict_probs(model, x.flip(-1))
    assert np.abs(plain - plain_flip).max() > 0.01
    tta, tta_flip = inference.predict_probs(model, x, tta=True), inference.predict_probs(model, x.flip(-1), tta=True)
    assert tta.shape == (4, 7)
    assert np.allclose(tta.sum(1), 1, atol=1e-5)
    assert np.allclose(tta, tta_flip, atol=1e-5)
    assert np.abs(tta - plain).max() > 0.01
    # batching never mixes samples: a batch of 4 in chunks of 3 equals each sample alone
    alone = np.concatenate([inference.predict_probs(model, x[i : i + 1], tta=True) for i in range(4)])
    assert np.allclose(inference.predict_probs(model, x, batch_size=3, tta=True), alone, atol=1e-5)


def test_tta_of_a_constant_image_equals_the_plain_prediction():
    """Every view of a constant image is the same constant image (no zero padding leaks in)."""
    model = _model(1)
    x = torch.full((2, 1, 48, 48), 0.7)
    assert np.allclose(inference.predict_probs(model, x, tta=True), inference.predict_probs(model, x), atol=1e-6)


# ---------------------------------------------------------------- the CLI


HISTORY = [
    {"epoch": e, "train_loss": 1.9 - 0.2 * e, "train_acc": 0.2 + 0.1 * e, "val_loss": 1.8 - 0.1 * e,
     "val_acc": 0.25 + 0.05 * e, "lr": 0.01 / e}
    for e in (1, 2, 3)
]


@pytest.fixture
def tiny(tmp_path):
    """A tiny fastnet bundle (with training history) and a 30-row prepared PrivateTest split."""
    torch.manual_seed(0)
    model = models.build("fastnet", widths=(8, 8, 16, 16))
    bdir = str(tmp_path / "bundle")
    meta = bundle.save(bdir, model, "fastnet", arch_args={"widths": [8, 8, 16, 16]},
                       training={"history": HISTORY})
    ddir = str(tmp_path / "data")
    n = 30
    px = np.stack([face_like(i) for i in range(n)])
    labels = np.arange(n) % 7
    in_training = np.arange(n) % 3 == 0  # rows 0, 3, ... "leaked" from Training
    data.write_split(ddir, "PrivateTest", px, labels, in_training=in_training)
    return bdir, ddir, meta, px, labels, in_training


def test_evaluate_cli_end_to_end(tiny, tmp_path, capsys):
    bdir, ddir, meta, px, labels, in_training = tiny
    assert cli.main(["evaluate", "--model", bdir, "--data", ddir, "--batch-size", "7"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "most confused" in out and "surprise" in out

    out_dir = os.path.join(bdir, "eval-PrivateTest")
    with open(os.path.join(out_dir, "metrics.json")) as f:
        m = json.load(f)
    # metrics.json agrees with the pure functions applied to the bundle's own predictions
    b = bundle.load(bdir)
    probs = probabilities(b, px).numpy()
    want = ev.metrics(probs, labels)
    assert m["n"] == 30 and m["split"] == "PrivateTest" and m["tta"] is False
    assert m["model_id"] == meta["model_id"]
    assert m["accuracy"] == pytest.approx(want["accuracy"]) and m["loss"] == pytest.approx(want["loss"], abs=1e-5)
    assert m["confusion"] == want["confusion"] and np.sum(m["confusion"]) == 30
    assert set(m["per_class"]) == set(EMOTIONS)
    nit = m["not_in_training"]
    assert nit["n"] == 20
    assert nit["accuracy"] == pytest.approx((probs.argmax(1) == labels)[~in_training].mean())
    assert m["data_checksum"] == data.checksum(ddir)

    for name in ("training_curves.png", "confusion.png", "samples.png"):
        path = os.path.join(out_dir, name)
        with open(path, "rb") as f:
            head = f.read(8)
        assert head == b"\x89PNG\r\n\x1a\n", name
        assert os.path.getsize(path) > 10_000, name  # drawn, not an empty canvas
    from PIL import Image

    arr = np.asarray(Image.open(os.path.join(out_dir, "confusion.png")).convert("L"))
    assert arr.std() > 10  # not blank

    # the bundle records the split's metrics; its identity does not change
    after = bundle.read_meta(bdir)
    assert after["model_id"] == meta["model_id"]
    rec = after["metrics"]["PrivateTest"]
    assert rec["accuracy"] == m["accuracy"] and rec["n"] == 30 and rec["not_in_training"]["n"] == 20
    assert after["training"] == meta["training"]
    assert bundle.load(bdir).model_id == meta["model_id"]


def test_evaluate_cli_tta_out_dir_and_missing_history(tiny, tmp_path, capsys):
    bdir, ddir, meta, *_ = tiny
    meta_no_hist = bundle.read_meta(bdir)
    meta_no_hist["training"] = {}
    bundle.write_meta(bdir, meta_no_hist)
    out_dir = str(tmp_path / "report")
    assert cli.main(["evaluate", "--model", bdir, "--data", ddir, "--tta", "--out", out_dir]) == 0
    assert "training curves skipped" in capsys.readouterr().out
    m = json.load(open(os.path.join(out_dir, "metrics.json")))
    assert m["tta"] is True and m["plots"]["training_curves"] is None
    assert not os.path.exists(os.path.join(out_dir, "training_curves.png"))
    assert os.path.exists(os.path.join(out_dir, "confusion.png"))
    after = bundle.read_meta(bdir)
    assert set(after["metrics"]) == {"PrivateTest-tta"} and after["model_id"] == meta["model_id"]


@pytest.mark.parametrize(
    "argv, code, needle",
    [
        (["evaluate", "--data", "D"], 2, "--model"),
        (["evaluate", "--model", "B", "--data", "D", "--split", "Nope"], 2, "--split"),
        (["evaluate", "--model", "B", "--data", "D", "--batch-size", "0"], 2, "positive integer"),
        (["evaluate", "--model", "B", "--data", "D", "--bogus"], 2, "--bogus"),
        (["evaluate", "--model", "{missing}", "--data", "{data}"], 1, "not a model bundle"),
        (["evaluate", "--model", "{bundle}", "--data", "{missing}"], 1, "PrivateTest"),
        (["evaluate", "--model", "{bundle}", "--data", "{data}", "--split", "Training"], 1, "no Training split"),
    ],
)
def test_evaluate_cli_errors_are_one_line(tiny, tmp_path, capsys, argv, code, needle):
    bdir, ddir, *_ = tiny
    subst = {"bundle": bdir, "data": ddir, "missing": str(tmp_path / "missing")}
    argv = [a.format(**subst) for a in argv]
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:") and needle in err


def test_evaluate_bundle_and_output_on_s3(tiny, bucket, capsys):
    import s3fs

    bdir, ddir, meta, *_ = tiny
    storage.put_folder(bdir, f"{bucket}/models/tiny")
    out = f"{bucket}/reports/tiny"
    assert cli.main(["evaluate", "--model", f"{bucket}/models/tiny", "--data", ddir, "--out", out]) == 0
    assert "not recorded" in capsys.readouterr().out
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    root = out[len("s3://"):]
    assert sorted(os.path.basename(p) for p in fs.ls(root)) == [
        "confusion.png", "metrics.json", "samples.png", "training_curves.png"]
    m = json.loads(fs.cat_file(f"{root}/metrics.json"))
    assert m["model_id"] == meta["model_id"] and m["n"] == 30
    remote_meta = json.loads(fs.cat_file(f"{bucket[len('s3://'):]}/models/tiny/bundle.json"))
    assert remote_meta["metrics"] == {}
