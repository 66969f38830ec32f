"""Video objects: frames sampled at a fixed rate, decoded one at a time with OpenCV's FFmpeg.

    Clip(path, fps).frames() -> Frame(index, time_s, gray) ...   then clip.error, if it stopped early

Memory stays flat in the video's length: one decoded frame at a time. Frames that are not
sampled are only grabbed (demuxed and decoded, never converted), which is most of the saving over
reading every frame. A video that cannot be opened, or ends before the frame count its container
declares (truncated, corrupt), sets `error`; the frames read before that are kept.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from .storage import VIDEO_EXTENSIONS

DEFAULT_FPS = 2.0
# FFmpeg prints each decoding hiccup to stderr from every worker; the row's error says what
# matters. Read when OpenCV first opens a video; a user's own setting wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def is_video(uri: str) -> bool:
    return str(uri).lower().endswith(VIDEO_EXTENSIONS)


@dataclass
class Frame:
    index: int  # position in the video, from 0
    time_s: float  # presentation time
    gray: np.ndarray  # uint8 (H, W)


class Clip:
    """One video file, read front to back once."""

    def __init__(self, path: str, fps: float = DEFAULT_FPS):
        if not fps > 0:
            raise ValueError(f"sampling rate must be > 0, got {fps}")
        self.path, self.fps = path, float(fps)
        self.error: str | None = None
        self.read = 0  # frames grabbed
        self.stopped_at = (None, None)  # (frame index, time) where reading stopped early
        self.width = self.height = None

    def frames(self):
        """Sampled frames in order: the first frame at or after each multiple of 1/fps seconds."""
        import cv2

        cap = _open(self.path)
        try:
            if not cap.isOpened():
                self.error = "cannot decode video"
                return
            rate = cap.get(cv2.CAP_PROP_FPS)
            rate = rate if math.isfinite(rate) and 0 < rate < 1000 else 0.0
            declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            self.width, self.height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            due, t = 0.0, 0.0
            while cap.grab():
                index = self.read
                self.read += 1
                t = index / rate if rate else cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                if t + 1e-6 < due:
                    continue
                due = (math.floor(t * self.fps + 1e-6) + 1) / self.fps
                ok, bgr = cap.retrieve()
                if not ok or bgr is None:
                    break
                gray = bgr if bgr.ndim == 2 else cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
                yield Frame(index, round(t, 3), gray)
            if self.read == 0:
                self.error = "cannot decode video: no frames"
            elif declared - self.read > max(2, declared // 50):  # FFmpeg's count may be off by a frame or two
                self.error = f"video ends early: {self.read} of {declared} frames read (truncated or corrupt)"
                self.stopped_at = (self.read, round(self.read / rate, 3) if rate else round(t, 3))
        finally:
            cap.release()


def frame_at(path: str, index: int) -> np.ndarray | None:
    """The frame at `index` as uint8 grayscale (for thumbnails), or None when it cannot be read."""
    import cv2

    cap = _open(path)
    try:
        if not cap.isOpened():
            return None
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, bgr = cap.read()
        if not ok or bgr is None:
            return None
        return bgr if bgr.ndim == 2 else cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    finally:
        cap.release()


def _open(path: str):
    import cv2

    # OpenCV warns on stderr about each file it cannot open; the row's error says it once
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    return cv2.VideoCapture(path, cv2.CAP_FFMPEG)
