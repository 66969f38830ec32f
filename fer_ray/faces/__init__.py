"""Faces in pictures: where they are (detector.py, YuNet), and each one framed the way FER-2013
frames faces (align.py from the detector's landmarks; framer.py for face crops), in one call:

    faces(img, mode) -> [Face(box, pixels, face_source, score)]

framing.py holds the modes (auto, crop, detect) and the rule that tells a crop from a photo.
"""

from . import detector
from ..schema import NO_FACE
from .framing import FACE_SOURCES, MODES, Face, crop_like, faces, faces_many, frame_crops

__all__ = ["detector", "FACE_SOURCES", "MODES", "NO_FACE", "Face", "crop_like", "faces", "faces_many", "frame_crops"]
