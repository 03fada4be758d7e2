"""Batch ResizeMix: pasted area tau^2, soft labels, torchvision MixUp/CutMix call convention."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ssl_cropmix.transforms import ResizeMix


def test_pastes_rolled_batch_resized_by_tau_and_mixes_labels():
    B, C, H, W, K = 6, 3, 32, 40, 10
    x = torch.rand(B, C, H, W)
    y = torch.tensor([0, 3, 3, 9, 1, 2])
    for seed in range(10):
        rm = ResizeMix(K, generator=torch.Generator().manual_seed(seed))
        p = rm.sample_params((H, W), torch.Generator().manual_seed(seed))
        out, soft = rm(x, y)
        top, left, h, w = p["box"]
        tau = p["tau"]
        assert 0.1 <= tau <= 0.8
        area = h * w / (H * W)
        assert abs(area - tau**2) <= (0.5 * (H + W) + 0.25) / (H * W)  # tau^2 up to rounding
        # pixels: outside the box untouched, inside the resized previous image of the batch
        expected = x.clone()
        expected[..., top : top + h, left : left + w] = F.resize(x.roll(1, 0), [h, w], antialias=True)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
        # labels: own class weighted by the unpasted area, pasted class by the pasted area
        ref = torch.nn.functional.one_hot(y, K).float() * (1 - area)
        ref += torch.nn.functional.one_hot(y.roll(1, 0), K).float() * area
        torch.testing.assert_close(soft, ref)
        torch.testing.assert_close(soft.sum(1), torch.ones(B))
        assert soft.shape == (B, K)


def test_same_convention_as_torchvision_mixup_cutmix():
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    choice = v2.RandomChoice([v2.MixUp(num_classes=5), v2.CutMix(num_classes=5), ResizeMix(5)])
    for _ in range(6):
        out, soft = choice(x, y)
        assert out.shape == x.shape and soft.shape == (4, 5)
        torch.testing.assert_close(soft.sum(1), torch.ones(4))
    img, soft = ResizeMix(num_classes=None)(tv_tensors.Image(x), torch.eye(4))  # already soft labels
    assert isinstance(img, tv_tensors.Image) and soft.shape == (4, 4)
    u8 = (x * 255).to(torch.uint8)
    out, _ = ResizeMix(5)(u8, y)
    assert out.dtype == torch.uint8


def test_deterministic_under_seed():
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    a = ResizeMix(4, generator=torch.Generator().manual_seed(0))(x, y)
    b = ResizeMix(4, generator=torch.Generator().manual_seed(0))(x, y)
    c = ResizeMix(4, generator=torch.Generator().manual_seed(1))(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(num_classes=4, tau_range=(0.0, 0.5)), ["tau_range", "(0.0, 0.5)"]),
        (dict(num_classes=4, tau_range=(0.5, 1.2)), ["tau_range", "1.2"]),
        (dict(num_classes=4, tau_range=(0.8, 0.1)), ["tau_range", "(0.8, 0.1)"]),
        (dict(num_classes=0), ["num_classes", "0"]),
        (dict(num_classes=4, interpolation="box"), ["interpolation", "box"]),
    ],
)
def test_bad_settings(kwargs, words):
    with pytest.raises(ValueError) as e:
        ResizeMix(**kwargs)
    assert all(w in str(e.value) for w in words)


def test_bad_inputs():
    with pytest.raises(ValueError, match="num_classes"):
        ResizeMix()(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="batch"):
        ResizeMix(3)(torch.rand(3, 8, 8), torch.tensor([0, 1]))
