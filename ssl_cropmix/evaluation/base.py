"""What every evaluation LightningModule shares: top-k counting over unpadded shards,
the hardware it ran on, the learning rates it used, and the run helper."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

import pytorch_lightning as pl
import torch
from torch import nn

from ssl_cropmix.evaluation.results import EvalResult, hardware_of


class EvalModule(pl.LightningModule):
    """Base of the protocol modules.

    Subclasses implement ``logits(x) -> (B, C)`` and ``training_step``. Validation counts
    top-1 / top-5 hits on each rank's unpadded shard and sums them over ranks, so
    ``val_top1`` / ``val_top5`` (percent) are the full validation set's accuracies on every
    rank. ``ran_under`` records the trainer's hardware at fit start and the device of the
    parameters during the first training step; ``lr_history`` holds each optimizer step's
    learning rate of every parameter group.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.num_classes = num_classes
        self.ran_under: dict[str, Any] = {}
        self.lr_history: list[list[float]] = []
        self.val_top1: float = float("nan")
        self.val_top5: float = float("nan")
        self.val_count: int = 0
        self._hits = torch.zeros(3, dtype=torch.float64)

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_fit_start(self) -> None:
        self.ran_under = hardware_of(self.trainer)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.ran_under.get("device") is None:
            p = next((q for q in self.parameters() if q.requires_grad), None)
            self.ran_under["device"] = str(p.device) if p is not None else str(self.device)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.lr_history.append([float(g["lr"]) for g in optimizer.param_groups])

    # ----------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._hits = torch.zeros(3, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self.logits(x).float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == y[:, None]
        self._hits += torch.stack([hit[:, 0].sum(), hit.any(1).sum(), torch.tensor(len(y), device=hit.device)]).to(self._hits)

    def on_validation_epoch_end(self) -> None:
        hits = self._hits
        if torch.distributed.is_available() and torch.distributed.is_initialized() and self.trainer.world_size > 1:
            hits = self.trainer.strategy.reduce(hits.clone(), reduce_op="sum")
        n = float(hits[2])
        self.val_count = int(n)
        self.val_top1 = 100.0 * float(hits[0]) / max(n, 1.0)
        self.val_top5 = 100.0 * float(hits[1]) / max(n, 1.0)


@contextmanager
def isolated_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run with torch's RNG seeded to ``seed`` and restore the caller's RNG afterwards, so an
    evaluation launched mid-pretraining does not shift the pretraining's random stream."""
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def protocol_result(module: EvalModule, t0: float, **fields: Any) -> EvalResult:
    """The :class:`EvalResult` of a fitted protocol module.

    Takes top-1 / top-5, the validation count and the hardware from ``module``, and the wall
    seconds since ``t0`` (a ``time.perf_counter()`` reading); ``fields`` are the protocol's own
    (``key``, ``protocol``, ``epochs``, ``train_samples``, ``hparams``, ``checkpoint``, ``details``).
    """
    return EvalResult(
        top1=module.val_top1, top5=module.val_top5, val_samples=module.val_count, hardware=dict(module.ran_under),
        wall_seconds=round(time.perf_counter() - t0, 3), **fields,
    )


def trunk_device(trunk: nn.Module) -> torch.device:
    """Device of the trunk's first parameter or buffer (CPU for an empty module)."""
    from ssl_cropmix.callbacks.utils import module_device  # lazy: callbacks import this module

    return module_device(trunk)


def protocol_trainer(
    pretrain_trainer: pl.Trainer | None, epochs: int, accumulate: int = 1, **overrides: Any
) -> pl.Trainer:
    """The evaluation ``Trainer`` of one protocol: the pretraining's hardware
    (:func:`~ssl_cropmix.evaluation.runner.evaluation_trainer`), ``epochs`` epochs,
    validation once at the end, our own per-rank samplers."""
    from ssl_cropmix.evaluation.runner import evaluation_trainer

    kw: dict[str, Any] = dict(
        max_epochs=epochs,
        check_val_every_n_epoch=epochs,
        accumulate_grad_batches=accumulate,
        use_distributed_sampler=False,
        log_every_n_steps=1,
    )
    kw.update(overrides)
    return evaluation_trainer(pretrain_trainer, **kw)


class _ForwardFeatures(nn.Module):
    """Makes ``module.forward_features`` the forward (a probed module with no ``backbone``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.forward_features(x)


def copy_feature_module(pl_module: nn.Module) -> nn.Module:
    """A deep copy of what computes ``pl_module``'s features, detached from any trainer.

    ``backbone`` modules are copied alone (called through their ``forward``); a module
    with ``forward_features`` is copied whole (its trainer reference is dropped for the
    copy) and wrapped so that calling it calls ``forward_features``. A copy is evaluated so
    that the evaluation trainer's device moves, DDP wrapping and teardown never touch the
    pretraining module.
    """
    import copy

    from ssl_cropmix.callbacks.utils import get_backbone

    backbone = get_backbone(pl_module)
    if backbone is not pl_module:
        return copy.deepcopy(backbone)
    trainer = pl_module.__dict__.get("_trainer")
    try:
        if trainer is not None:
            pl_module._trainer = None  # type: ignore[assignment]
        return _ForwardFeatures(copy.deepcopy(pl_module))
    finally:
        if trainer is not None:
            pl_module._trainer = trainer  # type: ignore[assignment]
