"""The bad-input catalogue (tests/badfiles.py) through preprocess.decode + to_gray48: every entry
either becomes a 48x48 uint8 face with the right pixels, or a DecodeError with a short reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps
from PIL.PngImagePlugin import PngInfo

import badfiles
from fer_ray import preprocess

CATALOGUE = badfiles.catalogue()
BY_NAME = {name: (data, expect) for name, data, expect in CATALOGUE}


def gray48(name: str) -> np.ndarray:
    return preprocess.to_gray48(preprocess.decode(BY_NAME[name][0]))


def test_catalogue_is_well_formed():
    names = [n for n, _, _ in CATALOGUE]
    assert len(names) == len(set(names)) >= 25
    assert {e for _, _, e in CATALOGUE} == {"ok", "error"}
    assert all(isinstance(b, bytes) for _, b, _ in CATALOGUE)
    assert sum(len(b) for _, b, _ in CATALOGUE) < 1_000_000  # small enough to upload in every test
    assert set(badfiles.REASONS) <= {n for n, _, e in CATALOGUE if e == "error"}
    assert badfiles.CATALOGUE == {n: (b, e) for n, b, e in CATALOGUE}


@pytest.mark.parametrize("name", [n for n, _, e in CATALOGUE if e == "ok"])
def test_ok_entries_become_a_48x48_face(name):
    arr = gray48(name)
    assert arr.shape == (48, 48) and arr.dtype == np.uint8


@pytest.mark.parametrize("name", [n for n, _, e in CATALOGUE if e == "error"])
def test_error_entries_raise_a_short_reason(name):
    with pytest.raises(preprocess.DecodeError) as info:
        preprocess.decode(BY_NAME[name][0])
    reason = str(info.value)
    assert reason and len(reason) <= 60 and "\n" not in reason and "BytesIO" not in reason
    if name in badfiles.REASONS:
        assert reason.startswith(badfiles.REASONS[name]), reason


@pytest.mark.parametrize("name", ["exif_orientation_6.jpg", "exif_orientation_8.jpg"])
def test_exif_rotation_gives_the_upright_image(name):
    img = preprocess.decode(BY_NAME[name][0])
    assert img.size == (120, 80)  # stored 80x120, upright 120 wide
    arr = preprocess.to_gray48(img)
    corners = [arr[:10, :10], arr[:10, -10:], arr[-10:, :10], arr[-10:, -10:]]
    means = [c.mean() for c in corners]
    assert means[0] > 200 and max(means[1:]) < 120, means  # the bright block is top-left


def test_16bit_is_scaled_not_clipped():
    arr = gray48("gray16.png")  # a 0..65535 ramp in row-major order
    assert arr[0, 0] < 10 and arr[-1, -1] > 245
    assert 110 < arr.mean() < 145 and (arr == 255).mean() < 0.05
    rgb48 = gray48("rgb48.png")  # a 0..65535 horizontal ramp in every channel
    assert rgb48[:, 0].max() < 10 and rgb48[:, -1].min() > 245


def test_cmyk_keeps_its_tones():
    arr = gray48("cmyk.jpg")  # the upright pattern: bright top-left block on a dark gradient
    assert arr[:10, :10].mean() > 200 and arr[-10:, -10:].mean() < 120


def test_transparency_is_composited_on_white():
    for name in ("rgba.png", "palette_transparent.png"):
        arr = gray48(name)
        assert arr[:5, :5].min() == 255 and arr[-5:, -5:].min() == 255, name  # transparent border
        assert arr[20:28, 20:28].mean() < 200, name  # opaque middle
    assert abs(int(gray48("palette_transparent.png")[24, 24]) - 100) <= 2


def test_animated_gif_uses_the_first_frame():
    arr = gray48("animated.gif")  # frames: 230, 20, 120
    assert abs(float(arr.mean()) - 230) < 3


def test_one_pixel_and_huge_images():
    assert (gray48("one_pixel.png") == 200).all()
    img = preprocess.decode(BY_NAME["huge_legal_4000x3000.jpg"][0])
    assert img.size == (4000, 3000)
    arr = preprocess.to_gray48(img)
    assert arr[:10, :10].mean() > 200 and arr[-10:, -10:].mean() < 120


def test_bomb_is_refused_from_the_header():
    data = BY_NAME["bomb_100000x100000.png"][0]
    assert len(data) < 2000  # claims 10 GPixel in a few hundred bytes
    with pytest.raises(preprocess.DecodeError, match="image too large"):
        preprocess.decode(data)
    with pytest.raises(preprocess.DecodeError, match=r"image too large \(9000x9000\)"):
        preprocess.decode(BY_NAME["bomb_9000x9000.png"][0])


def test_truncated_stays_an_error_even_if_someone_enabled_loading_truncated():
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # e.g. set by another library in a worker process
    try:
        with pytest.raises(preprocess.DecodeError, match="truncated"):
            preprocess.decode(BY_NAME["truncated_half.jpg"][0])
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def test_to_gray_keeps_size_and_matches_to_gray48():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8))
    gray = preprocess.to_gray(rgb)
    assert gray.mode == "L" and gray.size == (90, 60)
    want = np.asarray(gray.resize((48, 48), Image.BILINEAR, reducing_gap=3.0))
    assert (preprocess.to_gray48(rgb) == want).all()
    l_img = Image.new("L", (5, 5), 7)
    assert preprocess.to_gray(l_img) is l_img  # already gray: no copy


def test_every_ok_entry_survives_a_png_round_trip_of_its_face():
    """The 48x48 output is a plain 8-bit image: what the prepared data and the labeling job store."""
    for name, data, expect in CATALOGUE:
        if expect == "ok":
            arr = gray48(name)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "PNG")
            assert (np.asarray(Image.open(io.BytesIO(buf.getvalue()))) == arr).all()


def test_decode_is_quiet_and_unchanged_under_warnings_as_errors():
    """Pillow warnings (corrupt EXIF, ...) neither reach the job's logs nor, under -W error,
    turn a good image into an error row."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, data, expect in CATALOGUE:
            try:
                preprocess.to_gray48(preprocess.decode(data))
                got = "ok"
            except preprocess.DecodeError:
                got = "error"
            assert got == expect, name


def _pillow(data: bytes) -> Image.Image:
    """What Pillow alone makes of the bytes: the reference for every file decode takes."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the broken-EXIF entry's warning
        return preprocess.to_gray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))


def _plain_files() -> dict[str, bytes]:
    """Files a bucket of crops and photos is made of, which decode hands to OpenCV."""
    face = badfiles._face_like(96)
    rgb = np.stack([face, np.roll(face, 7, 1), 255 - face], -1)
    files = {}
    for q in (20, 75, 95):
        files[f"gray_q{q}.jpg"] = badfiles._save(Image.fromarray(face[:48, :48]), "JPEG", quality=q)
        for sub in (0, 2):
            files[f"rgb_q{q}_sub{sub}.jpg"] = badfiles._save(Image.fromarray(rgb[:, :80]), "JPEG", quality=q, subsampling=sub)
    files["progressive.jpg"] = badfiles._save(Image.fromarray(rgb), "JPEG", quality=80, progressive=True)
    files["optimized.jpg"] = badfiles._save(Image.fromarray(rgb), "JPEG", quality=80, optimize=True)
    files["gray.png"] = badfiles._save(Image.fromarray(face), "PNG")
    files["rgb_dpi.png"] = badfiles._save(Image.fromarray(rgb[:50]), "PNG", dpi=(72, 72))
    info = PngInfo()
    info.add_text("Software", "camera")
    files["gray_text.png"] = badfiles._save(Image.fromarray(face[:30]), "PNG", pnginfo=info)
    return files


@pytest.mark.parametrize("name", sorted(_plain_files()))
def test_plain_files_go_through_opencv_with_pillows_pixels(name):
    data = _plain_files()[name]
    img = preprocess._decode_plain(data, preprocess.MAX_PIXELS)
    assert img is not None, "a plain JPEG/PNG should take the fast path"
    ref = Image.open(io.BytesIO(data))
    assert img.mode == ref.mode and img.size == ref.size
    assert (np.asarray(img) == np.asarray(ref.convert(ref.mode))).all()


@pytest.mark.parametrize("name", [n for n, _, e in CATALOGUE if e == "ok"])
def test_every_ok_entry_has_the_pixels_pillow_gives(name):
    data = BY_NAME[name][0]
    assert (np.asarray(preprocess.to_gray(preprocess.decode(data))) == np.asarray(_pillow(data))).all()


@pytest.mark.parametrize("name", ["cmyk.jpg", "exif_orientation_6.jpg", "exif_broken.jpg", "rgba.png", "la.png",
                                  "palette_transparent.png", "gray16.png", "rgb48.png", "bilevel.png",
                                  "truncated_half.jpg", "no_eoi_marker.jpg", "truncated_half.png",
                                  "truncated_no_iend_and_half_idat.png", "corrupt_crc.png", "bomb_9000x9000.png",
                                  "bomb_65000x65000.jpg", "corrupt_header.jpg", "truncated_header.jpg"])
def test_what_only_pillow_reads_right_is_left_to_pillow(name):
    """Transparency, EXIF, CMYK, 16 bits and every broken or oversized file keep Pillow's rules."""
    assert preprocess._decode_plain(BY_NAME[name][0], preprocess.MAX_PIXELS) is None


def test_a_png_with_bytes_after_its_end_is_left_to_pillow():
    data = BY_NAME["one_pixel.png"][0]
    assert preprocess._decode_plain(data, preprocess.MAX_PIXELS) is not None
    assert preprocess._decode_plain(data + b"\0", preprocess.MAX_PIXELS) is None


def test_a_large_jpeg_decodes_reduced_and_remembers_its_size():
    """JPEG's DCT scaling: a 4000x3000 photo decodes at 2000x1500 when faces are all it is for."""
    import io

    from fer_ray.faces import faces
    from fer_ray.preprocess import PHOTO_SIDE, decode, full_size

    from conftest import real_face

    photo = Image.new("RGB", (4000, 3000), (150, 160, 170))
    photo.paste(real_face("plain", 600).convert("RGB"), (2500, 900))
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    full, small = decode(buf.getvalue()), decode(buf.getvalue(), reduce_to=PHOTO_SIDE)
    assert full.size == full_size(full) == (4000, 3000)
    assert small.size == (2000, 1500) and full_size(small) == (4000, 3000)
    (a,), (b,) = faces(full, "detect"), faces(small, "detect")
    assert np.abs(np.subtract(a.box, b.box)).max() <= 12  # in pixels of the file, either way
    assert decode(buf.getvalue(), reduce_to=2001).size == (4000, 3000)  # never below reduce_to
    # through Pillow (EXIF orientation 6: turned a quarter), the size is the upright file's
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    photo.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    turned = decode(buf.getvalue(), reduce_to=PHOTO_SIDE)
    assert turned.size == (2000, 1500) and full_size(turned) == (4000, 3000)
