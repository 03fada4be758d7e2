"""Semi-supervised fine-tuning on 1 % / 10 % of the labels as a LightningModule (paper App. B.2.3).

The whole trunk and a new linear head are trained with SGD (momentum 0.9, no weight decay)
and **separate learning rates** for trunk and head, decayed x0.1 at epochs 30, 60, 90 of 100
(scaled with ``epochs`` when only the epoch count is changed). One ``MultiStepLR`` scales
both parameter groups, so their ratio holds for the whole schedule (the public reference
code overwrote the head lr with the trunk lr every epoch).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from ssl_cropmix.evaluation.base import (
    EvalModule,
    copy_feature_module,
    isolated_rng,
    plan_batches,
    protocol_result,
    protocol_trainer,
    say_once,
    trunk_device,
)
from ssl_cropmix.evaluation.data import dist_world_rank, feature_dim, shard_loader, train_loader as sharded_train_loader
from ssl_cropmix.evaluation.linear import check_dataset_labels, split_batch
from ssl_cropmix.evaluation.results import EvalResult


@dataclass(frozen=True)
class FineTuneRecipe:
    """Hyper-parameters of semi-supervised fine-tuning (paper App. B.2.3).

    ``batch_size`` is the global batch (split over the world size). ``bn_mode="sync"``
    converts the trunk's BatchNorm layers to ``SyncBatchNorm`` when the run has more than
    one process (on every rank, inside the evaluation trainer's setup).
    """

    label_fraction: float | None
    trunk_lr: float
    head_lr: float
    epochs: int = 100
    milestones: tuple[int, ...] = (30, 60, 90)
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 256
    bn_mode: Literal["local", "sync"] = "local"


#: 10%: trunk 0.01 / head 0.2; 1%: trunk 0.02 / head 5.0.
FINETUNE_PRESETS: dict[str, FineTuneRecipe] = {
    "10pct": FineTuneRecipe(label_fraction=0.1, trunk_lr=0.01, head_lr=0.2),
    "1pct": FineTuneRecipe(label_fraction=0.01, trunk_lr=0.02, head_lr=5.0),
}

#: Epoch count the preset milestones refer to.
PRESET_EPOCHS = 100


def scale_milestones(milestones: tuple[int, ...], epochs: int, reference_epochs: int = PRESET_EPOCHS) -> tuple[int, ...]:
    """``milestones`` of a ``reference_epochs`` schedule moved to an ``epochs`` schedule
    (``round(m * epochs / reference_epochs)``, duplicates and zeros dropped)."""
    out = sorted({max(1, round(m * epochs / reference_epochs)) for m in milestones})
    return tuple(m for m in out if m <= epochs)


class SemiSupervisedFineTuneModule(EvalModule):
    """``trunk -> Linear`` trained end to end with SGD and per-group learning rates.

    Args:
        trunk: feature module ``(B,3,H,W) -> (B,D)`` (fine-tuned in place: pass a copy).
        feature_dim: ``D``.
        num_classes: head width.
        recipe: learning rates and schedule.

    Shape:
        ``logits(x)``: ``(B,3,H,W)`` -> ``(B, num_classes)``.
    """

    def __init__(self, trunk: nn.Module, feature_dim: int, num_classes: int, recipe: FineTuneRecipe) -> None:
        super().__init__(num_classes)
        self.trunk = trunk
        # fine-tuned end to end, BatchNorm included: a copy of a module in eval mode (as
        # load_module returns it) would otherwise train with frozen BN statistics
        trunk.requires_grad_(True).train()
        self.head = nn.Linear(feature_dim, num_classes)
        # N(0, 0.01) weights and zero bias, the fine-tuning head init of the reference recipe
        # (PyTorch's default uniform init would give std 1/sqrt(3 D), 0.026 for D = 512).
        nn.init.normal_(self.head.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.head.bias)
        self.recipe = recipe
        self.epoch_lrs: list[tuple[float, float]] = []
        self.samples_seen_per_epoch = 0
        self._seen = 0

    def setup(self, stage: str) -> None:
        world, _ = dist_world_rank()
        if self.recipe.bn_mode == "sync" and world > 1 and self.trainer.world_size > 1:
            self.trunk = nn.SyncBatchNorm.convert_sync_batchnorm(self.trunk)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        f = self.trunk(x)
        return self.head(f.flatten(1) if f.ndim > 2 else f)

    def on_train_epoch_start(self) -> None:
        opt = self.optimizers()
        groups = opt.optimizer.param_groups if hasattr(opt, "optimizer") else opt.param_groups
        self.epoch_lrs.append((float(groups[0]["lr"]), float(groups[1]["lr"])))
        self._seen = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.logits(x).float(), y)  # float32 loss under bf16 / fp16 precision
        self._seen += len(y)
        self.log("finetune_loss", loss, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        seen = torch.tensor(float(self._seen), device=self.device)
        if self.trainer.world_size > 1:
            seen = self.trainer.strategy.reduce(seen, reduce_op="sum")
        self.samples_seen_per_epoch = int(seen)

    def configure_optimizers(self) -> Any:
        r = self.recipe
        opt = torch.optim.SGD(
            [{"params": list(self.trunk.parameters()), "lr": r.trunk_lr}, {"params": list(self.head.parameters()), "lr": r.head_lr}],
            lr=r.trunk_lr, momentum=r.momentum, weight_decay=r.weight_decay,
        )
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(r.milestones), gamma=r.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def fraction_key(prefix: str, label_fraction: float | None, subset_file: str | None = None) -> str:
    """``finetune_1pct``, ``finetune_10pct``, ``finetune_subset-<stem>``, ``finetune`` (all labels)."""
    if subset_file is not None:
        from pathlib import Path

        return f"{prefix}_subset-{Path(subset_file).stem}"
    if label_fraction is None or label_fraction == 1:
        return prefix
    return f"{prefix}_{100 * label_fraction:g}pct"


def labelled_images(n: int, full_train_count: int | None) -> str:
    """``"<n> labelled images"``, with ``" = <p>% of <full>"`` when the full split's size is known."""
    if full_train_count:
        return f"{n} labelled images = {100 * n / full_train_count:.3g}% of {full_train_count}"
    return f"{n} labelled images"


def finetune(
    trunk: nn.Module,
    train_loader: Any,
    val_loader: Any,
    num_classes: int,
    recipe: FineTuneRecipe,
    name: str = "custom",
    trainer: pl.Trainer | None = None,
    key: str | None = None,
    full_train_count: int | None = None,
    seed: int = 0,
    checkpoint: str | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
    defaults: frozenset[str] | set[str] = frozenset(),
) -> EvalResult:
    """Fine-tune ``trunk`` (modified in place: pass a copy) + a new linear head; every rank.

    Args:
        trunk: feature module; :func:`~ssl_cropmix.evaluation.base.copy_feature_module`
            makes one from a probed module.
        train_loader: the labelled subset, augmented, ``(images, labels)``; re-sharded per rank.
        val_loader: validation batches.
        num_classes: head width (refused when below the data's class count).
        recipe: learning rates and schedule.
        name: preset name, stated in the protocol.
        trainer: the pretraining trainer whose hardware the run inherits.
        key: metric key (default from the label fraction: ``finetune_10pct``, ...).
        full_train_count: size of the whole labelled training split, to state the real
            fraction of images kept.
        seed: seeds head init and shuffling (caller's RNG restored afterwards).
        checkpoint: path recorded in the result.
        trainer_kwargs: extra ``pl.Trainer`` arguments.
        defaults: names of ``recipe`` fields left at the preset's value; ``batch_size`` among
            them shrinks to the labelled subset when larger (said once, recorded); an explicit
            one larger than the subset is refused.

    Raises:
        ValueError: no labelled or validation image, or an explicit batch larger than the
            subset, before training.
    """
    t0 = time.perf_counter()
    world, rank = dist_world_rank()
    check_dataset_labels(train_loader, num_classes, "the labelled training subset")
    split_batch(recipe.batch_size, world, None)
    asked = "all labels" if recipe.label_fraction is None else f"label_fraction={recipe.label_fraction:g}"
    plan = plan_batches(
        f"SemiSupervisedFineTune[{name}]", len(train_loader.dataset), len(val_loader.dataset), world, recipe.batch_size,
        batch_default="batch_size" in defaults, lr_scaled=False,
        change=f"use more labelled images ({asked}: a larger label fraction or subset file)",
    )
    if plan.note:
        say_once(plan.note)
        recipe = replace(recipe, batch_size=plan.batch_size)
    device_batch = plan.device_batch
    dev = trunk_device(trunk)
    dim = feature_dim(trunk, val_loader, dev)
    etrainer = protocol_trainer(trainer, recipe.epochs, 1, **(trainer_kwargs or {}))
    with isolated_rng(seed, dev):
        module = SemiSupervisedFineTuneModule(trunk, dim, num_classes, recipe)
        train = sharded_train_loader(train_loader, device_batch, world, rank, seed)
        val = shard_loader(val_loader, world, rank, val_loader.batch_size)
        etrainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    n = len(train_loader.dataset)
    frac = labelled_images(n, full_train_count)
    asked = "all labels" if recipe.label_fraction is None else f"{100 * recipe.label_fraction:g}% asked"
    protocol = (
        f"finetune[{name}]: {frac} ({asked}), SGD m={recipe.momentum:g} wd={recipe.weight_decay:g}, "
        f"trunk lr {recipe.trunk_lr:g} / head lr {recipe.head_lr:g}, x{recipe.gamma:g} at epochs "
        f"{list(recipe.milestones)} of {recipe.epochs}, global batch {recipe.batch_size} = {world} x {device_batch}, "
        f"BN {recipe.bn_mode}"
    )
    hp = {**asdict(recipe), "preset": name, "per_device_batch": device_batch, "seed": seed, "num_classes": num_classes,
          "real_label_fraction": (n / full_train_count) if full_train_count else None}
    protocol += plan.record(hp)
    return protocol_result(
        module, t0, key=key or fraction_key("finetune", recipe.label_fraction), protocol=protocol,
        epochs=recipe.epochs, train_samples=n, hparams=hp, checkpoint=checkpoint,
        details={"lr_history": [list(p) for p in module.epoch_lrs], "samples_seen_per_epoch": module.samples_seen_per_epoch,
                 "feature_dim": dim},
    )


__all__ = ["FINETUNE_PRESETS", "FineTuneRecipe", "SemiSupervisedFineTuneModule", "copy_feature_module", "finetune",
           "fraction_key", "scale_milestones"]
