"""The seven FER-2013 classes, in the dataset's label order (0..6)."""

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(EMOTIONS)
