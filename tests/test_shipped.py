"""The shipped models themselves: they load by name, int8 agrees with fp32 on real-looking faces,
and the public-domain portrait the tests use is found and labelled as a person would."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from conftest import FACE_VARIANTS, real_face
from fer_ray import bundle, quantize
from fer_ray import faces as framing

SHIPPED = [n for n in bundle.SHIPPED if os.path.isfile(os.path.join(bundle.shipped_dir(n), bundle.META_FILE))]


def _faces() -> np.ndarray:
    """48 model inputs from the portrait: its variants, zoomed, moved and lit differently."""
    out = []
    for name in FACE_VARIANTS:
        face = real_face(name, 96)
        for zoom in (0.8, 1.0, 1.2):
            for light in (0.7, 1.0, 1.3):
                side = round(96 / zoom)
                canvas = Image.new("L", (side, side), 140)
                canvas.paste(face, ((side - 96) // 2, (side - 96) // 2))
                img = ImageEnhance.Brightness(canvas).enhance(light)
                out.append(np.asarray(img.resize((48, 48), Image.BILINEAR)))
    return np.stack(out)


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.skipif(not quantize.available(), reason="no x86 quantised engine in this torch")
def test_int8_agrees_with_fp32_on_real_looking_faces(name):
    px = _faces()
    fp32 = bundle.load(name, precision="fp32").predict_proba(px).numpy()
    int8 = bundle.load(name, precision="int8").predict_proba(px).numpy()
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.9
    assert np.abs(fp32 - int8).max() < 0.15
    assert fp32.argmax(1).min() != fp32.argmax(1).max() or fp32.max() > 0.5  # not a constant stub


@pytest.mark.parametrize("name", SHIPPED)
def test_the_portrait_is_found_and_labelled_neutral(name):
    import matplotlib.cbook

    img = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))
    (face,) = framing.faces(img, "auto")  # the defaults of label and predict
    assert face.source == "detected"
    b = bundle.load(name)
    probs = b.predict_proba(face.pixels[None]).numpy()[0]
    # neutral, and by a margin: at least 1.5x the next class (aligned from the landmarks, the
    # portrait's face is framed tighter than the old box framing made it, and less sure)
    second, first = np.sort(probs)[-2:]
    assert b.classes[int(probs.argmax())] == "neutral" and first > 1.5 * second
