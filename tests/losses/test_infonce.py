"""InfoNCE with a queue equals a hand-written per-sample reference (1 + K logits, target 0)."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_cropmix.losses.infonce import infonce_queue_loss


def _reference(q, k, queue, t):
    total = 0.0
    for i in range(q.shape[0]):
        qi = q[i] / q[i].norm()
        ki = k[i] / k[i].norm()
        logits = [float(qi @ ki) / t] + [float(qi @ (n / n.norm())) / t for n in queue]
        m = max(logits)
        lse = m + math.log(sum(math.exp(v - m) for v in logits))
        total += lse - logits[0]
    return total / q.shape[0]


def test_loss_matches_hand_written_reference():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    queue = torch.nn.functional.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=1)
    got = infonce_queue_loss(q, k, queue, temperature=0.2)
    assert got.item() == pytest.approx(_reference(q, k, queue, 0.2), rel=1e-6)


def test_loss_is_small_when_positive_dominates_and_gradients_flow_to_query_only():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queue = torch.tensor([[-1.0, 0.0], [0.0, -1.0]])
    loss = infonce_queue_loss(q, k, queue, temperature=0.05)
    # positive logit 20, negatives 0 and -20 -> loss = log(1 + e^-20 + e^-40)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-20) + math.exp(-40)), abs=1e-7)
    loss.backward()
    assert q.grad is not None and not k.requires_grad


@pytest.mark.parametrize("t", [0.0, -1.0])
def test_bad_temperature(t):
    with pytest.raises(ValueError, match="temperature"):
        infonce_queue_loss(torch.randn(2, 3), torch.randn(2, 3), torch.randn(4, 3), t)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="queue"):
        infonce_queue_loss(torch.randn(2, 3), torch.randn(2, 3), torch.randn(4, 5))
