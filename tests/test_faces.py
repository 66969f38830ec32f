"""faces.detector: YuNet, whose weights ship in fer_ray/bundles/yunet.

Multi-face images are built from a real face crop (conftest.real_face: Grace Hopper's public-domain
portrait that matplotlib ships, and variants of it: mirrored, darker, more contrast) pasted onto a
plain canvas; no FER-2013 image is committed."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import FACE_VARIANTS, real_face
from fer_ray import preprocess
from fer_ray.faces import detector

RELIABLE = list(FACE_VARIANTS)


def boxes(img) -> list:
    """The detector's boxes, rounded to pixels."""
    return [tuple(round(v) for v in d.box) for d in detector.detect(img)]


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
            assert_found(boxes(canvas), [(40, 40, side, side)])


def test_detect_finds_each_pasted_face_left_to_right():
    img, known = canvas_with_faces(MULTI)
    found = boxes(img)
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
    assert_found(boxes(img), known)


def test_detect_on_a_large_photo_maps_boxes_back():
    """Images over MAX_SIDE are scanned downscaled; boxes come back in original pixels."""
    img, known = canvas_with_faces([(RELIABLE[0], 300, 500, 480), (RELIABLE[2], 2000, 900, 560)],
                                   size=(3000, 2000))
    assert max(img.size) > detector.MAX_SIDE
    assert_found(boxes(img), known)


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
        assert boxes(img) == []


def test_tiny_images_have_no_face_and_do_not_fail():
    for size in ((1, 1), (10, 30), (31, 31)):
        assert boxes(Image.new("L", size, 100)) == []


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
        assert boxes(img) == [], name


def test_real_photo_with_one_face_exif_rotated():
    """matplotlib ships a portrait (Grace Hopper). Stored rotated with EXIF orientation 6, the face
    is found where it stands in the upright image."""
    upright = Image.open(_package_image("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"))
    found = boxes(upright)
    assert len(found) == 1
    x, y, w, h = found[0]
    assert 180 <= x + w / 2 <= 340 and 150 <= y + h / 2 <= 300 and 150 <= w <= 320  # the face, not the cap

    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=92, exif=exif.tobytes())
    decoded = preprocess.decode(buf.getvalue())
    assert decoded.size == upright.size
    rotated = boxes(decoded)
    assert len(rotated) == 1 and iou(rotated[0], found[0]) > 0.8


def test_landmarks_lie_on_the_face_eyes_above_the_mouth():
    img, known = canvas_with_faces(MULTI)
    for d, (x, y, side, _) in zip(detector.detect(img), known):
        lm = d.landmarks
        assert lm.shape == (5, 2) and 0.6 <= d.score <= 1.0
        assert ((lm >= (x, y)) & (lm <= (x + side, y + side))).all()
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # eyes, mouth corners: left one first
        assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1])  # eyes, nose, mouth downwards


def test_a_face_cut_by_the_border_is_found():
    face = sample(RELIABLE[0], 200)
    canvas = Image.new("L", (500, 300), 160)
    canvas.paste(face, (-70, 50))  # a third of the face lies past the left edge
    found = boxes(canvas)
    assert len(found) == 1 and found[0][0] < 40


def test_thin_and_huge_aspect_images_cost_no_memory_and_have_no_face():
    """A 60000x1 image once made the face search allocate 19 GB: nothing is ever enlarged but a
    crop, and the scan is at most MAX_SIDE long."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for size in ((60000, 1), (1, 60000), (10000, 3), (5000, 20)):
        assert boxes(Image.new("L", size, 128)) == []
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


def test_a_crowd_of_300_faces_is_bounded_and_found():
    face = sample(RELIABLE[1], 40)
    canvas = Image.new("L", (20 * 44, 15 * 44), 150)
    for k in range(300):
        canvas.paste(face, (k % 20 * 44 + 2, k // 20 * 44 + 2))
    found = detector.detect(canvas)
    assert 240 <= len(found) <= detector.MAX_FACES


def test_the_crop_rule():
    assert detector.crop_like(48, 48) and detector.crop_like(256, 220)
    assert not detector.crop_like(257, 257) and not detector.crop_like(100, 200) and not detector.crop_like(640, 480)


def test_the_shipped_weights_are_the_documented_file():
    import hashlib
    import re

    with open(detector.MODEL, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(os.path.dirname(detector.MODEL), "SOURCE.md")) as f:
        documented = re.search(r"sha256 \| ([0-9a-f]{64})", f.read()).group(1)
    assert digest == documented
    assert os.path.exists(os.path.join(os.path.dirname(detector.MODEL), "LICENSE"))


def test_detect_is_thread_safe():
    img, known = canvas_with_faces(MULTI[:2], size=(420, 420))
    want = boxes(img)
    results, errors = [], []

    def work():
        try:
            for _ in range(2):
                results.append(boxes(img))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 8 and all(r == want for r in results)
    assert detector._net(64, 64) is detector._net(96, 96)  # loaded once per thread, not per image
