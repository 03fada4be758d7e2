"""The MoCo queue of negative keys as checkpointed module state.

Hand-written instead of lightly's ``MemoryBankModule`` (lightly 1.6) because there the
bank and pointer are registered with ``persistent=False``, so they are *not* in
``state_dict()`` and a resumed run would restart from a random queue; it also drops the
keys that do not fit at the end of the bank instead of wrapping around. Gathering across
processes reuses lightly's ``concat_all_gather``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightly.models.utils import concat_all_gather
from torch import nn


class MomentumQueue(nn.Module):
    """FIFO queue of ``size`` L2-normalised keys of dimension ``dim`` (He et al. 2020, Sec. 3.2).

    ``queue`` (size, dim) and ``ptr`` (1,) are persistent buffers: saved in checkpoints
    and restored on resume. ``enqueue`` writes the keys of *all* processes (all-gather,
    in rank order) at the pointer, wrapping around the end.

    Args:
        size: number of keys K (65536 in MoCo).
        dim: key dimension (128 in MoCo v2).
        gather_distributed: all-gather keys from every process before enqueueing.
        generator: torch generator for the random initial queue.

    Raises:
        ValueError: ``size`` or ``dim`` not a positive int.
    """

    queue: torch.Tensor
    ptr: torch.Tensor

    def __init__(
        self, size: int, dim: int, gather_distributed: bool = True, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        for name, v in (("size", size), ("dim", dim)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.size = size
        self.dim = dim
        self.gather_distributed = gather_distributed
        init = torch.randn(size, dim, generator=generator)
        self.register_buffer("queue", nn.functional.normalize(init, dim=1))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (of all processes) at the pointer and advance it (mod ``size``).

        Shape:
            keys: ``(B, dim)`` per process; ``B * world_size`` rows are written.

        Raises:
            ValueError: more keys in one step than the queue holds, or wrong dimension.
        """
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"keys must have shape (B, {self.dim}), got {tuple(keys.shape)}")
        keys = keys.detach()
        if self.gather_distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            keys = concat_all_gather(keys.contiguous())
        n = keys.shape[0]
        if n > self.size:
            raise ValueError(f"cannot enqueue {n} keys into a queue of size {self.size}")
        # stays on the device: reading the pointer as a Python int would sync every step
        idx = (torch.arange(n, device=self.queue.device) + self.ptr) % self.size
        self.queue.index_copy_(0, idx, keys.to(self.queue.dtype))
        self.ptr.add_(n).remainder_(self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, gather_distributed={self.gather_distributed}"
