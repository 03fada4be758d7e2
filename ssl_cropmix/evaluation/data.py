"""Sharded data for evaluation: no duplicated samples, features gathered on every rank.

* :class:`ShardSampler`: rank ``r`` of ``w`` gets indices ``r, r + w, ...`` (no padding, so
  every sample is counted exactly once; shards differ in length by at most one).
* :func:`train_loader`: the labelled loader re-batched for one device of a global batch
  (``DistributedSampler``: shuffled, padded to equal length as DDP training needs).
* :func:`extract_features`: every rank extracts its shard with the evaluation ``Trainer``'s
  ``predict`` (its device and precision), then the shards are all-gathered and put back in
  dataset order, so every rank holds identical ``(N, D)`` features.
* :class:`TensorBatches`: batches of in-memory features without per-sample indexing.
* :func:`precision_inputs`: the pretraining trainer's precision for a forward pass that
  runs outside Lightning's loops (the kNN monitor's and the cached probes' own loaders).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

from ssl_cropmix.evaluation.protocol import frozen


def dist_world_rank() -> tuple[int, int]:
    """``(world_size, rank)`` of the live default process group, ``(1, 0)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def floating_dtype(module: nn.Module) -> torch.dtype | None:
    """dtype of ``module``'s first floating-point parameter or buffer (``None``: it has none)."""
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


@contextlib.contextmanager
def precision_inputs(module: Any) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """Run forward passes of ``module`` outside Lightning's loops at its trainer's precision.

    Lightning converts the batches of its own loops (``precision_plugin.convert_input``) and
    wraps ``training_step`` in ``precision_plugin.forward_context()``; a callback reading its
    own loader (float32 images) must do the same, or ``precision="bf16-true"`` / ``"16-true"``
    (a bf16 / fp16 module) fails with ``Input type (float) and bias type (BFloat16)``, and
    ``"16-mixed"`` / ``"bf16-mixed"`` would run without autocast. Inside the context the
    trainer's ``forward_context()`` is active (autocast for ``-mixed``) and the yielded
    function converts an input tensor the way the trainer's loops do. Without an attached
    trainer (a module evaluated by hand), floating inputs are cast to the module's own
    floating dtype and no autocast is entered.

    Yields:
        ``convert(x) -> x`` for input tensors ``(B, 3, H, W)``.
    """
    trainer = getattr(module, "_trainer", None) if isinstance(module, pl.LightningModule) else None
    plugin = getattr(trainer, "precision_plugin", None)
    if plugin is not None:
        with plugin.forward_context():
            yield plugin.convert_input
        return
    dtype = floating_dtype(module) if isinstance(module, nn.Module) else None

    def convert(x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype) if dtype is not None and x.is_floating_point() else x

    yield convert


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of ``range(n)``: an unpadded, in-order shard.

    Args:
        n: dataset length.
        world: number of shards.
        rank: this shard.
    """

    def __init__(self, n: int, world: int = 1, rank: int = 0) -> None:
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
        self.n, self.world, self.rank = int(n), int(world), int(rank)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


class _Indexed(Dataset):
    """``(x, y, i)`` for ``(x, y) = dataset[i]``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        x, y = self.dataset[i]
        return x, y, i


def rebatch(
    loader: DataLoader, sampler: Sampler, batch_size: int | None = None, dataset: Any = None, drop_last: bool = False
) -> DataLoader:
    """``loader``'s dataset (or ``dataset``), workers and collate function with a new sampler /
    batch size."""
    return DataLoader(
        dataset if dataset is not None else loader.dataset,
        batch_size=batch_size or loader.batch_size or 1,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=drop_last,
        worker_init_fn=loader.worker_init_fn,
    )


def train_loader(
    loader: DataLoader, device_batch: int, world: int, rank: int, seed: int = 0, dataset: Any = None,
    drop_last: bool = False,
) -> DataLoader:
    """``loader``'s dataset (or ``dataset``) for one of ``world`` devices: shuffled (``seed``,
    re-shuffled every epoch by Lightning's ``set_epoch``) and padded to equal shard lengths,
    ``device_batch`` images per step; ``drop_last``: the tail is dropped instead (shards
    and batches, so every batch is full)."""
    ds = dataset if dataset is not None else loader.dataset
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
    return rebatch(loader, sampler, device_batch, ds, drop_last)


def shard_loader(loader: DataLoader, world: int, rank: int, batch_size: int | None = None) -> DataLoader:
    """``loader``'s dataset, unpadded in-order shard ``rank`` of ``world`` (evaluation)."""
    return rebatch(loader, ShardSampler(len(loader.dataset), world, rank), batch_size)


class _Extractor(pl.LightningModule):
    """``predict_step`` returns ``(features float32, labels, indices)`` of a frozen trunk."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk

    def predict_step(self, batch: Any, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, i = batch
        f = self.trunk(x)
        return f.flatten(1).float() if f.ndim > 2 else f.float(), y, i


def all_gather_rows(t: torch.Tensor, world: int) -> list[torch.Tensor]:
    """Every rank's ``t`` in rank order (same number of dims, any sizes: torchmetrics'
    ``gather_all_tensors`` pads, gathers and trims), ``[t]`` alone when ``world`` is 1."""
    if world == 1:
        return [t]
    from torchmetrics.utilities.distributed import gather_all_tensors

    return gather_all_tensors(t)


def extract_features(
    trainer: pl.Trainer, trunk: nn.Module, loader: DataLoader, batch_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of every sample of ``loader.dataset``, identical on every rank.

    Each rank extracts its :class:`ShardSampler` shard through ``trainer.predict`` (so the
    evaluation trainer's device and precision apply; ``trunk`` is put in eval mode), then the
    shards are all-gathered and ordered by dataset index. Call on every rank.

    Shape:
        returns ``(N, D)`` float32 features and ``(N,)`` long labels on the trainer's device.
    """
    world, rank = dist_world_rank()
    shard = rebatch(loader, ShardSampler(len(loader.dataset), world, rank), batch_size, _Indexed(loader.dataset))
    with frozen(trunk):
        outs = trainer.predict(_Extractor(trunk), shard, return_predictions=True)
    device = trainer.strategy.root_device
    if outs:
        f = torch.cat([o[0] for o in outs]).to(device)
        y = torch.cat([torch.as_tensor(o[1]) for o in outs]).to(device, torch.long)
        i = torch.cat([torch.as_tensor(o[2]) for o in outs]).to(device, torch.long)
    else:  # an empty shard (fewer samples than ranks): still take part in the gathers
        dim = feature_dim(trunk, loader, device)
        f, y, i = torch.zeros(0, dim, device=device), torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, dtype=torch.long, device=device)
    if world > 1:
        fs, ys, is_ = all_gather_rows(f, world), all_gather_rows(y, world), all_gather_rows(i, world)
        f, y, i = torch.cat(fs), torch.cat(ys), torch.cat(is_)
    order = torch.argsort(i)
    return f[order].contiguous(), y[order].contiguous()


def feature_dim(trunk: nn.Module, loader: Any, device: torch.device) -> int:
    """``D`` of ``trunk``'s flattened features of ``loader.dataset[0]`` (trunk frozen in eval
    mode for the call, so its BN statistics and mode are left as they were)."""
    x, _ = loader.dataset[0]
    with frozen(trunk), precision_inputs(trunk) as convert:  # a bf16 / fp16 trunk takes its own dtype
        return int(trunk(convert(torch.as_tensor(x)[None].to(device))).flatten(1).shape[1])


class EpochBatchSampler(BatchSampler):
    """``BatchSampler`` forwarding ``set_epoch`` to its sampler (Lightning calls it on
    ``dataloader.sampler`` every epoch; with ``batch_size=None`` that is this object)."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class TensorBatches(Dataset):
    """``dataset[list_of_indices] -> (x[idx], y[idx])``: one tensor index per batch.

    Used with ``DataLoader(TensorBatches(x, y), sampler=BatchSampler(...), batch_size=None)``
    so cached features are batched without per-sample Python indexing.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.as_tensor(list(idx), device=self.x.device)
        return self.x[i], self.y[i]


def feature_loaders(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    device_batch: int,
    world: int,
    rank: int,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Loaders over cached features: train shuffled + padded per rank, val unpadded shards."""
    tr = TensorBatches(*train)
    va = TensorBatches(*val)
    tr_s = EpochBatchSampler(DistributedSampler(tr, num_replicas=world, rank=rank, shuffle=True, seed=seed), device_batch, False)
    va_s = BatchSampler(ShardSampler(len(va), world, rank), max(device_batch, 1024), False)
    return DataLoader(tr, sampler=tr_s, batch_size=None), DataLoader(va, sampler=va_s, batch_size=None)
