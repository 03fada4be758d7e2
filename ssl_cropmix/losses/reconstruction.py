"""Masked-patch reconstruction loss of MAE (He et al., 2022, Sec. 3, "Reconstruction target").

The masked-patch MSE is written here because ``lightly.loss`` has no masked MAE loss; the
``norm_pix_loss`` target is lightly's ``normalize_mean_var``.
"""

from __future__ import annotations

import torch
from lightly.models.utils import normalize_mean_var


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalised pixels, the MAE ``norm_pix_loss`` target.

    Exactly the reference: ``(target - mean) / (var + eps) ** .5`` with the unbiased
    per-patch variance ``target.var(dim=-1, keepdim=True)``.

    Shape:
        ``(..., P)`` -> ``(..., P)`` (P = patch_size**2 * channels).
    """
    return normalize_mean_var(target, dim=-1, eps=eps)


def masked_reconstruction_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    norm_pix: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Mean squared error over masked patches only.

    Args:
        pred: predicted pixels of the patches.
        target: true pixels of the same patches.
        mask: optional ``(B, N)`` 0/1 weights (1 = masked, counted in the loss); without it
            every given patch counts (``pred``/``target`` already gathered at the masked
            indices, as in ``MAECropMix``).
        norm_pix: normalise each target patch by its mean and variance first.
        eps: variance epsilon of the normalisation (1e-6, reference).

    Returns:
        Scalar loss: per-patch MSE (mean over pixels), averaged over the masked patches.

    Shape:
        pred, target: ``(B, N, P)``; mask: ``(B, N)``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if norm_pix:
        target = normalize_patches(target, eps)
    per_patch = (pred - target).pow(2).mean(dim=-1)
    if mask is None:
        return per_patch.mean()
    if mask.shape != per_patch.shape:
        raise ValueError(f"mask must have shape {tuple(per_patch.shape)}, got {tuple(mask.shape)}")
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum()
