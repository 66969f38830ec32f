"""faces: canonical crops from landmarks (align), and the auto/crop/detect modes every consumer uses.

Faces are Grace Hopper's public-domain portrait (conftest.real_face, a crop framed the way
FER-2013 frames faces) pasted, zoomed or moved; nothing here is FER-2013."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import real_face
from fer_ray import faces as framing
from fer_ray.faces import align, detector


def test_align_puts_the_landmarks_where_fer2013_has_them():
    # a face 2x FER-2013's size, turned by 20 degrees and moved: its landmarks are the template's
    angle = np.radians(20)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = (align.TEMPLATE * 96) @ rot.T + (300, 120)
    m = align.transform(landmarks, 48)
    back = landmarks @ m[:, :2].T + m[:, 2]
    assert np.abs(back - align.TEMPLATE * 48).max() < 1e-6
    assert np.hypot(m[0, 0], m[1, 0]) == pytest.approx(0.5)


def test_align_levels_a_tilted_face():
    photo = Image.new("L", (400, 300), 150)
    photo.paste(real_face("plain", 140), (130, 80))
    (upright,) = detector.detect(photo)
    tilted = photo.rotate(20, resample=Image.BILINEAR, fillcolor=150)
    (d,) = detector.detect(tilted)
    eyes = lambda lm: np.degrees(np.arctan2(lm[1, 1] - lm[0, 1], lm[1, 0] - lm[0, 0]))  # noqa: E731
    assert abs(eyes(d.landmarks) - eyes(upright.landmarks)) > 12  # the detector sees the tilt
    straight = align.align(np.asarray(tilted), d.landmarks)
    (again,) = detector.detect(Image.fromarray(straight))
    assert abs(eyes(again.landmarks) - eyes(align.TEMPLATE)) < 5  # ... and alignment takes it out


def test_align_pads_with_the_border_and_shrinks_large_faces_without_aliasing():
    stripes = np.zeros((800, 800), np.uint8)
    stripes[:, ::2] = 255  # finest stripes: sampled without area averaging they alias to black or white
    landmarks = align.TEMPLATE * 700 + 50
    out = align.align(stripes, landmarks)
    assert out.shape == (48, 48) and abs(float(out.mean()) - 127.5) < 10 and out.std() < 20
    edge = np.full((60, 60), 50, np.uint8)
    edge[:, 30:] = 200
    out = align.align(edge, align.TEMPLATE * 40 - (20, 0))  # reaches 20 px past the left edge
    assert out[:, :5].min() == 50 and out.min() > 0  # the border repeated, never black


def test_degenerate_landmarks_are_a_value_error():
    with pytest.raises(ValueError):
        align.transform(np.zeros((5, 2)), 48)


def test_crop_mode_is_the_whole_image():
    faces = framing.faces(Image.new("RGB", (123, 45)), "crop")
    assert [(f.box, f.face_source, f.pixels.shape) for f in faces] == [((0, 0, 123, 45), "whole-image", (48, 48))]


def test_unknown_mode_is_a_value_error():
    with pytest.raises(ValueError, match="unknown faces mode 'haar'"):
        framing.faces(Image.new("L", (10, 10)), "haar")


def test_a_crop_framed_like_fer2013_goes_in_as_it_is():
    img = real_face("plain", 48)
    (face,) = framing.faces(img, "auto")
    assert face.face_source == "as-framed"
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
    assert face.face_source == "detected"
    x, y, w, h = face.box
    assert 0.4 * 96 <= w <= 0.7 * 96  # the face, not the frame
    # the re-framed face fills the model input the way the test face fills its own crop; the
    # whole image squeezed to 48 px does not (measured: 0.52 through the framer's reading, 0.71
    # through the detector's box, against -0.13)
    ref = np.asarray(real_face("plain", 48), np.float32).ravel()
    corr = lambda px: np.corrcoef(ref, np.asarray(px, np.float32).ravel())[0, 1]  # noqa: E731
    assert corr(face.pixels) > 0.45 > 0.2 > corr(img.resize((48, 48)))


def test_a_crop_without_a_face_goes_in_whole_a_photo_has_no_face():
    crop = Image.new("L", (200, 180), 128)
    (face,) = framing.faces(crop, "auto")
    assert face.face_source == "whole-image" and face.box == (0, 0, 200, 180)
    assert framing.faces(crop, "detect") == []
    photo = Image.new("RGB", (640, 480), (90, 140, 200))  # a photo: never labelled whole
    assert framing.faces(photo, "auto") == [] and framing.faces(photo, "detect") == []


def test_several_faces_each_get_a_row_and_boxes_are_clipped():
    canvas = Image.new("L", (600, 300), 170)
    canvas.paste(real_face("plain", 140), (30, 60))
    canvas.paste(real_face("mirror", 150), (420, 40))
    canvas.paste(real_face("dark", 130), (-40, 200))  # cut by the left and bottom border
    found = framing.faces(canvas, "auto")
    assert len(found) == 3 and all(f.face_source == "detected" and 0.6 <= f.score <= 1 for f in found)
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
        assert [[(f.box, f.face_source) for f in fs] for fs in together] == [[(f.box, f.face_source) for f in fs] for fs in alone]
        for a, b in zip(together, alone):
            for fa, fb in zip(a, b):
                assert np.abs(fa.pixels.astype(int) - fb.pixels).max() <= 1


def test_frame_crops_counts_sources():
    pixels = np.stack([np.asarray(real_face("plain", 48).convert("L")),
                       np.full((48, 48), 128, np.uint8),
                       np.asarray(_zoomed_out(0.55).resize((48, 48)))])
    out, face_sources = framing.frame_crops(pixels, "auto")
    assert out.shape == (3, 48, 48)
    assert face_sources == {"as-framed": 1, "detected": 1, "whole-image": 1}


@pytest.mark.parametrize("mode", ["I;16", "CMYK", "RGBA", "P"])
def test_photos_of_any_mode_have_their_face_found(mode):
    photo = Image.new("RGB", (500, 320), (150, 160, 170))
    photo.paste(real_face("plain", 150).convert("RGB"), (300, 80))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257)
    else:
        img = photo.convert(mode)
    (face,) = framing.faces(img, "auto")
    x, y, w, h = face.box
    assert face.face_source == "detected" and 300 <= x + w / 2 <= 450 and face.pixels.shape == (48, 48)
