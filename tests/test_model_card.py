"""The shipped models' cards (MODEL_CARD.md) against their bundles, and the check that
scripts/reproduce_model_card.sh runs on re-derived figures (scripts/model_card.py --check): it
must pass on figures equal to the card's and fail, naming the figure, on any that differ or on
prepared data with another checksum. No FER-2013 data needed: the re-derived results are written
here, from what the bundle records."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "model_card.py")
BUNDLES = os.path.join(ROOT, "fer_ray", "bundles")


@pytest.fixture(scope="module")
def model_card():
    spec = importlib.util.spec_from_file_location("model_card", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _meta(name: str) -> dict:
    with open(os.path.join(BUNDLES, name, "bundle.json")) as f:
        return json.load(f)


def _card(name: str) -> str:
    with open(os.path.join(BUNDLES, name, "MODEL_CARD.md")) as f:
        return f.read()


def _figure(text: str) -> tuple[float, float]:
    """A figure as the card writes it ("69.0%", "3.0 pt", "0.660", "3589") -> (value, half a unit
    of its last digit): how far the recorded value may be from it and still be written so."""
    scale = 100 if text.endswith(("%", " pt")) else 1
    digits = text.removesuffix("%").removesuffix(" pt")
    decimals = len(digits.partition(".")[2])
    return float(digits) / scale, 0.5 * 10 ** -decimals / scale


def _field(record: dict, path: str):
    for part in path.split("."):
        record = record[part]
    return record


@pytest.mark.parametrize("name", ["fast", "accurate"])
def test_the_card_states_what_the_bundle_records(model_card, name):
    meta, says = _meta(name), model_card.stated(_card(name))
    # every headline and shift-suite record the card is written from shows on it: a card line the
    # reader no longer understands would otherwise drop out of the check unnoticed
    headline_keys = {k for k in meta["metrics"] if k.startswith(("PrivateTest", "PublicTest", "shifts-PrivateTest"))}
    assert {key for key, _ in says} - {""} == headline_keys
    for key in ("PrivateTest-int8", "PrivateTest-int8-tta"):
        assert {(key, f) for f in ("accuracy", "not_in_training.accuracy", "macro_f1")} <= set(says)
    assert {("shifts-PrivateTest-int8", f) for f in ("n", "model.mean", "framed.mean", "framed.drop")} <= set(says)
    for (key, field), text in says.items():
        if (key, field) == model_card.CARD_CHECKSUM:
            assert text == meta["data_checksum"]
            continue
        value, half = _figure(text)
        recorded = _field(meta["metrics"][key], field)
        assert abs(recorded - value) <= half + 1e-12, f"{name}: card says {key} {field} {text}, bundle {recorded}"


def _results(tmp_path, name: str = "fast", change=None) -> list[str]:
    """What the script's two `fer-ray evaluate --out` folders hold when the re-derived figures are
    the recorded ones (single crop with the shift suite, and TTA), after `change(single, shifts,
    tta)` edits them."""
    m = copy.deepcopy(_meta(name)["metrics"])
    single, tta, suite = m["PrivateTest-int8"], m["PrivateTest-int8-tta"], m["shifts-PrivateTest-int8"]
    for r in (single, tta):
        r["split"] = "PrivateTest"
    if change:
        change(single, suite, tta)
    folders = []
    for folder, files in (("single", {"metrics.json": single, "shifts.json": suite}), ("tta", {"metrics.json": tta})):
        os.makedirs(tmp_path / folder)
        for file, body in files.items():
            (tmp_path / folder / file).write_text(json.dumps(body))
        folders.append(str(tmp_path / folder))
    return folders


def test_figures_equal_to_the_card_pass(model_card, tmp_path):
    said = []
    assert model_card.check(os.path.join(BUNDLES, "fast"), _results(tmp_path), say=said.append) == []
    compared = " ".join(said)
    for figure in ("PrivateTest-int8 accuracy:", "PrivateTest-int8-tta accuracy:", "PrivateTest-int8 macro_f1:",
                   "shifts-PrivateTest-int8 framed.mean:", "shifts-PrivateTest-int8 data_checksum:"):
        assert figure in compared, said


def _accuracy(single, suite, tta):
    single["accuracy"] -= 0.004  # 69.0% -> 68.6%


def _shift_mean(single, suite, tta):
    suite["framed"]["mean"] += 0.003  # 66.4% -> 66.7%


def _checksum(single, suite, tta):
    for r in (single, suite, tta):
        r["data_checksum"] = "0" * 64  # prepared otherwise (without --drop-duplicates, say)


@pytest.mark.parametrize("change, named", [
    (_accuracy, ["PrivateTest-int8 accuracy"]),
    (_shift_mean, ["shifts-PrivateTest-int8 framed.mean"]),
    (_checksum, ["PrivateTest-int8 data_checksum", "PrivateTest-int8-tta data_checksum",
                 "shifts-PrivateTest-int8 data_checksum"]),
])
def test_a_figure_or_data_that_differs_fails_by_name(model_card, tmp_path, change, named):
    bad = model_card.check(os.path.join(BUNDLES, "fast"), _results(tmp_path, change=change), say=lambda line: None)
    assert sorted(bad) == sorted(named)


def test_results_the_card_does_not_state_fail(model_card, tmp_path):
    def elsewhere(single, suite, tta):
        for r in (single, tta):
            r["split"] = "Training"  # nothing on the card to compare with

    bad = model_card.check(os.path.join(BUNDLES, "fast"), _results(tmp_path, change=elsewhere), say=lambda line: None)
    assert bad == ["(nothing compared)"]


def test_the_script_exits_non_zero_naming_what_differs(tmp_path):
    """What reproduce_model_card.sh relies on: the exit status of `model_card.py --check`."""
    def check(folders):
        return subprocess.run([sys.executable, SCRIPT, os.path.join(BUNDLES, "fast"), "--check", *folders],
                              capture_output=True, text=True, timeout=300, check=False)

    p = check(_results(tmp_path / "ok"))
    assert p.returncode == 0, p.stderr
    assert "PrivateTest-int8 accuracy: re-derived 69.0%, card 69.0%: same" in p.stdout
    p = check(_results(tmp_path / "bad", change=_accuracy))
    assert p.returncode == 1 and "differ from" in p.stderr and "PrivateTest-int8 accuracy" in p.stderr, p.stderr
