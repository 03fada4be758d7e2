"""The backbone protocol: how evaluation code finds features in any LightningModule.

A module is probe-able when it has either

* a ``forward_features(x) -> (B, D)`` method (takes precedence), or
* a ``backbone: nn.Module`` attribute mapping ``(B, 3, H, W) -> (B, D)`` (``(B, D, 1, 1)``
  and other trailing singleton shapes are flattened).

``MoCoCropMix``, ``MAECropMix`` and ``CropMixClassifier`` all expose ``backbone``; a user's
own module needs only one of the two to work with every callback in this package.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def get_backbone(pl_module: Any) -> nn.Module:
    """Return the module whose parameters/buffers make up the representation.

    Raises:
        TypeError: when ``pl_module`` exposes neither ``backbone`` nor ``forward_features``.
    """
    backbone = getattr(pl_module, "backbone", None)
    if isinstance(backbone, nn.Module):
        return backbone
    if callable(getattr(pl_module, "forward_features", None)) and isinstance(pl_module, nn.Module):
        return pl_module
    raise TypeError(
        f"{type(pl_module).__name__} cannot be probed: give it a `backbone` attribute "
        "(nn.Module mapping (B,3,H,W) -> (B,D)) or a `forward_features(x) -> (B,D)` method."
    )


def extract_features(pl_module: Any, x: torch.Tensor) -> torch.Tensor:
    """Features ``(B, D)`` of images ``x`` ``(B, 3, H, W)`` following the protocol above.

    Runs under whatever grad mode the caller set; callers wrap it in ``torch.no_grad()``.
    """
    fwd = getattr(pl_module, "forward_features", None)
    if callable(fwd):
        feats = fwd(x)
    else:
        feats = get_backbone(pl_module)(x)
    if feats.ndim > 2:
        feats = feats.flatten(1)
    return feats
