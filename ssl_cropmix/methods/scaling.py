"""Effective batch size and linear learning-rate scaling, shared by the methods.

``lr = base_lr x effective_batch / 256`` with ``effective_batch = per-device batch x world
size (devices x nodes) x accumulate_grad_batches`` (Goyal et al., 2017; the MoCo v2 and MAE
recipes both state their lr this way).
"""

from __future__ import annotations

import math

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info


def batch_size_of(loader: Any) -> int | None:
    """The per-step batch size of a DataLoader (``None`` when it has none)."""
    bs = getattr(loader, "batch_size", None)
    if bs is None and getattr(loader, "batch_sampler", None) is not None:
        bs = getattr(loader.batch_sampler, "batch_size", None)
    return int(bs) if bs is not None else None


def effective_batch_size(trainer: pl.Trainer) -> int:
    """Per-device batch x world size x gradient accumulation of the current fit.

    Raises:
        ValueError: the batch size cannot be found (pass an explicit ``lr`` then).
    """
    bs = batch_size_of(getattr(trainer, "train_dataloader", None))
    if bs is None:
        bs = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
    if bs is None:  # the CombinedLoader is not built yet at configure_optimizers: ask its source
        source = trainer.fit_loop._data_source
        if source.is_defined():
            bs = batch_size_of(source.dataloader())
    if bs is None:
        raise ValueError("could not determine the batch size for lr scaling; pass lr= explicitly")
    return int(bs) * max(1, trainer.world_size) * int(trainer.accumulate_grad_batches)


def scaled_lr(name: str, trainer: pl.Trainer, base_lr: float, lr: float | None) -> tuple[int, float]:
    """``(effective batch, lr)``: ``lr`` if given, else ``base_lr x effective / 256``; the
    arithmetic is printed once (rank 0) so a user can check it in the log."""
    effective = effective_batch_size(trainer)
    value = float(lr) if lr is not None else base_lr * effective / 256
    rank_zero_info(
        f"{name}: effective batch {effective} (per-device batch x {trainer.world_size} "
        f"processes x {trainer.accumulate_grad_batches} accumulation) -> lr {value:.6g}"
        + ("" if lr is not None else f" (= {base_lr} x {effective}/256)")
    )
    return effective, value


#: hparams key of the lr a fit computed. Not ``lr``: that init argument means "absolute lr,
#: no scaling", so recording the scaled value under it would pin the lr of any run rebuilt
#: from the saved hparams to this run's batch size.
SCALED_LR_KEY = "scaled_lr"


def log_lr_scaling(module: pl.LightningModule) -> None:
    """Record ``module.effective_batch_size`` and ``module.scaled_lr`` (set by
    ``configure_optimizers`` from :func:`scaled_lr`; nothing is logged when unset) as
    ``effective_batch_size`` and :data:`SCALED_LR_KEY` with every logger of ``module``, next
    to its hparams; call once, at train start. The hparam ``lr`` itself is untouched."""
    effective = getattr(module, "effective_batch_size", None)
    if effective is None:
        return
    for logger in module.loggers:
        logger.log_hyperparams({"effective_batch_size": effective, SCALED_LR_KEY: getattr(module, "scaled_lr", None)})


def warmup_cosine(step: int, total: int, warmup: int = 0) -> float:
    """Learning-rate factor at ``step``: linear warm-up over ``warmup`` steps, then a half
    cosine to 0 at ``total`` (and 0 after it). MAE's ``lr_sched``; MoCo v2 with
    ``warmup=0``; the linear probe's schedule."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))
