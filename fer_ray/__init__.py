"""fer-ray: facial-expression recognition trained with Ray Train and applied with Ray Data.

    from fer_ray import Recognizer
    Recognizer().detect_emotions("photo.jpg")   # one dict per face: box, emotions, label, ...

Importing fer_ray is cheap: torch, OpenCV and Ray load on first use.
"""

__version__ = "0.1.0"
__all__ = ["Recognizer", "EmotionLabeler", "ImageError", "__version__"]


def __getattr__(name):
    if name in ("Recognizer", "EmotionLabeler", "ImageError"):
        from . import recognizer

        return getattr(recognizer, name)
    raise AttributeError(f"module 'fer_ray' has no attribute {name!r}")
