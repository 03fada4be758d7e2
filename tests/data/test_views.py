"""View recipes (ssl_cropmix/data/views.py): one normalisation, torch-only RNG, small images."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2

from ssl_cropmix.data.views import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomGaussianBlurPIL,
    ToNormalizedTensor,
    mae_view,
    moco_query,
    moco_v2_augmentation,
    moco_views,
    probe_views,
)

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


@pytest.fixture
def photo(demo_photos):
    return demo_photos[0].resize((96, 80))


def test_to_normalized_tensor_matches_torchvision(photo):
    ref = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(ToNormalizedTensor()(photo), ref(photo), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"std must be > 0 for every channel, got \(1, 0, 1\)"):
        ToNormalizedTensor(std=(1, 0, 1))


@pytest.mark.parametrize("query", ["plain", "cropmix", "scalemix", "contrastive"])
@pytest.mark.parametrize("size", [32, 64])
def test_every_view_is_normalised_exactly_once_at_the_end(photo, query, size):
    """Same seed, stats (0, 1) vs ImageNet stats: outputs differ by exactly one affine map."""
    torch.manual_seed(3)
    q0, k0 = moco_views(query, size, mean=(0, 0, 0), std=(1, 1, 1))(photo)
    torch.manual_seed(3)
    q1, k1 = moco_views(query, size)(photo)
    for a, b in ((q0, q1), (k0, k1)):
        assert a.shape == (3, size, size) and b.dtype == torch.float32
        assert a.min() >= 0 and a.max() <= 1  # un-normalised values live in [0, 1]
        torch.testing.assert_close(b, (a - MEAN) / STD, atol=1e-5, rtol=0)
    assert not torch.equal(q0, k0)


@pytest.mark.parametrize("query", ["plain", "cropmix", "scalemix", "contrastive"])
def test_views_use_torch_rng_only(photo, query):
    outs = []
    for other in (1, 2):
        random.seed(other)
        np.random.seed(other)
        torch.manual_seed(11)
        outs.append(moco_views(query, 32)(photo))
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    torch.manual_seed(12)
    assert not torch.equal(moco_views(query, 32)(photo)[0], outs[0][0])


def test_blur_params_distribution_and_pil_equivalence(photo):
    t = RandomGaussianBlurPIL(p=0.5, sigma=(0.1, 2.0), generator=torch.Generator().manual_seed(0))
    ps = [t.make_params([photo]) for _ in range(4000)]
    applied = np.array([p["apply"] for p in ps])
    sig = np.array([p["sigma"] for p in ps])
    assert abs(applied.mean() - 0.5) < 0.03
    assert sig.min() >= 0.1 and sig.max() <= 2.0 and abs(sig.mean() - 1.05) < 0.03
    out = t.transform(photo, {"apply": True, "sigma": 1.3})
    assert np.array_equal(np.asarray(out), np.asarray(photo.filter(ImageFilter.GaussianBlur(1.3))))
    u8 = v2.functional.pil_to_tensor(photo)
    assert torch.equal(t.transform(u8, {"apply": True, "sigma": 1.3}), v2.functional.pil_to_tensor(out))
    with pytest.raises(ValueError, match=r"sigma must satisfy 0 < min <= max, got \(2.0, 1.0\)"):
        RandomGaussianBlurPIL(sigma=(2.0, 1.0))


def test_small_image_variants_drop_blur_and_never_crop_to_nothing():
    tiny = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8))
    for q in ("plain", "cropmix", "scalemix", "contrastive"):
        qv, kv = moco_views(q, 32)(tiny)  # image smaller than the crop
        assert qv.shape == kv.shape == (3, 32, 32) and torch.isfinite(qv).all()
    assert not any(isinstance(t, RandomGaussianBlurPIL) for t in moco_views("plain", 32).key.transforms)
    assert any(isinstance(t, RandomGaussianBlurPIL) for t in moco_views("plain", 224).key.transforms)
    img32 = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    train, val = probe_views(32)
    torch.testing.assert_close(val(img32), ToNormalizedTensor()(img32))  # no centre crop on CIFAR
    assert train(img32).shape == (3, 32, 32) and train(tiny).shape == (3, 32, 32)


def test_large_probe_and_mae_views(photo):
    train, val = probe_views(64, small_image=False)
    assert train(photo).shape == val(photo).shape == (3, 64, 64)
    big = photo.resize((300, 200))
    # val = resize shorter side to 64/0.875 = 73 then centre crop 64
    ref = v2.Compose([v2.Resize(73), v2.CenterCrop(64), ToNormalizedTensor()])
    torch.testing.assert_close(val(big), ref(big))
    for kind in ("rrc", "cropmix_mixup", "cropmix_cutmix"):
        assert mae_view(kind, 48)(photo).shape == (3, 48, 48)
    with pytest.raises(ValueError, match="kind must be one of .* got 'bad'"):
        mae_view("bad")


def test_contrastive_crops_each_get_colour_augmentation(photo, monkeypatch):
    calls = []
    colour = moco_v2_augmentation(32, normalize=False, crop=False, blur_prob=0.0)
    q = moco_query("contrastive", 32)
    mix = q.transforms[0]
    assert any(isinstance(t, v2.ColorJitter) for t in mix.view_transform.transforms[2].transforms)

    class Recorder(torch.nn.Module):
        def forward(self, x):
            calls.append((type(x), list(v2.functional.get_size(x))))
            return colour(x)

    monkeypatch.setattr(mix, "view_transform", Recorder())
    out = q(photo)
    # 32 px: the PIL backend hands each PIL crop to the per-crop augmentation
    assert calls == [(Image.Image, [32, 32])] * 2 and out.dtype == torch.float32 and out.shape == (3, 32, 32)
    calls.clear()
    q224 = moco_query("contrastive", 224)  # tensor backend: uint8 tensor crops
    monkeypatch.setattr(q224.transforms[0], "view_transform", Recorder())
    assert q224(photo.resize((300, 240))).shape == (3, 224, 224)
    assert calls == [(torch.Tensor, [224, 224])] * 2
    with pytest.raises(ValueError, match="query must be one of .* got 'mixup'"):
        moco_views("mixup")


def test_small_cropmix_query_picks_its_backend_by_source_size():
    """32-px generic Mixup queries: PIL backend from small sources, tensor backend from large
    ones (the NumPy backend's cost grows with the source area: ~25 ms per 32-px view from a
    300-px image), decided per image by source and output size."""
    from ssl_cropmix.data.views import PIL_BACKEND_MAX_AREA_RATIO, BySourceSize, moco_query

    mix = moco_query("cropmix", 32).transforms[0]
    assert isinstance(mix, BySourceSize) and (mix.small.backend, mix.large.backend) == ("pil", "tensor")
    assert mix.max_pixels == PIL_BACKEND_MAX_AREA_RATIO * 32 * 32
    used = []
    mix.small, mix.large = (lambda im: used.append("small")), (lambda im: used.append("large"))
    for side in (32, 150, 300):
        mix(Image.new("RGB", (side, side)))
    assert used == ["small", "small" if 150 * 150 <= mix.max_pixels else "large", "large"]
    assert not isinstance(moco_query("cropmix", 224).transforms[0], BySourceSize)  # 224 px: tensor backend
    out = moco_query("cropmix", 32)(Image.new("RGB", (300, 200), (200, 30, 30)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
