"""The shift suite: each shift changes the image the way it says, deterministically, and the
suite's summary is computed over the shifted rows only."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import real_face
from fer_ray import shifts


def _faces(n=4):
    return np.stack([np.asarray(real_face(v, 48).convert("L")) for v in ("plain", "mirror", "dark", "contrast")][:n])


def test_every_shift_keeps_shape_and_is_deterministic():
    px = _faces()
    for name in shifts.SHIFTS:
        a, b = shifts.apply(px, name, seed=3), shifts.apply(px, name, seed=3)
        assert a.shape == px.shape and a.dtype == np.uint8, name
        assert np.array_equal(a, b), name
        assert np.array_equal(a, px) == (name == "clean"), name


def test_zoom_out_shrinks_the_face_and_repeats_the_border():
    px = np.zeros((1, 48, 48), np.uint8)
    px[0, 12:36, 12:36] = 255  # a bright square in the middle
    out = shifts.apply(px, "zoom out 0.7")[0]
    bright = (out > 127).sum()
    assert 0.4 * 24 * 24 <= bright <= 0.6 * 24 * 24  # area x 0.7^2 = 0.49
    assert out[0, 0] == 0  # the border stays the border's colour


def test_photometric_shifts_move_the_mean_the_right_way():
    px = _faces()
    assert shifts.apply(px, "brighter +25%").mean() > px.mean() + 40
    assert shifts.apply(px, "darker -25%").mean() < px.mean() - 40
    assert shifts.apply(px, "contrast 0.5").std() < 0.6 * px.std()


def test_summary_is_over_shifted_rows_only():
    rows = [{"shift": "clean", "model": 0.7, "framed": 0.68, "sources": {}},
            {"shift": "a", "model": 0.6, "framed": 0.64, "sources": {}},
            {"shift": "b", "model": 0.5, "framed": 0.6, "sources": {}}]
    s = shifts.summarize(rows, 10)
    assert s["model"] == pytest.approx({"clean": 0.7, "mean": 0.55, "drop": 0.15})
    assert s["framed"] == pytest.approx({"clean": 0.68, "mean": 0.62, "drop": 0.06})
