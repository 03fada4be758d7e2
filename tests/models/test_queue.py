"""MomentumQueue: FIFO writes at the pointer, wrap-around, checkpointed state."""

from __future__ import annotations

import pytest
import torch

from ssl_cropmix.models.queue import MomentumQueue


def test_initial_queue_is_normalised_and_pointer_zero():
    q = MomentumQueue(10, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(q.queue.norm(dim=1), torch.ones(10))
    assert int(q.ptr) == 0


def test_enqueue_writes_exact_keys_at_pointer_and_wraps():
    q = MomentumQueue(10, 3)
    before = q.queue.clone()
    a = torch.arange(12.0).view(4, 3)
    q.enqueue(a)
    assert torch.equal(q.queue[:4], a) and torch.equal(q.queue[4:], before[4:])
    assert int(q.ptr) == 4
    b = torch.arange(100.0, 121.0).view(7, 3)  # 10 not divisible by 7: wraps around
    q.enqueue(b)
    assert torch.equal(q.queue[4:10], b[:6])
    assert torch.equal(q.queue[0], b[6])
    assert torch.equal(q.queue[1:4], a[1:])
    assert int(q.ptr) == 1


def test_queue_and_pointer_are_in_state_dict_and_restore():
    q = MomentumQueue(6, 2)
    q.enqueue(torch.ones(4, 2))
    sd = q.state_dict()
    assert set(sd) == {"queue", "ptr"}
    r = MomentumQueue(6, 2)
    r.load_state_dict(sd)
    assert torch.equal(r.queue, q.queue) and int(r.ptr) == 4


def test_errors():
    with pytest.raises(ValueError, match="size"):
        MomentumQueue(0, 4)
    with pytest.raises(ValueError, match="dim"):
        MomentumQueue(4, -1)
    q = MomentumQueue(4, 2)
    with pytest.raises(ValueError, match="cannot enqueue 5 keys"):
        q.enqueue(torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        q.enqueue(torch.zeros(3, 3))
