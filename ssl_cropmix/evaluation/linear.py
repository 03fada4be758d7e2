"""Linear probe on a frozen backbone as a LightningModule (paper App. B.2.2; MAE App. A.2).

:class:`LinearProbeModule` trains a linear head (optionally after ``BatchNorm1d(affine=False)``)
on features of a frozen trunk, either computed from images in every step (the augmented
protocol) or read from features cached once (the fast path). :func:`run_linear_probe` runs it
with a ``Trainer`` on the pretraining's hardware: the global batch is split over the world
size (and gradient accumulation), cached features are extracted shard by shard on every rank
and all-gathered.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, TypeVar

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
from ssl_cropmix.evaluation.data import (
    dist_world_rank,
    extract_features,
    feature_dim,
    feature_loaders,
    shard_loader,
    train_loader as sharded_train_loader,
)
from ssl_cropmix.evaluation.results import EvalResult
from ssl_cropmix.evaluation.lars import LARS
from ssl_cropmix.methods.scaling import warmup_cosine

RecipeT = TypeVar("RecipeT")


@dataclass(frozen=True)
class ProbeRecipe:
    """Hyper-parameters of one linear-probe protocol.

    ``lr = base_lr * batch_size / 256`` with ``batch_size`` the **global** batch (split over
    the world size; ``device_batch_size`` smaller than ``batch_size / world`` accumulates
    gradients). Per-step cosine decay after ``warmup_epochs`` of linear warm-up.
    ``extract_chunk`` images go through the frozen trunk at once inside a step (a 16384-image
    MAE batch is split for the forward pass; the head step takes the whole batch).
    """

    optimizer: Literal["sgd", "lars"]
    base_lr: float
    epochs: int
    warmup_epochs: int
    head_norm: bool  # BatchNorm1d(affine=False) before the linear layer (MAE)
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 0.0
    device_batch_size: int | None = None
    extract_chunk: int = 1024


#: ``moco``: the paper's MoCo/SimSiam protocol as the paper states it (LARS, global batch
#: 4096, initial lr 0.2 = 0.0125 x 4096/256, 90 epochs cosine, no wd). ``moco_simsiam_code``:
#: the same with SimSiam's released lr (0.1 x 4096/256 = 1.6). ``mae``: MAE's linear probe
#: (BN(affine=False) + linear, LARS, blr 0.1, batch 16384, 90 epochs, 10 warm-up).
PROBE_PRESETS: dict[str, ProbeRecipe] = {
    "moco": ProbeRecipe(optimizer="lars", base_lr=0.0125, epochs=90, warmup_epochs=0, head_norm=False, batch_size=4096),
    "moco_simsiam_code": ProbeRecipe(optimizer="lars", base_lr=0.1, epochs=90, warmup_epochs=0, head_norm=False, batch_size=4096),
    "mae": ProbeRecipe(optimizer="lars", base_lr=0.1, epochs=90, warmup_epochs=10, head_norm=True, batch_size=16384),
}


def make_head(dim: int, num_classes: int, head_norm: bool) -> nn.Module:
    """``Linear(dim, num_classes)`` (trunc-normal std 0.01, zero bias: MAE's probe init),
    after ``BatchNorm1d(dim, affine=False)`` when ``head_norm``."""
    linear = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    if head_norm:
        return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)
    return linear


class LinearProbeModule(EvalModule):
    """A linear head on a frozen trunk (or on cached features when ``trunk`` is ``None``).

    The trunk stays in eval mode with ``requires_grad=False`` for the whole run (its BN
    statistics and weights never change). Batches are ``(images, labels)`` or, without trunk,
    ``(features, labels)``.

    Args:
        trunk: feature module ``(B,3,H,W) -> (B,D)``, or ``None`` for cached features.
        feature_dim: ``D``.
        num_classes: head width.
        recipe: optimiser and schedule.

    Shape:
        ``logits(x)``: ``(B,3,H,W)`` or ``(B,D)`` -> ``(B, num_classes)``.
    """

    def __init__(self, trunk: nn.Module | None, feature_dim: int, num_classes: int, recipe: ProbeRecipe) -> None:
        super().__init__(num_classes)
        self.trunk = trunk
        if trunk is not None:
            trunk.requires_grad_(False)
        self.head = make_head(feature_dim, num_classes, recipe.head_norm)
        self.recipe = recipe

    def train(self, mode: bool = True) -> "LinearProbeModule":
        super().train(mode)
        if self.trunk is not None:
            self.trunk.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen features, ``extract_chunk`` images at a time; features pass through."""
        if self.trunk is None:
            return x.float()
        with torch.no_grad():
            out = [self.trunk(c) for c in x.split(self.recipe.extract_chunk)]
        f = torch.cat(out)
        return (f.flatten(1) if f.ndim > 2 else f).float()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Head logits in the head's dtype (bf16 / fp16 under ``precision="*-true"``)."""
        return self.head(self.features(x).to(self.head_dtype))

    @property
    def head_dtype(self) -> torch.dtype:
        """dtype of the head's parameters (the evaluation trainer's precision converts it)."""
        return next(p for p in self.head.parameters()).dtype

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        loss = F.cross_entropy(self.logits(x).float(), y)  # the loss in float32 at every precision
        self.log("probe_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        r = self.recipe
        lr = r.base_lr * r.batch_size / 256
        params = list(self.head.parameters())
        if r.optimizer == "lars":
            opt: torch.optim.Optimizer = LARS(params, lr=lr, weight_decay=r.weight_decay, momentum=r.momentum)
        else:
            opt = torch.optim.SGD(params, lr=lr, momentum=r.momentum, weight_decay=r.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        warm = int(round(total * r.warmup_epochs / r.epochs))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def split_batch(batch_size: int, world: int, device_batch: int | None) -> tuple[int, int]:
    """``(per-device batch, accumulate_grad_batches)`` of a global ``batch_size``.

    Raises:
        ValueError: ``batch_size`` is not ``world x device_batch x accumulate``.
    """
    if device_batch is None:
        if batch_size % world:
            raise ValueError(f"global batch_size={batch_size} is not divisible by the world size {world}")
        return batch_size // world, 1
    if batch_size % (world * device_batch):
        raise ValueError(
            f"global batch_size={batch_size} is not a multiple of world size {world} x device_batch_size={device_batch}"
        )
    return device_batch, batch_size // (world * device_batch)


def check_labels(labels: torch.Tensor | Any, num_classes: int, what: str) -> None:
    """Refuse labels outside ``[0, num_classes)``, naming both values."""
    mx = int(max(labels)) if not isinstance(labels, torch.Tensor) else int(labels.max()) if labels.numel() else -1
    if mx >= num_classes:
        raise ValueError(f"num_classes={num_classes} is below the data's class count ({what} has label {mx}, so >= {mx + 1} classes)")


def check_dataset_labels(loader: Any, num_classes: int, what: str) -> None:
    """:func:`check_labels` on ``loader.dataset.targets`` when the dataset lists its labels."""
    targets = getattr(loader.dataset, "targets", None)
    if targets is not None and len(targets):
        check_labels(list(targets), num_classes, what)


def run_linear_probe(
    pl_module: nn.Module,
    train_loader: Any,
    val_loader: Any,
    num_classes: int,
    recipe: ProbeRecipe,
    cached_features: bool = False,
    generator: torch.Generator | None = None,
    name: str = "custom",
    trainer: pl.Trainer | None = None,
    key: str = "linear",
    seed: int = 0,
    checkpoint: str | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
    defaults: frozenset[str] | set[str] = frozenset(),
) -> EvalResult:
    """Train a linear head on frozen features of ``pl_module`` and evaluate it; call on every rank.

    A deep copy of the module's feature trunk is probed (the module itself is untouched), by
    a new ``Trainer`` on ``trainer``'s hardware (accelerator, devices, strategy, precision;
    ``None``: Lightning's defaults, or ``trainer_kwargs``).

    Args:
        pl_module: any module following the backbone protocol (``evaluation/protocol.py``).
        train_loader: labelled ``(images, labels)`` batches; its dataset is re-sharded per
            rank (with ``cached_features`` give a non-augmenting loader).
        val_loader: labelled validation batches.
        num_classes: classifier width (refused when below the data's class count).
        recipe: optimiser / schedule (see ``PROBE_PRESETS``).
        cached_features: extract features once (every rank its shard, all-gathered) and train
            the head on them.
        generator: if given, its initial seed replaces ``seed``.
        name: preset name, stated in the protocol.
        trainer: the pretraining trainer whose hardware the probe inherits.
        key: metric key (``eval/<key>/top1``).
        seed: seeds head init and shuffling; the caller's RNG state is restored afterwards.
        checkpoint: path recorded in the result.
        trainer_kwargs: extra ``pl.Trainer`` arguments (the commands' ``--trainer.*``).
        defaults: names of ``recipe`` fields the user left at the preset's value; of these,
            ``batch_size`` / ``device_batch_size`` larger than the labelled set shrink to what
            it fills (said once in the log, recorded in ``hparams["adapted"]`` and the
            protocol). Values not named here are the user's and are refused when too large.

    Raises:
        ValueError: no labelled or validation image, or an explicit batch larger than the
            labelled set (:func:`~ssl_cropmix.evaluation.base.plan_batches`), before training.
    """
    t0 = time.perf_counter()
    if generator is not None:
        seed = int(generator.initial_seed())
    world, rank = dist_world_rank()
    check_dataset_labels(train_loader, num_classes, "the labelled training set")
    if cached_features:
        split_batch(recipe.batch_size, world, None)
    else:
        split_batch(recipe.batch_size, world, recipe.device_batch_size)
    plan = plan_batches(
        f"LinearProbe[{name}]", len(train_loader.dataset), len(val_loader.dataset), world, recipe.batch_size,
        None if cached_features else recipe.device_batch_size, "batch_size" in defaults, "device_batch_size" in defaults,
    )
    if plan.note:
        say_once(plan.note)
        recipe = replace(recipe, batch_size=plan.batch_size,
                         device_batch_size=plan.device_batch if recipe.device_batch_size is not None else None)
    device_batch, accumulate = plan.device_batch, plan.accumulate
    trunk = copy_feature_module(pl_module)
    dev = trunk_device(trunk)
    if not cached_features and (dev.type == "cpu" or plan.note):
        say_once(
            f"LinearProbe[{name}]: the augmented protocol runs the frozen trunk forward on all "
            f"{len(train_loader.dataset)} labelled images in every one of its {recipe.epochs} epochs (that forward is "
            f"the probe's whole cost); on a CPU or a small labelled set pick the fast protocol, "
            f"LinearProbe(cached_features=True) (`probe --cached-features`, configs/eval/linear_probe_fast.yaml): "
            f"features extracted once, then {recipe.epochs} epochs of head steps (not comparable to papers' probes)"
        )
    etrainer = protocol_trainer(trainer, recipe.epochs, accumulate, **(trainer_kwargs or {}))
    extract_s = 0.0
    with isolated_rng(seed, dev):
        if cached_features:
            train_xy = extract_features(etrainer, trunk, train_loader, min(recipe.extract_chunk, train_loader.batch_size or 256))
            val_xy = extract_features(etrainer, trunk, val_loader)
            check_labels(train_xy[1], num_classes, "the labelled training set")
            extract_s = time.perf_counter() - t0
            n_train, dim = int(train_xy[0].shape[0]), int(train_xy[0].shape[1])
            module = LinearProbeModule(None, dim, num_classes, recipe)
            train, val = feature_loaders(train_xy, val_xy, device_batch, world, rank, seed)
        else:
            dim = feature_dim(trunk, val_loader, dev)
            n_train = len(train_loader.dataset)
            module = LinearProbeModule(trunk, dim, num_classes, recipe)
            train = sharded_train_loader(train_loader, device_batch, world, rank, seed)
            val = shard_loader(val_loader, world, rank, val_loader.batch_size)
        t1 = time.perf_counter()
        with warnings.catch_warnings():
            # the trunk is frozen in eval mode on purpose (LinearProbeModule.train); Lightning's
            # notice about it would only make users doubt the protocol
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
            etrainer.fit(module, train_dataloaders=train, val_dataloaders=val)
        train_s = time.perf_counter() - t1
    lr = recipe.base_lr * recipe.batch_size / 256
    if cached_features:
        what = (
            f"cached features extracted once without augmentation, each of {world} rank(s) extracting its "
            f"shard, all-gathered ({n_train} distinct training images); head on full per-device batches of features"
        )
    else:
        what = f"features of augmented batches every step (trunk forward in chunks of {recipe.extract_chunk})"
    protocol = (
        f"linear[{name}]: {recipe.optimizer.upper()} lr={lr:g} (base {recipe.base_lr:g} x {recipe.batch_size}/256), "
        f"global batch {recipe.batch_size} = {world} device(s) x {device_batch}"
        f"{f' x {accumulate} accumulated' if accumulate > 1 else ''}, {recipe.epochs} epochs "
        f"({recipe.warmup_epochs} warm-up) cosine, wd={recipe.weight_decay:g}, "
        f"{'BN(affine=False)+' if recipe.head_norm else ''}linear; {what}"
    )
    hp = {**asdict(recipe), "preset": name, "lr": lr, "cached_features": cached_features,
          "per_device_batch": device_batch, "accumulate_grad_batches": accumulate, "seed": seed,
          "num_classes": num_classes}
    protocol += plan.record(hp)
    lrs = [h[0] for h in module.lr_history]
    return protocol_result(
        module, t0, key=key, protocol=protocol, epochs=recipe.epochs, train_samples=n_train, hparams=hp,
        checkpoint=checkpoint,
        details={"feature_dim": dim, "extract_seconds": round(extract_s, 3), "train_seconds": round(train_s, 3),
                 "optimizer_steps": len(lrs), "lr_first": lrs[0] if lrs else None, "lr_last": lrs[-1] if lrs else None},
    )


def recipe_with(base: RecipeT, **over: Any) -> RecipeT:
    """``base`` (any recipe dataclass) with the non-``None`` entries of ``over`` replaced."""
    return replace(base, **{k: v for k, v in over.items() if v is not None})


__all__ = ["LinearProbeModule", "PROBE_PRESETS", "ProbeRecipe", "make_head", "recipe_with", "run_linear_probe", "split_batch"]
