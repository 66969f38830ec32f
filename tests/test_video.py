"""Videos in a SOURCE: sampled frames, a row per face per frame, truncated files, timelines."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.dataset as pads
import pytest

from conftest import real_face
from fer_ray import cli, label, query, report, runs, storage
from fer_ray.emotions import EMOTIONS
from fer_ray.schema import LABEL_SCHEMA
from fer_ray.video import Clip

FPS = 10


def make_video(path, face_s: float = 3.0, blank_s: float = 1.0, fourcc: str = "MJPG", size=(320, 240)) -> str:
    """`face_s` seconds of a real face on a plain background, then `blank_s` seconds without one."""
    import cv2

    w, h = size
    face = np.asarray(real_face("plain", 120))
    with_face = np.full((h, w), 160, np.uint8)
    y, x = (h - 120) // 2, (w - 120) // 2
    with_face[y : y + 120, x : x + 120] = face
    blank = np.full((h, w), 160, np.uint8)
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, size)
    assert out.isOpened()
    for k in range(round((face_s + blank_s) * FPS)):
        out.write(cv2.cvtColor(with_face if k < face_s * FPS else blank, cv2.COLOR_GRAY2BGR))
    out.release()
    return str(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    src = d / "src"
    src.mkdir()
    a = make_video(src / "a.avi")
    make_video(src / "b.mp4", fourcc="mp4v")
    with open(a, "rb") as f:
        data = f.read()
    (src / "cut.avi").write_bytes(data[: len(data) // 3])  # truncated mid-stream
    (src / "garbage.mov").write_bytes(b"\x00not a video" * 50)
    (src / "notes.txt").write_text("neither image nor video")
    return src


def _rows(dest):
    t = pads.dataset(f"{dest}/run_id=" + runs.committed_runs(dest)[-1]["run_id"], schema=LABEL_SCHEMA).to_table()
    return sorted(t.to_pylist(), key=lambda r: (r["image_path"], r["frame_index"] or 0, r["face_index"]))


def test_clip_samples_the_first_frame_of_each_interval(videos):
    clip = Clip(str(videos / "a.avi"), fps=2)
    got = [(f.index, f.time_s, f.gray.shape) for f in clip.frames()]
    assert [g[0] for g in got] == list(range(0, 40, 5))
    assert [g[1] for g in got] == [k / 2 for k in range(8)]
    assert all(g[2] == (240, 320) for g in got) and clip.error is None and clip.read == 40
    assert [f.index for f in Clip(str(videos / "a.avi"), fps=0.5).frames()] == [0, 20]
    assert len(list(Clip(str(videos / "a.avi"), fps=30).frames())) == 40  # never more than it has


def test_a_truncated_or_garbage_video_says_so(videos):
    cut = Clip(str(videos / "cut.avi"), fps=2)
    frames = list(cut.frames())
    assert 0 < len(frames) < 8 and "video ends early" in cut.error and "of 40 frames" in cut.error
    assert cut.stopped_at[0] == cut.read
    bad = Clip(str(videos / "garbage.mov"))
    assert list(bad.frames()) == [] and bad.error.startswith("cannot decode video")


def test_label_rows_per_sampled_frame_and_face(videos, tmp_path, capsys):
    dest = str(tmp_path / "out")
    assert cli.main(["label", str(videos), dest, "--no-progress", "--no-ray"]) == 0
    out = capsys.readouterr().out
    assert "videos     4 (" in out and "left out   1 (neither images nor videos, or unreadable folders): .txt 1" in out
    (m,) = runs.committed_runs(dest)
    assert (m["objects"], m["videos"], m["video_fps"], m["not_images"]) == (4, 4, 2.0, {".txt": 1})
    rows = _rows(dest)
    by = {}
    for r in rows:
        by.setdefault(os.path.basename(r["image_path"]), []).append(r)
    for name in ("a.avi", "b.mp4"):
        rs = by[name]
        assert [r["frame_index"] for r in rs] == list(range(0, 40, 5))
        assert [r["timestamp_s"] for r in rs] == [k / 2 for k in range(8)]
        faces, empty = rs[:6], rs[6:]  # 3 s with the face, 1 s without
        assert all(r["face_source"] == "detected" and r["label"] in EMOTIONS and r["box_w"] > 40 for r in faces)
        assert all(r["face_source"] == "no-face" and r["label"] is None and r["error"] is None for r in empty)
        assert all((r["image_width"], r["image_height"]) == (320, 240) for r in rs)
    cut = by["cut.avi"]
    read = int(cut[-1]["error"].split(": ", 1)[1].split(" of ")[0])  # "video ends early: N of M frames read"
    assert cut[-1]["error"].startswith("video ends early") and cut[-1]["frame_index"] == read > 0
    assert cut[-2]["frame_index"] < read <= cut[-2]["frame_index"] + 5  # the last sampled frame was read
    assert all(r["error"] is None and r["label"] for r in cut[:-1]) and len(cut) >= 2
    (bad,) = by["garbage.mov"]
    assert bad["error"].startswith("cannot decode video") and bad["frame_index"] is None
    assert m["rows"] == len(rows) and m["video_frames"] == 16 + len(cut) - 1
    assert m["faces_labeled"] == sum(r["label"] is not None for r in rows)
    assert m["error_rows"] == 2

    again = label.run(str(videos), dest, incremental=True, progress=False)
    assert again["objects"] == 0  # a video is one object: key + version


def test_timeline_and_report(videos, tmp_path):
    dest = str(tmp_path / "out")
    label.run(str(videos), dest, video_fps=4, progress=False, ray=False)
    tl = query.timeline(dest, window=1.0)
    a = tl[tl.video.str.endswith("a.avi")]
    assert list(a.window_start_s) == [0.0, 1.0, 2.0, 3.0] and list(a.frames) == [4, 4, 4, 4]
    assert list(a.frames_with_faces) == [4, 4, 4, 0] and list(a.faces) == [4, 4, 4, 0]
    shares = a[list(EMOTIONS)].to_numpy(dtype=float)
    assert np.allclose(np.nansum(shares[:3], 1), 1) and np.isnan(shares[3]).all()
    assert a.top_emotion.iloc[0] == max(EMOTIONS, key=lambda e: a[e].iloc[0])
    assert a.top_emotion.isna().iloc[3]
    assert cli.main(["query", dest, "--timeline", "0"]) == 2
    got = report.build(dest, str(tmp_path / "r.html"), thumbs=1)
    assert sum("-timeline-" in p for p in got["pngs"]) == 3  # a, b and cut: the garbage file has no frames
    page = open(got["html"]).read()
    assert "<h2>Videos</h2>" in page and "image not available" not in page  # thumbnails from the frames


def test_label_videos_from_s3_on_ray(videos, bucket, ray_local):
    fs, _ = storage.filesystem(bucket)
    src, dest = f"{bucket}/clips", f"{bucket}/labels"
    for name in ("a.avi", "cut.avi"):
        fs.put_file(str(videos / name), f"{src}/{name}".split("://")[1])
    m = label.run(src, dest, ray=True, workers=2, progress=False)
    assert (m["ray"], m["objects"], m["videos"]) == (True, 2, 2)
    rows = _rows(dest)
    a = [r for r in rows if r["image_path"].endswith("/a.avi")]
    assert [r["frame_index"] for r in a] == list(range(0, 40, 5))
    assert sum(r["error"] is not None for r in rows) == 1


def test_bad_video_fps_is_a_usage_error(videos, tmp_path, capsys):
    assert cli.main(["label", str(videos), str(tmp_path / "o"), "--video-fps", "0"]) == 2
    assert "video fps must be in (0, 240]" in capsys.readouterr().err


def test_predict_points_videos_to_label(videos, capsys):
    assert cli.main(["predict", str(videos / "a.avi")]) == 1
    assert "a video: `fer-ray label` labels its frames" in capsys.readouterr().err
