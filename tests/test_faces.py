"""faces.detect: the Haar cascade shipped in opencv-python-headless.

Multi-face images are built from a real face crop (conftest.real_face: Grace Hopper's public-domain
portrait that matplotlib ships, and variants of it: mirrored, darker, more contrast) pasted onto a
plain canvas; no FER-2013 image is committed. Each variant is found alone at every size from 48 to
480 px on backgrounds 128-200, so a miss here is the code's, not the cascade's."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import FACE_VARIANTS, real_face
from fer_ray import faces, preprocess

RELIABLE = list(FACE_VARIANTS)


def sample(name: str, size: int) -> Image.Image:
    return real_face(name, size)


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter)


def canvas_with_faces(placements, size=(820, 440), bg=170, mode="L"):
    """placements: [(sample name, x, y, side)] -> (image, known boxes)."""
    canvas = Image.new("L", size, bg)
    boxes = []
    for name, x, y, side in placements:
        canvas.paste(sample(name, side), (x, y))
        boxes.append((x, y, side, side))
    return canvas.convert(mode), boxes


MULTI = [(RELIABLE[0], 30, 40, 140), (RELIABLE[1], 230, 230, 120),
         (RELIABLE[2], 420, 30, 160), (RELIABLE[3], 640, 250, 150)]


def assert_found(found, known, min_iou=0.5):
    assert len(found) == len(known), (found, known)
    for k in known:
        best = max(iou(f, k) for f in found)
        assert best > min_iou, (k, found)


def test_the_test_face_is_found_alone_in_every_variant():
    for name in RELIABLE:
        for side in (48, 140):
            canvas = Image.new("L", (side + 80, side + 80), 150)
            canvas.paste(sample(name, side), (40, 40))
            assert_found(faces.detect(canvas), [(40, 40, side, side)])


def test_detect_finds_each_pasted_face_left_to_right():
    img, known = canvas_with_faces(MULTI)
    found = faces.detect(img)
    assert_found(found, known)
    assert found == sorted(found, key=lambda b: (b[0], b[1]))
    assert all(isinstance(v, int) for b in found for v in b)
    # each box is matched to its own face, in the order the faces stand left to right
    assert [max(range(len(known)), key=lambda i: iou(f, known[i])) for f in found] == [0, 1, 2, 3]


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "I;16"])
def test_detect_works_on_any_image_mode(mode):
    if mode == "I;16":  # a 16-bit scan of the same canvas
        gray, known = canvas_with_faces(MULTI[:2], size=(420, 420))
        img = Image.fromarray(np.asarray(gray, np.uint16) * 257)
        assert img.mode == "I;16"
    else:
        img, known = canvas_with_faces(MULTI[:2], size=(420, 420), mode=mode)
    assert_found(faces.detect(img), known)


def test_detect_on_a_large_photo_maps_boxes_back():
    """Images over MAX_SIDE are scanned downscaled; boxes come back in original pixels."""
    img, known = canvas_with_faces([(RELIABLE[0], 300, 500, 480), (RELIABLE[2], 2000, 900, 560)],
                                   size=(3000, 2000))
    assert max(img.size) > faces.MAX_SIDE
    assert_found(faces.detect(img), known)


def test_no_face_in_generated_images():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    gradient = Image.fromarray(((xx + yy) * 255 // (640 + 480)).astype(np.uint8))
    noise = Image.fromarray(rng.integers(0, 256, (480, 640), dtype=np.uint8))
    shapes = Image.new("RGB", (640, 480), (90, 140, 200))
    from PIL import ImageDraw

    d = ImageDraw.Draw(shapes)
    for i in range(12):
        x, y = rng.integers(0, 560, 2)
        r = int(rng.integers(10, 70))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (d.ellipse if i % 2 else d.rectangle)((int(x), int(y), int(x) + r, int(y) + r), fill=color)
    for img in (gradient, noise, shapes, Image.new("L", (640, 480), 128)):
        assert faces.detect(img) == []


def test_tiny_images_have_no_face_and_do_not_fail():
    for size in ((1, 1), (10, 30), (31, 31)):
        assert faces.detect(Image.new("L", size, 100)) == []


def _package_image(module: str, *parts: str) -> str:
    """A data file shipped inside an installed package, found without importing it (sklearn is slow)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{module} not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} not shipped in this version")
    return path


def test_real_photo_without_face():
    """scikit-learn ships two real photos with no face in them (a temple, a flower)."""
    for name in ("china.jpg", "flower.jpg"):
        img = preprocess.decode(open(_package_image("sklearn", "datasets", "images", name), "rb").read())
        assert faces.detect(img) == [], name


def test_real_photo_with_one_face_exif_rotated():
    """matplotlib ships a portrait (Grace Hopper). Stored rotated with EXIF orientation 6, the face
    is found only if the upright image is scanned (Haar cascades are not rotation invariant)."""
    upright = Image.open(_package_image("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"))
    boxes = faces.detect(upright)
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    assert 180 <= x + w / 2 <= 340 and 150 <= y + h / 2 <= 300 and 150 <= w <= 320  # the face, not the cap

    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=92, exif=exif.tobytes())
    decoded = preprocess.decode(buf.getvalue())
    assert decoded.size == upright.size
    rotated = faces.detect(decoded)
    assert len(rotated) == 1 and iou(rotated[0], boxes[0]) > 0.8
    # without EXIF handling the sideways image has no frontal face
    assert faces.detect(Image.open(io.BytesIO(buf.getvalue()))) == []


def test_margin_grows_boxes_past_the_image_edge():
    img, known = canvas_with_faces([(RELIABLE[0], 0, 0, 140), (RELIABLE[2], 240, 90, 150)], size=(400, 260))
    plain = faces.detect(img)
    wide = faces.detect(img, margin=0.25)
    assert len(plain) == len(wide) == 2
    (ax, ay, aw, ah), (bx, by, bw, bh) = plain[1], wide[1]
    assert bx < ax and by < ay and bw > aw and bh > ah  # grown on every side
    cx, cy, cw, ch = wide[0]
    assert cx < 0 and cy < 0 and cw > plain[0][2]  # the corner face's box reaches past the image (framing pads it)


def test_detect_is_thread_safe():
    img, known = canvas_with_faces(MULTI[:2], size=(420, 420))
    want = faces.detect(img)
    results, errors = [], []

    def work():
        try:
            for _ in range(2):
                results.append(faces.detect(img))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 8 and all(r == want for r in results)
    assert faces._cascade() is faces._cascade()  # loaded once (per thread), not per image


def test_drop_nested_keeps_separate_faces():
    boxes = [(0, 0, 100, 100), (20, 20, 40, 40), (150, 0, 100, 100), (90, 0, 100, 100)]
    kept = faces._drop_nested(boxes)
    # the small box inside the first is dropped; partly overlapping neighbours stay
    assert sorted(kept) == [(0, 0, 100, 100), (90, 0, 100, 100), (150, 0, 100, 100)]
