import numpy as np
import pytest
import torch

from fer_ray import augment, preprocess
from conftest import face_like


@pytest.fixture
def batch():
    return preprocess.normalize(np.stack([face_like(i) for i in range(8)]))


def test_flip_twice_is_identity_and_flip_mirrors(batch):
    once = augment.hflip(batch, p=1.0)
    assert torch.equal(once[..., 0], batch[..., -1])
    assert torch.equal(augment.hflip(once, p=1.0), batch)


def test_zero_strengths_are_identity(batch):
    assert torch.equal(augment.augment(batch, augment.NONE), batch)
    assert torch.equal(augment.hflip(batch, 0.0), batch)
    assert torch.equal(augment.affine(batch, 0, 0, 0), batch)
    assert torch.equal(augment.random_erase(batch, 0.0), batch)
    t, w = torch.eye(7)[torch.arange(8) % 7], torch.ones(8)
    x2, t2, w2 = augment.mix(batch, t, w, 0.0, 0.0)
    assert x2 is batch and t2 is t and w2 is w


def test_identity_affine_warp_reproduces_the_image(batch):
    # rotate/shift/zoom that round to the identity: the warp itself must not blur or shift
    out = augment.affine(batch, rotate=1e-6, shift=1e-9, zoom=1e-9)
    assert torch.allclose(out, batch, atol=1e-3)


def test_default_augment_keeps_shape_dtype_and_range(batch):
    torch.manual_seed(0)
    out = augment.augment(batch, augment.resolve({}))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert not torch.equal(out, batch)
    # bilinear + border padding + erasing with 0 stays inside the batch's value range (or 0)
    assert out.min() >= min(batch.min(), 0) - 1e-5 and out.max() <= max(batch.max(), 0) + 1e-5


def test_rotation_moves_pixels():
    torch.manual_seed(1)
    x = torch.zeros(4, 1, 48, 48)
    x[..., 20:28, 34:42] = 1.0  # an off-centre square
    out = augment.affine(x, rotate=45, shift=0, zoom=0)
    assert (out - x).abs().sum() > 10


def test_erase_fills_a_box_of_the_requested_area(batch):
    torch.manual_seed(2)
    out = augment.random_erase(batch + 5.0, p=1.0, area=(0.1, 0.1), value=0.0)
    erased = (out == 0).flatten(1).sum(1).float() / (48 * 48)
    assert ((erased > 0.05) & (erased < 0.16)).all(), erased


def test_mix_blends_targets_and_weights(batch):
    torch.manual_seed(3)
    t = torch.eye(7)[torch.arange(8) % 7]
    w = torch.arange(1.0, 9.0)
    for mixup, cutmix in ((0.4, 0.0), (0.0, 1.0)):
        x2, t2, w2 = augment.mix(batch, t, w, mixup, cutmix)
        assert x2.shape == batch.shape
        assert torch.allclose(t2.sum(1), torch.ones(8))
        assert w2.min() >= 1 - 1e-6 and w2.max() <= 8 + 1e-6


def test_resolve_validates():
    assert augment.resolve({"rotate": 5})["rotate"] == 5.0
    with pytest.raises(ValueError, match="unknown augment option"):
        augment.resolve({"rotation": 5})
    with pytest.raises(ValueError, match="probability"):
        augment.resolve({"flip": 2})


def test_robust_transforms_change_what_they_say(batch):
    torch.manual_seed(0)
    px = batch * preprocess.STD + preprocess.MEAN
    blurred = augment.blur(batch, p=1.0)
    # a blur lowers the energy of neighbouring-pixel differences
    assert (blurred.diff(dim=-1) ** 2).mean() < 0.7 * (batch.diff(dim=-1) ** 2).mean()
    low = augment.lowres(batch, p=1.0)
    assert (low.diff(dim=-1) ** 2).mean() < (batch.diff(dim=-1) ** 2).mean()
    darker = augment.photometric(batch, brightness=0.3) * preprocess.STD + preprocess.MEAN
    assert not torch.allclose(darker.mean((1, 2, 3)), px.mean((1, 2, 3)), atol=0.01)
    flat = augment.photometric(batch, contrast=0.9) * preprocess.STD + preprocess.MEAN
    assert flat.min() >= 0 and flat.max() <= 1  # stays on the 0..1 pixel scale
    for fn in (augment.blur, augment.lowres, augment.jpeg):
        assert torch.equal(fn(batch, p=0.0), batch)
    assert torch.equal(augment.photometric(batch), batch)


@pytest.mark.parametrize("quality", [15, 30, 60])
def test_jpeg_matches_pillow(quality):
    import io

    import matplotlib.cbook
    from PIL import Image

    img = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("L").resize((48, 48))
    px = np.asarray(img)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    pillow = np.asarray(Image.open(buf)).astype(np.float32)
    out = augment.jpeg(preprocess.normalize(px[None]), p=1.0, quality=(quality, quality))
    ours = ((out * preprocess.STD + preprocess.MEAN) * 255).round().squeeze().numpy()
    # as close to Pillow's round trip as rounding allows, and far from the untouched image
    assert np.abs(ours - pillow).mean() < 1.0
    assert np.abs(px - pillow).mean() > 5.0


def test_aspect_stretches_one_axis(batch):
    torch.manual_seed(0)
    out = augment.affine(batch, aspect=0.5)
    assert out.shape == batch.shape and not torch.equal(out, batch)


def test_robust_options_are_validated():
    with pytest.raises(ValueError, match="blur is a probability"):
        augment.resolve({"blur": 2})
    with pytest.raises(ValueError, match="contrast must be < 1"):
        augment.resolve({"contrast": 1.5})
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        augment.resolve({"gamma": -1})
