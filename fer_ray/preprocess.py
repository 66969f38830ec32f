"""The one path from an image to the model's input, shared by training, evaluation and labeling.

    decode(bytes) -> PIL image        (safe: size limits, EXIF orientation, any mode; plain JPEG and
                                       PNG through OpenCV's decoder, everything else through Pillow)
    to_gray(image) -> PIL "L" image    (any mode/bit depth/alpha -> 8-bit grayscale, full size)
    to_gray48(image) -> uint8 HxW      (to_gray, resized to the model's input size)
    normalize(uint8 batch) -> float    (N,1,H,W), the tensor the model sees

`preprocess(image)` chains the last two for one image; the prepared training data stores the
output of `to_gray48`, so training and labeling see identical pixels.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

INPUT_SIZE = 48
# FER-2013 training-set pixel statistics (mean 129.4, std 65.0 on the 0..255 scale).
MEAN = 0.5074
STD = 0.2550
# Refuse decompression bombs well before Pillow's own limit: a face crop never needs 64 MPixel.
MAX_PIXELS = 64_000_000
# Photos are decoded at no less than this on their longer side where the format allows decoding
# smaller for free (JPEG's DCT scaling: 1/2, 1/4, 1/8): faces are searched at 800 px
# (faces.detector.MAX_SIDE), so a 4000x3000 photo decodes at 2000x1500: a quarter of the pixels
# to make and hold, and its faces keep twice the pixels the search needs.
PHOTO_SIDE = 1600
FULL_SIZE = "fer_ray.full_size"  # info key of a reduced image: (width, height) of the upright file


class DecodeError(ValueError):
    """The bytes are not an image we can use; the message is a short reason for the output row."""


def check_size(width: int, height: int, max_pixels: int = MAX_PIXELS) -> None:
    """The one bound on an image's size, before any pixel is decoded or resized: every entry point
    (files, uploads, arrays and PIL images given to the Recognizer) passes through it."""
    if width <= 0 or height <= 0:
        raise DecodeError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise DecodeError(f"image too large ({width}x{height})")


def decode(data: bytes, max_pixels: int = MAX_PIXELS, reduce_to: int | None = None) -> Image.Image:
    """Decode image bytes into a PIL image, upright (EXIF applied), first frame only. With
    `reduce_to`, a JPEG whose longer side is at least twice that decodes at 1/2, 1/4 or 1/8 of its
    size (never below `reduce_to`); full_size(img) is then the file's size."""
    if not data:
        raise DecodeError("empty file")
    img = _decode_plain(data, max_pixels, reduce_to)
    if img is not None:
        return img
    # A truncated file must be an error row, not a label on a half-grey face. False is Pillow's
    # default; enforce it in case another library in this worker process switched it on.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            # Pillow's other warnings (corrupt EXIF, odd TIFF tags) are noise for a batch job, and
            # must not become errors under -W error; only the bomb warning matters here.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            check_size(*img.size, max_pixels)
            full = img.size
            k = jpeg_reduction(*full, reduce_to) if img.format == "JPEG" else 1
            if k > 1:
                img.draft(img.mode, (-(-full[0] // k), -(-full[1] // k)))
            img.seek(0)
            img.load()
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DecodeError("image too large (decompression bomb)") from None
    except Exception as exc:  # Pillow raises many types for bad data; all mean "not usable"
        if isinstance(exc, OSError) and "truncated" in str(exc).lower():
            raise DecodeError("cannot decode image: truncated") from None
        raise DecodeError(f"cannot decode image: {type(exc).__name__}") from None
    # EXIF sits in info["exif"] for JPEG, PNG and WebP, in the tags for TIFF: most crops have none,
    # and looking for an orientation costs more than decoding a 48x48 JPEG
    if img.format == "TIFF" or "exif" in img.info:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Corrupt EXIF data": noise in a job's logs, not an error
                turned = ImageOps.exif_transpose(img)
            if turned.size != img.size:  # turned a quarter: so is the file's size
                full = full[::-1]
            img = turned
        except Exception:
            pass  # a broken EXIF block should not cost us an otherwise good image
    if img.size != full:
        img.info[FULL_SIZE] = full
    return img


def full_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of the file an image was decoded from (decode may reduce a large JPEG)."""
    return img.info.get(FULL_SIZE, img.size)


def jpeg_reduction(width: int, height: int, reduce_to: int | None) -> int:
    """The largest JPEG scale-down (1, 2, 4 or 8) that keeps the longer side >= reduce_to."""
    if not reduce_to:
        return 1
    return next((k for k in (8, 4, 2) if max(width, height) >= k * reduce_to), 1)


# PNG chunks that change no pixel as Pillow reads them (colour metadata is not applied by either
# decoder); any other chunk (transparency, EXIF, animation, ...) sends the file to Pillow.
_PNG_PLAIN_CHUNKS = {b"IHDR", b"IDAT", b"IEND", b"tEXt", b"zTXt", b"iTXt", b"pHYs", b"tIME", b"gAMA",
                     b"sRGB", b"cHRM", b"iCCP", b"bKGD"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _decode_plain(data: bytes, max_pixels: int, reduce_to: int | None = None) -> Image.Image | None:
    """The common case, decoded by OpenCV: a complete 8-bit grey or colour JPEG (no EXIF, no Adobe
    colour transform) or PNG (no transparency, CRCs intact) within the size limit. On a 48x48 JPEG
    crop it takes a fraction of Pillow's CPU, which goes mostly to parsing the header in Python
    (docs/labeling.md, "How it is built (design)").
    The pixels are the same libjpeg/zlib output Pillow gives (tests/test_preprocess.py compares);
    None for any other file, which Pillow decodes or rejects with its own reason."""
    if data.startswith(_PNG_SIGNATURE):
        size = _plain_png_size(data)
    elif data.startswith(b"\xff\xd8\xff"):
        size = _plain_jpeg_size(data)
    else:
        return None
    if size is None or size[0] * size[1] > max_pixels or 0 in size:
        return None
    import cv2

    k = jpeg_reduction(*size, reduce_to) if data.startswith(b"\xff\xd8") else 1
    flag = cv2.IMREAD_UNCHANGED  # UNCHANGED: no EXIF rotation
    if k > 1:  # reduced decoding comes in colour only; the plain JPEGs here carry no EXIF anyway
        flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[k]
        flag |= cv2.IMREAD_IGNORE_ORIENTATION
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if arr is None or arr.dtype != np.uint8 or arr.shape[:2] != (-(-size[1] // k), -(-size[0] // k)):
        return None
    if arr.ndim == 3:
        if arr.shape[2] != 3:
            return None
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    img = Image.fromarray(arr)
    if k > 1:
        img.info[FULL_SIZE] = size
    return img


def _plain_png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of an 8-bit grey or RGB PNG made only of _PNG_PLAIN_CHUNKS, every CRC
    right and nothing after IEND (a truncated file has no IEND); else None."""
    view, pos, size = memoryview(data), len(_PNG_SIGNATURE), None
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if kind not in _PNG_PLAIN_CHUNKS or end > len(data):
            return None
        if zlib.crc32(view[pos + 4 : end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            return None
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack_from(">IIBB", data, pos + 8)
            if depth != 8 or colour not in (0, 2):
                return None
            size = (width, height)
        elif kind == b"IEND":
            return size if end == len(data) else None
        pos = end
    return None


def _plain_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a Huffman-coded 8-bit JPEG with 1 or 3 components, no EXIF block and no
    Adobe marker, that ends with its end-of-image marker (a cut-off file does not); else None."""
    if not data.endswith(b"\xff\xd9"):
        return None
    pos, size = 2, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the header is over
            return size
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header
            if marker not in (0xC0, 0xC1, 0xC2) or pos + 10 > len(data):
                return None  # lossless, hierarchical or arithmetic-coded: rare, left to Pillow
            precision, height, width, components = struct.unpack_from(">BHHB", data, pos + 4)
            if precision != 8 or components not in (1, 3):
                return None
            size = (width, height)
        elif marker == 0xEE or (marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00"):
            return None
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    return None


def to_gray(img: Image.Image) -> Image.Image:
    """Any PIL image (any mode, bit depth, alpha) -> 8-bit grayscale "L" image of the same size.
    16-bit and 32-bit integer images are scaled to 0..255 (not clipped); transparency is
    composited on white (what a viewer shows for a transparent PNG on a page)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8))
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == "L" else img.convert("L")


def to_gray48(img: Image.Image, size: int = INPUT_SIZE) -> np.ndarray:
    """Any PIL image (any mode, bit depth, alpha) -> uint8 array (size, size), grayscale."""
    gray = to_gray(img)
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    return np.asarray(gray, dtype=np.uint8)


def normalize(pixels, mean: float = MEAN, std: float = STD) -> torch.Tensor:
    """uint8 (H,W), (N,H,W) or (N,1,H,W) array/tensor -> float32 (N,1,H,W) normalised."""
    if isinstance(pixels, np.ndarray) and not pixels.flags.writeable:
        pixels = pixels.copy()  # torch refuses to wrap read-only buffers (e.g. from Arrow)
    t = torch.as_tensor(pixels)
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() == 3:
        t = t.unsqueeze(1)
    return (t.float() / 255.0 - mean) / std


def preprocess(img: Image.Image, size: int = INPUT_SIZE, mean: float = MEAN, std: float = STD) -> torch.Tensor:
    """One decoded image -> the model's input (1, 1, size, size)."""
    return normalize(to_gray48(img, size), mean, std)
