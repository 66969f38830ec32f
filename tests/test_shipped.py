"""The shipped models themselves: they load by name, int8 agrees with fp32 on real-looking faces,
and the public-domain portrait the tests use is found and labelled as a person would."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from conftest import FACE_VARIANTS, probabilities, real_face
from fer_ray import bundle, quantize
from fer_ray import faces as framing

SHIPPED = list(bundle.SHIPPED)  # every one must be there: a missing bundle fails, never drops out


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_bundle_is_installed(name):
    assert os.path.isfile(os.path.join(bundle.shipped_dir(name), bundle.META_FILE)), name


def _faces() -> np.ndarray:
    """288 model inputs from the portrait: its variants zoomed, turned, mirrored, lit differently,
    with parts of the face hidden (mouth, eyes): varied enough that the model's answers vary."""
    from PIL import ImageDraw

    out = []
    for name in FACE_VARIANTS:
        face = real_face(name, 96)
        for zoom in (0.8, 1.0, 1.2):
            for light in (0.7, 1.3):
                for angle in (-12, 0, 12):
                    for hide in (None, "mouth", "eyes", "flip"):
                        side = round(96 / zoom)
                        canvas = Image.new("L", (side, side), 140)
                        canvas.paste(face.rotate(angle, fillcolor=140), ((side - 96) // 2, (side - 96) // 2))
                        img = ImageEnhance.Brightness(canvas).enhance(light).resize((48, 48), Image.BILINEAR)
                        if hide == "flip":
                            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                        elif hide:
                            y = 30 if hide == "mouth" else 14
                            ImageDraw.Draw(img).rectangle((8, y, 40, y + 10), fill=int(60 * light))
                        out.append(np.asarray(img))
    return np.stack(out)


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.skipif(not quantize.available(), reason="no x86 quantised engine in this torch")
def test_int8_agrees_with_fp32_on_real_looking_faces(name):
    px = _faces()
    fp32 = probabilities(bundle.load(name, precision="fp32"), px).numpy()
    int8 = probabilities(bundle.load(name, precision="int8"), px).numpy()
    assert len(px) >= 200
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.9
    assert np.abs(fp32 - int8).max() < 0.15
    # the answers vary with the face (a constant stub's do not), and int8 follows fp32's variation
    assert fp32.std(0).max() > 0.05 and len(set(fp32.argmax(1))) >= 3
    a, b = fp32 - fp32.mean(0), int8 - int8.mean(0)
    assert (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()) > 0.9


@pytest.mark.parametrize("name", SHIPPED)
def test_the_portrait_is_found_and_labelled_neutral(name):
    import matplotlib.cbook

    img = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))
    (face,) = framing.faces(img, "auto")  # the defaults of label and predict
    assert face.face_source == "detected"
    b = bundle.load(name)
    probs = probabilities(b, face.pixels[None]).numpy()[0]
    # neutral, and by a margin: at least 1.5x the next class (aligned from the landmarks, the
    # portrait's face is framed tighter than the old box framing made it, and less sure)
    second, first = np.sort(probs)[-2:]
    assert b.classes[int(probs.argmax())] == "neutral" and first > 1.5 * second
