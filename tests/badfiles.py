"""The bad-input catalogue: files a labeling job meets in a real bucket, built in memory.

    catalogue() -> [(name, bytes, expect), ...]    expect: "ok" (must get a label) or "error"
    REASONS[name] -> the start of the error reason that preprocess.decode gives ("error" entries)
    CATALOGUE     -> {name: (bytes, expect)}         (same data, as a dict; built on first use)

Every entry is small in bytes (the whole list is ~0.3 MB) and deterministic. The names carry the
extension a bucket would show (a text file named .jpg stays .jpg). Why each verdict:

- error: the pixels are not all there or the file is not an image. We prefer an error row to a
  label computed on a half-grey face: Pillow stops at the first missing byte of a truncated file
  (LOAD_TRUNCATED_IMAGES is kept False by preprocess.decode), and the row says why.
- error: huge declared dimensions (decompression bomb) are refused from the header alone, before
  any pixel is allocated; the file itself is a few hundred bytes.
- ok: every legal image mode is reduced to 8-bit grayscale by preprocess.to_gray48: 16-bit
  (scaled, not clipped), CMYK, RGBA / LA / palette+transparency (composited on white), 1-bit.
- ok: animated GIF -> first frame; EXIF orientation 6/8 -> the upright image; a broken EXIF block
  is ignored (the pixels are fine); a 1x1 image is a legal image and gets a (meaningless) label;
  a 4000x3000 photo is under the 64 MPixel limit.
- error: a JPEG that lacks only its 2-byte end-of-image marker. Its pixels are all there, but
  Pillow cannot tell it from a cut-off file (both say "image file is truncated"), and guessing
  would let half-grey faces through; one rule for every truncated file.
- ok (noted): garbage in the middle of a JPEG's entropy-coded data is not detectable by Pillow:
  libjpeg resynchronises at the next restart marker or decodes garbage pixels without an error.
  There is no reliable signal to turn that into an error row, so it gets a label.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image

OK, ERROR = "ok", "error"


def _upright_pattern(w: int, h: int) -> np.ndarray:
    """Dark gradient with a bright block in the top-left corner: shows orientation after decode."""
    xx = np.linspace(0, 40, w, dtype=np.float32)[None, :]
    yy = np.linspace(0, 20, h, dtype=np.float32)[:, None]
    img = (40 + xx + yy).astype(np.uint8)  # broadcast: cheap even at 4000x3000
    img[: h // 3, : w // 3] = 250
    return img


def _face_like(size: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = 110 + 60 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + rng.normal(0, 8, (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_raw(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written by hand (Pillow cannot write 48-bit RGB, and a bomb must lie in its header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows, 9))
            + _png_chunk(b"IEND", b""))


def _png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """Header claims width x height 8-bit gray; IDAT holds a few compressed rows only."""
    return _png_raw(width, height, 8, 0, bytes(4 * (width + 1)))


def _jpeg_with_dims(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the SOF0 frame header's dimensions (a JPEG 'bomb' or lie)."""
    i = data.index(b"\xff\xc0")
    return data[: i + 5] + struct.pack(">HH", height, width) + data[i + 9:]


def _rgb48_png(w: int = 64, h: int = 64) -> bytes:
    """16 bits per channel RGB: a horizontal ramp 0..65535 on all channels."""
    ramp = (np.linspace(0, 65535, w).astype(">u2")[None, :, None] * np.ones((h, 1, 3), ">u2")).astype(">u2")
    rows = b"".join(b"\x00" + ramp[y].tobytes() for y in range(h))
    return _png_raw(w, h, 16, 2, rows)


def _exif_rotated(orientation: int) -> bytes:
    """A JPEG whose stored pixels are rotated, with the EXIF tag that makes the upright image
    120 wide x 80 tall with its bright block top-left."""
    upright = Image.fromarray(_upright_pattern(120, 80))
    # exif_transpose applies ROTATE_270 for 6 and ROTATE_90 for 8: store the inverse.
    stored = upright.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(stored, "JPEG", quality=95, exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [Image.fromarray(np.full((64, 64), v, np.uint8)).convert("P") for v in (230, 20, 120)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _cmyk_jpeg() -> bytes:
    rgb = Image.fromarray(_upright_pattern(64, 64)).convert("RGB")
    return _save(rgb.convert("CMYK"), "JPEG", quality=95)


def _rgba_png() -> bytes:
    """A face-like square in the middle, fully transparent border (composited on white)."""
    a = np.zeros((64, 64, 4), np.uint8)
    a[16:48, 16:48, :3] = _face_like(32)[..., None]
    a[16:48, 16:48, 3] = 255
    return _save(Image.fromarray(a, "RGBA"), "PNG")


def _palette_png_transparent() -> bytes:
    """Palette image whose index 0 is transparent (the border), index 1 a mid grey (the middle)."""
    idx = np.zeros((64, 64), np.uint8)
    idx[16:48, 16:48] = 1
    img = Image.fromarray(idx, "P")
    img.putpalette([0, 0, 0, 100, 100, 100] + [0] * (254 * 3))
    return _save(img, "PNG", transparency=0)


def _corrupt_middle_jpeg() -> bytes:
    good = _save(Image.fromarray(_face_like(96)), "JPEG", quality=90)
    start = good.index(b"\xff\xda")  # start of scan; entropy-coded data follows its header
    mid = start + (len(good) - start) // 2
    rng = np.random.default_rng(1)
    junk = rng.integers(0, 0xFF, 64, dtype=np.uint8).tobytes()  # no 0xFF: no fake markers
    return good[:mid] + junk + good[mid + 64:]


def _pdf() -> bytes:
    return (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
            b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")


@functools.lru_cache(maxsize=1)
def _build() -> tuple[tuple[str, bytes, str], ...]:
    face = Image.fromarray(_face_like(96))
    jpeg = _save(face, "JPEG", quality=90)
    png = _save(face, "PNG")
    gray16 = Image.fromarray((np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16))
    big = Image.fromarray(_upright_pattern(4000, 3000))
    exif_broken = jpeg[:2] + b"\xff\xe1\x00\x10Exif\x00\x00II*\x00\xff\xff\xff\xff" + jpeg[2:]
    bad_crc = bytearray(png)
    bad_crc[29:33] = b"\x00\x00\x00\x00"  # IHDR's CRC
    items = [
        # -- not an image, or not all of one: an error row
        ("zero_bytes.jpg", b"", ERROR),
        ("text_named.jpg", b"hello, I am a text file with a .jpg name\n", ERROR),
        ("pdf_named.png", _pdf(), ERROR),
        ("html_named.jpg", b"<!DOCTYPE html><html><body>403 Forbidden</body></html>", ERROR),
        ("corrupt_header.jpg", jpeg[:2] + bytes(range(200)) + jpeg[202:], ERROR),
        ("corrupt_crc.png", bytes(bad_crc), ERROR),
        ("truncated_half.jpg", jpeg[: len(jpeg) // 2], ERROR),
        ("truncated_header.jpg", jpeg[:100], ERROR),
        ("truncated_half.png", png[: len(png) // 2], ERROR),
        ("truncated_no_iend_and_half_idat.png", png[: len(png) - 12 - 200], ERROR),
        ("bomb_100000x100000.png", _png_bomb(), ERROR),
        ("bomb_9000x9000.png", _png_bomb(9000, 9000), ERROR),  # under Pillow's limit, over ours
        ("bomb_65000x65000.jpg", _jpeg_with_dims(jpeg, 65000, 65000), ERROR),
        ("bomb_gif_65535x65535.gif", _gif_with_dims(_save(face.convert("P"), "GIF"), 65535, 65535), ERROR),
        # -- legal images in awkward forms: a label
        ("gray16.png", _save(gray16, "PNG"), OK),
        ("rgb48.png", _rgb48_png(), OK),
        ("cmyk.jpg", _cmyk_jpeg(), OK),
        ("rgba.png", _rgba_png(), OK),
        ("la.png", _save(Image.fromarray(_face_like(64)).convert("LA"), "PNG"), OK),
        ("palette_transparent.png", _palette_png_transparent(), OK),
        ("bilevel.png", _save(face.convert("1"), "PNG"), OK),
        ("animated.gif", _animated_gif(), OK),
        ("exif_orientation_6.jpg", _exif_rotated(6), OK),
        ("exif_orientation_8.jpg", _exif_rotated(8), OK),
        ("exif_broken.jpg", exif_broken, OK),
        ("one_pixel.png", _save(Image.new("L", (1, 1), 200), "PNG"), OK),
        ("huge_legal_4000x3000.jpg", _save(big, "JPEG", quality=70), OK),
        ("no_eoi_marker.jpg", jpeg[:-2], ERROR),
        ("corrupt_middle.jpg", _corrupt_middle_jpeg(), OK),
        ("webp_lossless.webp", _save(face, "WEBP", lossless=True), OK),
        ("bmp.bmp", _save(face, "BMP"), OK),
    ]
    return tuple(items)


def _gif_with_dims(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the GIF logical screen and the first image descriptor to width x height."""
    out = bytearray(data)
    out[6:10] = struct.pack("<HH", width, height)
    i = out.index(b"\x2c", 13)  # image descriptor
    out[i + 5: i + 9] = struct.pack("<HH", width, height)
    return bytes(out)


def catalogue() -> list[tuple[str, bytes, str]]:
    """[(name, bytes, expect)], expect "ok" or "error"; built once per process."""
    return list(_build())


REASONS = {
    "zero_bytes.jpg": "empty file",
    "text_named.jpg": "cannot decode image: UnidentifiedImageError",
    "pdf_named.png": "cannot decode image: UnidentifiedImageError",
    "html_named.jpg": "cannot decode image: UnidentifiedImageError",
    "corrupt_header.jpg": "cannot decode image",
    "corrupt_crc.png": "cannot decode image",
    "truncated_half.jpg": "cannot decode image: truncated",
    "truncated_header.jpg": "cannot decode image",
    "truncated_half.png": "cannot decode image: truncated",
    "truncated_no_iend_and_half_idat.png": "cannot decode image: truncated",
    "no_eoi_marker.jpg": "cannot decode image: truncated",
    "bomb_100000x100000.png": "image too large",
    "bomb_9000x9000.png": "image too large (9000x9000)",
    "bomb_65000x65000.jpg": "image too large",
    "bomb_gif_65535x65535.gif": "image too large",
}


def __getattr__(name):  # PEP 562: CATALOGUE as a dict, built only when asked for
    if name == "CATALOGUE":
        return {n: (b, e) for n, b, e in _build()}
    raise AttributeError(name)
