"""framing: canonical crops from face boxes, and the auto/crop/detect modes every consumer uses.

Faces are Grace Hopper's public-domain portrait (conftest.real_face, a crop framed the way
FER-2013 frames faces) pasted, zoomed or moved; nothing here is FER-2013."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import real_face
from fer_ray import framing


def test_frame_box_puts_the_box_where_fer2013_has_it():
    x0, y0, side = framing.frame_box((100, 50, 96, 96))
    assert side == pytest.approx(96 / framing.SIDE)
    assert x0 + framing.CENTRE_X * side == pytest.approx(148)  # box centre x
    assert y0 + framing.CENTRE_Y * side == pytest.approx(98)


def test_frame_pads_with_the_border_past_the_image_edge():
    gray = np.full((60, 60), 50, np.uint8)
    gray[:, 30:] = 200
    out = framing.frame(gray, (-20, 10, 40, 40))  # reaches 20 px past the left edge
    assert out.shape == (48, 48) and out.dtype == np.uint8
    assert out[:, :5].min() == 50  # the left border repeated, never black
    assert out.min() > 0


def test_frame_rejects_a_box_wholly_outside():
    with pytest.raises(ValueError):
        framing.frame(np.zeros((40, 40), np.uint8), (100, 100, 20, 20))


def test_crop_mode_is_the_whole_image():
    faces = framing.faces(Image.new("RGB", (123, 45)), "crop")
    assert [(f.box, f.source, f.pixels.shape) for f in faces] == [((0, 0, 123, 45), "whole-image", (48, 48))]


def test_unknown_mode_is_a_value_error():
    with pytest.raises(ValueError, match="unknown faces mode 'haar'"):
        framing.faces(Image.new("L", (10, 10)), "haar")


def test_a_crop_framed_like_fer2013_goes_in_as_it_is():
    img = real_face("plain", 48)
    (face,) = framing.faces(img, "auto")
    assert face.source == "as-framed"
    assert np.array_equal(face.pixels, np.asarray(img.convert("L")))


def _zoomed_out(factor: float, size: int = 96) -> Image.Image:
    """The test face shrunk to `factor` of a size x size frame of plain background."""
    canvas = Image.new("L", (size, size), 160)
    side = round(size * factor)
    canvas.paste(real_face("plain", side), ((size - side) // 2, (size - side) // 3))
    return canvas


def test_a_loosely_framed_crop_is_reframed():
    img = _zoomed_out(0.55)
    (face,) = framing.faces(img, "auto")
    assert face.source == "detected"
    x, y, w, h = face.box
    assert 0.4 * 96 <= w <= 0.7 * 96  # the face, not the frame
    # the re-framed face fills the model input the way the test face fills its own crop; the
    # whole image squeezed to 48 px does not (measured: 0.52 through the framer's reading, 0.71
    # through the detector's box, against -0.13)
    ref = np.asarray(real_face("plain", 48), np.float32).ravel()
    corr = lambda px: np.corrcoef(ref, np.asarray(px, np.float32).ravel())[0, 1]  # noqa: E731
    assert corr(face.pixels) > 0.45 > 0.2 > corr(img.resize((48, 48)))


def test_no_face_means_the_whole_image_in_auto_and_nothing_in_detect():
    img = Image.new("L", (200, 150), 128)
    (face,) = framing.faces(img, "auto")
    assert face.source == "whole-image" and face.box == (0, 0, 200, 150)
    assert framing.faces(img, "detect") == []


def test_several_faces_each_get_a_row_and_boxes_are_clipped():
    canvas = Image.new("L", (600, 300), 170)
    canvas.paste(real_face("plain", 140), (30, 60))
    canvas.paste(real_face("mirror", 150), (420, 40))
    canvas.paste(real_face("dark", 130), (-40, 200))  # cut by the left and bottom border
    found = framing.faces(canvas, "auto")
    assert len(found) >= 2 and all(f.source == "detected" for f in found)
    for f in found:
        x, y, w, h = f.box
        assert x >= 0 and y >= 0 and x + w <= 600 and y + h <= 300
        assert f.pixels.shape == (48, 48)


def test_faces_many_is_faces_image_by_image():
    imgs = [real_face("plain", 48), _zoomed_out(0.55), Image.new("L", (64, 64), 90), real_face("dark", 300),
            Image.new("RGB", (400, 200), (10, 200, 30))]
    for mode in framing.MODES:
        together = framing.faces_many(imgs, mode)
        alone = [framing.faces(img, mode) for img in imgs]
        assert [[(f.box, f.source) for f in fs] for fs in together] == [[(f.box, f.source) for f in fs] for fs in alone]
        for a, b in zip(together, alone):
            for fa, fb in zip(a, b):
                assert np.abs(fa.pixels.astype(int) - fb.pixels).max() <= 1


def test_frame_crops_counts_sources():
    pixels = np.stack([np.asarray(real_face("plain", 48).convert("L")),
                       np.full((48, 48), 128, np.uint8),
                       np.asarray(_zoomed_out(0.55).resize((48, 48)))])
    out, sources = framing.frame_crops(pixels, "auto")
    assert out.shape == (3, 48, 48)
    assert sources == {"as-framed": 1, "detected": 1, "whole-image": 1}
