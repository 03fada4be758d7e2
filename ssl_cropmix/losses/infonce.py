"""InfoNCE with a queue of negatives (MoCo, He et al. 2020, Eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce_queue_loss(
    query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    """Cross-entropy over ``1 + K`` logits: the positive key first, then the queue.

    Inputs are L2-normalised here. lightly's ``NTXentLoss`` with a memory bank computes the
    same quantity but owns a non-persistent bank (see ``models/queue.py``), so the logits
    are written out directly (one matmul, as in the reference MoCo code).

    Args:
        query: query embeddings (gradients flow through these).
        key: positive keys (detached by the caller).
        queue: negative keys.
        temperature: softmax temperature tau (0.2 in MoCo v2).

    Shape:
        query, key: ``(B, D)``; queue: ``(K, D)``; returns a scalar.

    Raises:
        ValueError: non-positive temperature or mismatched shapes.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if query.shape != key.shape or query.ndim != 2 or queue.ndim != 2 or queue.shape[1] != query.shape[1]:
        raise ValueError(
            f"expected query, key (B, D) and queue (K, D), got {tuple(query.shape)}, "
            f"{tuple(key.shape)}, {tuple(queue.shape)}"
        )
    q = F.normalize(query, dim=1)
    k = F.normalize(key, dim=1).to(q.dtype)
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.to(q.dtype).t()
    logits = torch.cat([pos, neg], dim=1) / temperature
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits.float(), target)
