"""Projection heads."""

from __future__ import annotations

from lightly.models.modules import MoCoProjectionHead
from torch import nn


def asym_moco_projection_head(input_dim: int, hidden_dim: int = 2048, output_dim: int = 128) -> nn.Sequential:
    """The improved MoCo v2 projection head used by Asym-Siam and CropMix (App. B.2).

    ``Linear(input_dim, hidden_dim) + BN + ReLU`` followed by the MoCo v2 two-layer MLP
    ``hidden_dim -> hidden_dim -> output_dim`` (lightly's ``MoCoProjectionHead`` with
    ``num_layers=2, batch_norm=False``). lightly's ``num_layers=3`` would put batch norm
    on every layer including the output (MoCo v3), hence the explicit first block.

    Shape:
        ``(B, input_dim) -> (B, output_dim)``.

    Raises:
        ValueError: a dimension that is not a positive integer.
    """
    for name, v in (("input_dim", input_dim), ("hidden_dim", hidden_dim), ("output_dim", output_dim)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    return nn.Sequential(
        nn.Linear(input_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        MoCoProjectionHead(hidden_dim, hidden_dim, output_dim, num_layers=2, batch_norm=False),
    )
