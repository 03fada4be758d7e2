"""Masked reconstruction loss vs. the MAE reference (He et al., 2022, ``forward_loss``)."""

from __future__ import annotations

import pytest
import torch

from ssl_cropmix.losses.reconstruction import masked_reconstruction_loss, normalize_patches


def _reference_norm_pix(target: torch.Tensor) -> torch.Tensor:
    # facebookresearch/mae models_mae.py forward_loss, written out element by element
    out = torch.empty_like(target)
    for b in range(target.shape[0]):
        for n in range(target.shape[1]):
            v = target[b, n]
            mean = v.sum() / v.numel()
            var = ((v - mean) ** 2).sum() / (v.numel() - 1)  # unbiased, as torch.var
            out[b, n] = (v - mean) / (var + 1e-6) ** 0.5
    return out


def test_norm_pix_target_matches_handwritten_reference():
    target = torch.rand(2, 5, 48, dtype=torch.float64) * 3 + 1
    torch.testing.assert_close(normalize_patches(target), _reference_norm_pix(target), rtol=0, atol=1e-12)
    # constant patch: eps keeps it finite (0 / sqrt(1e-6) = 0)
    const = torch.full((1, 1, 48), 0.5, dtype=torch.float64)
    assert torch.equal(normalize_patches(const), torch.zeros_like(const))


def test_loss_is_mean_over_masked_patches():
    pred, target = torch.randn(2, 6, 12), torch.randn(2, 6, 12)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 0, 0]])
    per_patch = ((pred - target) ** 2).mean(-1)
    expected = (per_patch * mask).sum() / mask.sum()
    got = masked_reconstruction_loss(pred, target, mask=mask, norm_pix=False)
    torch.testing.assert_close(got, expected)
    # visible patches (mask 0) do not matter
    target2 = target.clone()
    target2[mask == 0] += 5.0
    torch.testing.assert_close(masked_reconstruction_loss(pred, target2, mask=mask, norm_pix=False), expected)
    # norm_pix: the same with the reference target
    normed = masked_reconstruction_loss(pred, target, mask=mask, norm_pix=True)
    per_patch = ((pred - _reference_norm_pix(target)) ** 2).mean(-1)
    torch.testing.assert_close(normed, (per_patch * mask).sum() / mask.sum())


def test_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        masked_reconstruction_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="mask must have shape"):
        masked_reconstruction_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), mask=torch.ones(1, 3))
