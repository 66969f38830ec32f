"""framer: the learned framing check of `--faces auto` on crops. The shipped framer reads Grace
Hopper's public-domain portrait (conftest.real_face, framed the way FER-2013 frames faces) under
known zooms, moves and rotations; nothing here is FER-2013."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import real_face
from fer_ray.faces import framing
from fer_ray import shifts
from fer_ray.faces import framer, framer_train


def _face(size: int = 48) -> np.ndarray:
    return np.asarray(real_face("plain", size).convert("L"))


def _warped(px: np.ndarray, scale=1.0, angle=0.0, dx=0.0, dy=0.0) -> np.ndarray:
    x = torch.from_numpy(px.astype(np.float32))[None, None]
    t = lambda v: torch.tensor([float(v)])  # noqa: E731
    out = framer_train._warp(x, t(scale), t(math.radians(angle)), t(dx), t(dy))
    return out[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def _centre_error(a: np.ndarray, b: np.ndarray) -> float:
    c = slice(10, 38)
    return float(np.abs(a[c, c].astype(np.float32) - b[c, c]).mean())


def test_reframe_undoes_the_training_warp():
    face = _face()
    seen = _warped(face, 1.3, 15, 0.1, -0.05)
    back = framer.reframe(seen, 1.3, 15, 0.1, -0.05)
    assert _centre_error(back, face) < 0.25 * _centre_error(seen, face)
    assert _centre_error(framer.reframe(seen, 1.3, -15, 0.1, -0.05), face) > 2 * _centre_error(back, face)


def test_the_shipped_framer_reads_zoom_move_and_rotation():
    face = _face()
    cases = [(0.7, 0, 0, 0), (0.85, 0, 0, 0), (1.0, 0, 0.15, 0), (1.0, 0, 0, -0.15), (0.75, 15, 0.1, 0.05)]
    read = framer.predict(np.stack([_warped(face, *c) for c in cases]))
    assert read is not None
    assert (read.face > 0.5).all()
    for k, (scale, angle, dx, dy) in enumerate(cases):
        assert abs(math.log(read.scale[k] / scale)) < 0.1, (k, read.scale[k])
        assert abs(read.dx[k] - dx) < 0.06 and abs(read.dy[k] - dy) < 0.06, (k, read.dx[k], read.dy[k])
    assert abs(read.angle[-1] - 15) < 6, read.angle[-1]


def test_only_a_looser_or_tilted_face_is_worth_reframing():
    face = _face()
    read = framer.predict(np.stack([face, _warped(face, 1.3), _warped(face, 1.0, 0, 0.12, 0), _warped(face, 0.7),
                                    _warped(face, 0.95, 25)]))
    rows = [framer.Framing(*(v[k] for v in read)) for k in range(5)]
    assert [framing.worth_reframing(r) for r in rows] == [False, False, False, True, True]


def test_non_faces_are_not_read_as_faces():
    rng = np.random.default_rng(0)
    flat = np.full((48, 48), 128, np.uint8)
    noise = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    ramp = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (48, 1))
    read = framer.predict(np.stack([flat, noise, ramp]))
    assert (read.face < 0.5).all(), read.face


def _corr(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, np.float32).ravel(), np.asarray(b, np.float32).ravel())[0, 1])


@pytest.mark.parametrize("shift", ["zoom out 0.7", "rotate 20°"])
def test_auto_reframes_a_looser_or_tilted_crop_back_towards_the_original(shift):
    face = _face()
    seen = shifts.apply(face[None], shift)[0]
    (found,) = framing.faces(Image.fromarray(seen), "auto")
    assert found.face_source == "detected"
    assert _corr(found.pixels, face) > _corr(seen, face) + 0.1


@pytest.mark.parametrize("shift", ["zoom in 1.4", "shift 15%"])
def test_auto_leaves_a_tighter_or_moved_crop_as_it_is(shift):
    seen = shifts.apply(_face()[None], shift)[0]
    (found,) = framing.faces(Image.fromarray(seen), "auto")
    assert found.face_source == "as-framed" and np.array_equal(found.pixels, seen)


def test_the_framer_box_of_a_canonical_crop_is_fer2013s_face_box():
    x, y, w, h = framing.framer_box(48, 48, 1.0, 0.0, 0.0)
    assert (w, h) == pytest.approx((framing.BOX_SIZE[0] * 48, framing.BOX_SIZE[1] * 48))
    assert x + w / 2 == pytest.approx(framing.BOX_CENTRE[0] * 48)
    assert y + h / 2 == pytest.approx(framing.BOX_CENTRE[1] * 48)


def test_the_int8_framer_reads_as_the_float_one():
    """int8 steps on the output layer once turned every reading into 1.0 / 0.55: it stays float."""
    from safetensors.torch import load_file

    net = framer.FramerNet()
    net.load_state_dict(load_file(f"{framer.HERE}/{framer.WEIGHTS_FILE}"))
    face = _face()
    crops = np.stack([_warped(face, *c) for c in [(1.0, 0, 0, 0), (0.7, 0, 0, 0), (0.8, 12, 0.1, 0), (1.2, -8, 0, 0.1)]])
    a, b = framer.predict(crops), framer.predict(crops, net.eval())
    assert np.abs(np.log(a.scale / b.scale)).max() < 0.03
    assert np.abs(a.angle - b.angle).max() < 2 and np.abs(a.dx - b.dx).max() < 0.02 and np.abs(a.dy - b.dy).max() < 0.02
