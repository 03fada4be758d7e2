"""Semi-supervised fine-tuning on 1% / 10% of the labels (paper Appendix B.2.3).

The whole backbone and a new linear head are trained with SGD (momentum 0.9, no weight
decay) and **separate learning rates** for trunk and head, decayed x0.1 at epochs 30, 60, 90
of 100. One ``MultiStepLR`` scales both parameter groups, so their ratio is kept through the
whole schedule (the public reference code overwrote the head lr with the trunk lr every
epoch). Like ``LinearProbe``, the fine-tuning is a small plain-PyTorch loop, never a
recursive ``trainer.fit``; as a callback it works on a deep copy of the backbone, so the
pretrained module is left untouched.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from ssl_cropmix.callbacks.utils import (
    report_result,
    get_backbone,
    module_device,
    resolve_provider,
    topk_accuracies,
)


@dataclass(frozen=True)
class FineTuneRecipe:
    """Hyper-parameters of semi-supervised fine-tuning (paper App. B.2.3)."""

    label_fraction: float | None
    trunk_lr: float
    head_lr: float
    epochs: int = 100
    milestones: tuple[int, ...] = (30, 60, 90)
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 256


#: 10%: trunk 0.01 / head 0.2; 1%: trunk 0.02 / head 5.0.
FINETUNE_PRESETS: dict[str, FineTuneRecipe] = {
    "10pct": FineTuneRecipe(label_fraction=0.1, trunk_lr=0.01, head_lr=0.2),
    "1pct": FineTuneRecipe(label_fraction=0.01, trunk_lr=0.02, head_lr=5.0),
}


@dataclass
class FineTuneResult:
    """Outcome; ``lr_history[e] = (trunk_lr, head_lr)`` used during epoch ``e``."""

    protocol: str
    top1: float
    top5: float
    train_samples: int
    samples_seen_per_epoch: int
    val_samples: int
    total_seconds: float
    lr_history: list[tuple[float, float]] = field(default_factory=list)
    pretrain_epoch: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return asdict(self)


def _features(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``trunk(x)`` flattened to ``(B, D)``.

    Always the trunk's ``forward``: a backbone's ``forward_features`` may be something else
    (timm's returns the unpooled ``(B, C, h, w)`` map); modules probed through their own
    ``forward_features`` are wrapped by :func:`copy_feature_module`.
    """
    f = trunk(x)
    return f.flatten(1) if f.ndim > 2 else f


class _ForwardFeatures(nn.Module):
    """Makes ``module.forward_features`` the forward (a probed module with no ``backbone``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.forward_features(x)


class _Classifier(nn.Module):
    """``features -> linear`` following the backbone protocol (flattens (B,D,1,1))."""

    def __init__(self, trunk: nn.Module, dim: int, num_classes: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(_features(self.trunk, x))


def copy_feature_module(pl_module: nn.Module) -> nn.Module:
    """A deep copy of what computes ``pl_module``'s features, detached from any trainer.

    ``backbone`` modules are copied alone (called through their ``forward``); a module
    with ``forward_features`` is copied whole (its trainer reference is dropped for the
    copy) and wrapped so that calling it calls ``forward_features``.
    """
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


def finetune(
    trunk: nn.Module,
    train_loader: Any,
    val_loader: Any,
    num_classes: int,
    recipe: FineTuneRecipe,
    name: str = "custom",
) -> FineTuneResult:
    """Fine-tune ``trunk`` (modified in place: pass a copy) + a new linear head.

    Args:
        trunk: feature module, called as ``trunk(x)``: ``(B,3,H,W) -> (B,D)`` (or
            ``(B,D,1,1)``); :func:`copy_feature_module` makes one from a probed module.
        train_loader: the labelled subset, augmented, ``(images, labels)``.
        val_loader: validation batches.
        num_classes: head width.
        recipe: learning rates and schedule.
        name: preset name, stated in ``FineTuneResult.protocol``.
    """
    t0 = time.perf_counter()
    device = module_device(trunk)
    was_training = trunk.training
    trunk.eval()
    with torch.no_grad():
        x0, _ = next(iter(train_loader))
        dim = _features(trunk, x0[:2].to(device)).shape[1]
    model = _Classifier(trunk, dim, num_classes).to(device)
    opt = torch.optim.SGD(
        [
            {"params": list(trunk.parameters()), "lr": recipe.trunk_lr},
            {"params": list(model.head.parameters()), "lr": recipe.head_lr},
        ],
        lr=recipe.trunk_lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(recipe.milestones), gamma=recipe.gamma)
    history: list[tuple[float, float]] = []
    seen = 0
    for _ in range(recipe.epochs):
        history.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
        model.train()
        seen = 0
        for x, y in train_loader:
            loss = F.cross_entropy(model(x.to(device, non_blocking=True)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
        sched.step()
    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for x, y in val_loader:
            logits.append(model(x.to(device)).float())
            labels.append(y.to(device))
    top1, top5 = topk_accuracies(torch.cat(logits), torch.cat(labels), (1, 5))
    trunk.train(was_training)
    frac = "all labels" if recipe.label_fraction is None else f"{100 * recipe.label_fraction:g}% labels"
    protocol = (
        f"finetune[{name}]: {frac}, SGD m={recipe.momentum:g} wd={recipe.weight_decay:g}, trunk lr {recipe.trunk_lr:g} / "
        f"head lr {recipe.head_lr:g}, x{recipe.gamma:g} at {list(recipe.milestones)} of {recipe.epochs} epochs"
    )
    n = len(train_loader.dataset) if hasattr(train_loader, "dataset") else seen
    return FineTuneResult(
        protocol=protocol, top1=top1, top5=top5, train_samples=n, samples_seen_per_epoch=seen,
        val_samples=int(sum(len(t) for t in labels)), total_seconds=round(time.perf_counter() - t0, 3),
        lr_history=history,
    )


class SemiSupervisedFineTune(pl.Callback):
    """Fine-tune a copy of the pretrained backbone at the end of ``fit`` (rank 0 only).

    Data: ``provider`` or ``trainer.datamodule`` (provider protocol): the labelled subset is
    ``labeled_train_dataloader(augment=True, label_fraction=..., subset_file=...)`` (SimCLR
    list file by path, or the provider's seeded class-balanced fraction).

    Args:
        preset: ``"10pct"`` (trunk 0.01, head 0.2) or ``"1pct"`` (trunk 0.02, head 5.0).
        label_fraction, subset_file: override the preset's fraction (``subset_file`` wins).
        trunk_lr, head_lr, epochs, milestones, gamma, batch_size: override the preset.
        provider, num_classes: labelled data.
        results_path: JSON list file; ``None``: ``trainer.log_dir/finetune.json``.
        prefix: metric-name prefix.
    """

    def __init__(
        self,
        preset: Literal["10pct", "1pct"] = "10pct",
        label_fraction: float | None = None,
        subset_file: str | None = None,
        trunk_lr: float | None = None,
        head_lr: float | None = None,
        epochs: int | None = None,
        milestones: tuple[int, ...] | list[int] | None = None,
        gamma: float | None = None,
        batch_size: int | None = None,
        provider: Any = None,
        num_classes: int | None = None,
        results_path: str | Path | None = None,
        prefix: str = "finetune",
    ) -> None:
        if preset not in FINETUNE_PRESETS:
            raise ValueError(f"preset must be one of {sorted(FINETUNE_PRESETS)}, got {preset!r}")
        if label_fraction is not None and not 0 < label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction!r}")
        for pname, v in (("trunk_lr", trunk_lr), ("head_lr", head_lr)):
            if v is not None and not v > 0:
                raise ValueError(f"{pname} must be > 0, got {v!r}")
        for pname, v in (("epochs", epochs), ("batch_size", batch_size)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{pname} must be a positive int, got {v!r}")
        base = FINETUNE_PRESETS[preset]
        over = dict(
            label_fraction=label_fraction, trunk_lr=trunk_lr, head_lr=head_lr, epochs=epochs,
            milestones=tuple(milestones) if milestones is not None else None, gamma=gamma, batch_size=batch_size,
        )
        self.recipe = FineTuneRecipe(**{**asdict(base), **{k: v for k, v in over.items() if v is not None}})
        self.preset, self.subset_file = preset, subset_file
        self.provider, self.num_classes = provider, num_classes
        self.results_path, self.prefix = results_path, prefix
        self.results: list[FineTuneResult] = []

    def run(self, trainer: pl.Trainer | None, pl_module: nn.Module) -> FineTuneResult:
        """Fine-tune a deep copy of ``pl_module``'s features; log, write JSON, return."""
        p = resolve_provider(self.provider, trainer)
        frac = None if self.subset_file is not None else self.recipe.label_fraction
        train = p.labeled_train_dataloader(
            augment=True, batch_size=self.recipe.batch_size, label_fraction=frac, subset_file=self.subset_file
        )
        res = finetune(
            copy_feature_module(pl_module), train, p.labeled_val_dataloader(),
            int(self.num_classes or p.num_classes), self.recipe, self.preset,
        )
        if self.subset_file is not None:
            res.protocol += f" (subset file {self.subset_file})"
        report_result(res, trainer, self.prefix, self.results_path)
        self.results.append(res)
        return res

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fine-tune after pretraining."""
        if trainer.is_global_zero:
            self.run(trainer, pl_module)


def finetune_from_checkpoint(
    ckpt_path: str | Path,
    datamodule: Any,
    preset: Literal["10pct", "1pct"] = "10pct",
    backbone: nn.Module | str | None = None,
    device: str | torch.device = "cpu",
    **overrides: Any,
) -> FineTuneResult:
    """Standalone entry point: load a backbone (``checkpoints.load_backbone``) and fine-tune.

    Args:
        ckpt_path: a MoCo / MAE / Lightning checkpoint or a plain state dict.
        datamodule: labelled-data provider (e.g. ``CropMixDataModule``).
        preset: ``"10pct"`` or ``"1pct"``.
        backbone: architecture for the weights (see ``load_backbone``).
        device: where to train.
        **overrides: ``SemiSupervisedFineTune`` arguments (``epochs``, ``trunk_lr``, ...).
    """
    from ssl_cropmix.checkpoints import load_backbone

    trunk = load_backbone(ckpt_path, backbone).to(device)
    cb = SemiSupervisedFineTune(preset, provider=datamodule, **overrides)
    if hasattr(datamodule, "setup"):
        datamodule.setup("fit")

    holder = nn.Module()
    holder.backbone = trunk
    return cb.run(None, holder)
