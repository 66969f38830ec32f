"""fer_ray.Recognizer and EmotionLabeler: the Python API, on every kind of input, and the same
answers the commands give. Faces are Grace Hopper's public-domain portrait that matplotlib ships
(conftest.real_face and the portrait itself); nothing here is FER-2013."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import real_face
from fer_ray import ImageError, cli
from fer_ray.emotions import EMOTIONS


@pytest.fixture(scope="module")
def rec():
    from fer_ray import Recognizer

    return Recognizer()


def portrait_path() -> str:
    import matplotlib.cbook

    return matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


def two_faces() -> Image.Image:
    canvas = Image.new("RGB", (640, 360), (150, 160, 170))
    canvas.paste(real_face("plain", 150).convert("RGB"), (340, 100))
    canvas.paste(real_face("mirror", 140).convert("RGB"), (60, 80))
    return canvas


def test_importing_fer_ray_is_cheap():
    code = ("import sys, fer_ray; from fer_ray import Recognizer, EmotionLabeler; "
            "print(sorted(m for m in ('ray', 'torch', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_input_kind_gives_the_same_answer(rec, tmp_path):
    path = portrait_path()
    data = open(path, "rb").read()
    pil = Image.open(io.BytesIO(data))
    rgb = np.asarray(pil.convert("RGB"))
    want = rec.detect_emotions(path)
    assert len(want) == 1 and want[0]["face_source"] == "detected" and want[0]["label"] in EMOTIONS
    assert set(want[0]) == {"box", "emotions", "label", "confidence", "face_source"}
    assert list(want[0]["emotions"]) == list(EMOTIONS) and sum(want[0]["emotions"].values()) == pytest.approx(1, abs=1e-3)
    for same in (data, bytearray(data), pil, rgb[:, :, ::-1].copy(), io.BytesIO(data)):
        assert rec.detect_emotions(same) == want, type(same)
    assert rec.detect_emotions(rgb, channels="RGB") == want
    # RGB given as BGR is a different picture (red and blue swapped): the face is still found
    swapped = rec.detect_emotions(rgb)
    assert len(swapped) == 1 and swapped[0]["emotions"] != want[0]["emotions"]
    gray = np.asarray(pil.convert("L"))
    assert len(rec.detect_emotions(gray)) == 1
    assert len(rec.detect_emotions(gray[:, :, None])) == 1
    assert len(rec.detect_emotions(rgb.astype(np.float32) / 255, channels="RGB")) == 1


def test_a_photo_with_two_faces_left_to_right_and_a_photo_without(rec):
    got = rec.detect_emotions(two_faces())
    assert len(got) == 2 and got[0]["box"][0] < 200 < 340 <= got[1]["box"][0] + 20
    assert rec.detect_emotions(Image.new("RGB", (640, 480), (90, 140, 200))) == []
    # a face crop is labelled as framed even where no face is found in it
    (crop,) = rec.detect_emotions(Image.new("L", (48, 48), 128))
    assert crop["face_source"] == "whole-image"


def test_bad_pictures_raise_an_image_error_naming_them(rec, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match="notes.txt.*cannot decode image"):
        rec.detect_emotions(str(bad))
    with pytest.raises(ImageError, match="nowhere.jpg.*not found"):
        rec.detect_emotions(str(tmp_path / "nowhere.jpg"))
    with pytest.raises(ImageError, match=r"image 1 \(bytes\).*cannot decode"):
        rec.predict_batch([portrait_path(), b"garbage"])
    with pytest.raises(ImageError, match="shape"):
        rec.detect_emotions(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageError, match="int64"):
        rec.detect_emotions(np.zeros((40, 40), np.int64))
    with pytest.raises(ImageError, match="expected a path"):
        rec.detect_emotions(12)
    with pytest.raises(ImageError, match="too large"):
        rec.detect_emotions(Image.new("L", (9000, 9000)))


def test_a_fifo_is_refused_without_waiting(rec, tmp_path):
    import os

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        rec.detect_emotions(str(fifo))


def test_predict_batch_is_detect_emotions_one_by_one(rec):
    pics = [portrait_path(), two_faces(), Image.new("RGB", (640, 480)), real_face("dark", 48)]
    assert rec.predict_batch(pics) == [rec.detect_emotions(p) for p in pics]


def test_the_api_gives_what_predict_prints(rec, tmp_path, capsys):
    two = tmp_path / "two.png"
    two_faces().save(two)
    assert cli.main(["predict", str(two), "--json", "--top", "7"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    got = rec.detect_emotions(str(two))
    assert [p["box"] for p in printed] == [g["box"] for g in got]
    assert [p["emotion"] for p in printed] == [g["label"] for g in got]
    for p, g in zip(printed, got):
        assert {e: v for e, v in p["top"]} == pytest.approx(g["emotions"], abs=1e-3)


def test_emotion_labeler_in_a_users_ray_data_pipeline(ray_local, rec, tmp_path):
    import ray

    from fer_ray import EmotionLabeler

    src = tmp_path / "pics"
    src.mkdir()
    two_faces().save(src / "two.png")
    Image.new("RGB", (640, 480), (90, 140, 200)).save(src / "sky.png")
    real_face("plain", 48).save(src / "crop.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds = ray.data.read_binary_files(str(src), include_paths=True)
    rows = ds.map_batches(EmotionLabeler, compute=ray.data.ActorPoolStrategy(size=1), batch_size=8).take_all()
    by = {}
    for r in rows:
        by.setdefault(r["image_path"].rsplit("/", 1)[-1], []).append(r)
    assert sorted(by) == ["broken.png", "crop.png", "sky.png", "two.png"]
    want = rec.detect_emotions(str(src / "two.png"))
    assert [(r["label"], [r["box_x"], r["box_y"], r["box_w"], r["box_h"]]) for r in by["two.png"]] == \
        [(w["label"], w["box"]) for w in want]
    assert [r["prob_happy"] for r in by["two.png"]] == pytest.approx([w["emotions"]["happy"] for w in want], abs=2e-4)
    (sky,) = by["sky.png"]
    assert sky["face_source"] == "no-face" and sky["label"] is None and sky["error"] is None
    (broken,) = by["broken.png"]
    assert broken["error"].startswith("cannot decode image") and broken["label"] is None
    (crop,) = by["crop.png"]
    assert crop["label"] in EMOTIONS and crop["face_source"] == "as-framed"
    # read_images gives RGB arrays: the same faces
    images = ray.data.read_images(str(src / "two.png"), include_paths=True)
    again = images.map_batches(EmotionLabeler, compute=ray.data.ActorPoolStrategy(size=1), batch_size=8).take_all()
    assert [r["label"] for r in again] == [w["label"] for w in want]


def test_a_url_of_another_scheme_is_refused_by_name(rec):
    with pytest.raises(ImageError, match=r"https:// is not supported"):
        rec.detect_emotions("https://example.com/face.jpg")


def test_the_readme_python_example_runs_as_written(capsys):
    import os
    import re

    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    (code,) = re.findall(r"## From Python\n\n```python\n(.*?)```", readme, re.S)
    exec(compile(code, "README.md", "exec"), {})
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("[") and line.split("] ")[1].split()[0] in EMOTIONS
