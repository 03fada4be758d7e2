"""Supervised classification with CropMix inputs (Han et al., 2022, Sec. 4).

The CropMix input view comes from the DataModule (``views=SupervisedViews(kind="cropmix")``:
CropMix with Mixup alpha 0.4 and channel permutation on (0.01, 1), ``n = 2`` on CIFAR and ``n in {2, 3, 4}`` on ImageNet; ``"rrc"`` for the
RandomResizedCrop baseline). This module trains backbone + linear classifier with
(soft-label) cross-entropy and SGD, optionally with a *batch* augmentation on the device
(MixUp / CutMix, as in the stronger ImageNet recipes; ResizeMix, Qin et al. 2020, is an
extra of ours: the paper does not use it). The defaults are the paper's ImageNet recipe 1
(the official ``classification/imagenet/main.py``): SGD lr 0.1, momentum 0.9, weight decay
1e-4, lr x0.1 every 75 epochs (milestones 75, 150, 225 of 300), no label smoothing, no
batch augmentation. It exposes ``backbone``, so every evaluation callback works on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import v2

from ssl_cropmix.methods.stem import warn_imagenet_stem_on_small_images
from ssl_cropmix.models.backbones import build_backbone
from ssl_cropmix.transforms.resizemix import ResizeMix
from ssl_cropmix.validation import check_bools

BATCH_AUGS = (None, "mixup", "cutmix", "mixup_cutmix", "resizemix")
LR_SCHEDULES = ("step", "cosine")


def _check_nonneg(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def lr_factor(
    step: int,
    steps_per_epoch: float,
    total_steps: int,
    schedule: str,
    milestones: Sequence[int],
    gamma: float,
    warmup_epochs: float,
    warmup_start_factor: float,
) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based).

    Linear warmup from ``warmup_start_factor`` to 1 over ``warmup_epochs``, then either
    ``gamma ** (number of milestones <= current epoch)`` (``"step"``; the epoch is
    ``floor(step / steps_per_epoch)``) or a cosine from 1 to 0 over the remaining steps.
    """
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if step < warmup:
        return warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup
    if schedule == "cosine":
        span = max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))
    epoch = math.floor(step / steps_per_epoch + 1e-9)
    return gamma ** sum(1 for m in milestones if epoch >= m)


class CropMixClassifier(pl.LightningModule):
    """Backbone + linear head trained with (soft-label) cross-entropy and SGD.

    Args:
        num_classes: classes.
        backbone: ``build_backbone`` name or module.
        small_image: 3x3 stem without max-pool (CIFAR).
        batch_aug: ``None`` (recipe 1), ``"mixup"``, ``"cutmix"``, ``"mixup_cutmix"`` (one
            of the two per batch, p = 0.5 each, as timm's ``Mixup`` with
            ``switch_prob=0.5``) or ``"resizemix"`` (ours, not in the paper), applied to each
            training batch on the device; labels become soft.
        mixup_alpha: Beta parameter of MixUp.
        cutmix_alpha: Beta parameter of CutMix.
        lr: SGD learning rate (for the recipe's batch size; no automatic scaling).
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        weight_decay: weight decay of weights.
        norm_weight_decay: weight decay of normalisation layers and biases (``None``: the
            same as ``weight_decay``, as recipe 1).
        label_smoothing: cross-entropy label smoothing.
        lr_schedule: ``"step"`` (x ``gamma`` at each of ``milestones``, in epochs) or
            ``"cosine"`` (per step, to 0 at the end of the fit: ``max_epochs`` or ``max_steps``).
        milestones: epochs at which the step schedule multiplies the lr by ``gamma``.
        gamma: step-schedule factor.
        warmup_epochs: linear warmup length (per step; 0 = none).
        warmup_start_factor: lr multiplier at the first warmup step.

    Metrics: ``val/top1`` and ``val/top5`` are micro-averaged (the fraction of correctly
    classified validation images, in [0, 1]), the usual ImageNet accuracy.

    Shape:
        images ``(B, 3, H, W)`` -> logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str | nn.Module = "resnet50",
        small_image: bool = False,
        batch_aug: Literal["mixup", "cutmix", "mixup_cutmix", "resizemix"] | None = None,
        mixup_alpha: float = 0.2,
        cutmix_alpha: float = 1.0,
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 1e-4,
        norm_weight_decay: float | None = None,
        label_smoothing: float = 0.0,
        lr_schedule: Literal["step", "cosine"] = "step",
        milestones: list[int] | None = None,
        gamma: float = 0.1,
        warmup_epochs: float = 0.0,
        warmup_start_factor: float = 0.01,
    ) -> None:
        super().__init__()
        check_bools(small_image=small_image, nesterov=nesterov)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if batch_aug not in BATCH_AUGS:
            raise ValueError(f"batch_aug must be one of {BATCH_AUGS}, got {batch_aug!r}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        _check_nonneg("weight_decay", weight_decay)
        if norm_weight_decay is not None:
            _check_nonneg("norm_weight_decay", norm_weight_decay)
        _check_nonneg("warmup_epochs", warmup_epochs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
        if not 0.0 < warmup_start_factor <= 1.0:
            raise ValueError(f"warmup_start_factor must be in (0, 1], got {warmup_start_factor!r}")
        milestones = [75, 150, 225] if milestones is None else list(milestones)
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in milestones) or milestones != sorted(
            milestones
        ):
            raise ValueError(f"milestones must be increasing positive ints (epochs), got {milestones!r}")
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, nn.Module) else [])
        self.hparams.milestones = milestones
        self.backbone, self.feature_dim = build_backbone(backbone, small_image=small_image)
        self.head = nn.Linear(self.feature_dim, num_classes)
        makers = {
            "resizemix": lambda: ResizeMix(num_classes=num_classes),
            "mixup": lambda: v2.MixUp(alpha=mixup_alpha, num_classes=num_classes),
            "cutmix": lambda: v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes),
            "mixup_cutmix": lambda: v2.RandomChoice(
                [v2.MixUp(alpha=mixup_alpha, num_classes=num_classes),
                 v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)]
            ),
        }
        self.batch_aug: nn.Module | None = makers[batch_aug]() if batch_aug is not None else None
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        f = self.backbone(x)
        return self.head(f.flatten(1) if f.ndim > 2 else f)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Non-finite weights are never saved (``checkpoints.check_finite_state``)."""
        from ssl_cropmix.checkpoints import check_finite_state

        check_finite_state(checkpoint.get("state_dict", {}), self.global_step, type(self).__name__)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Soft-label CE when a batch augmentation is set, hard-label CE otherwise."""
        x, y = batch
        if batch_idx == 0 and self.current_epoch == 0:  # once per fit: the first batch's size
            warn_imagenet_stem_on_small_images(type(self).__name__, self.backbone, int(x.shape[-2]))
        if self.batch_aug is not None:
            x, y = self.batch_aug(x, y)
        loss = F.cross_entropy(self(x), y, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Top-1 / top-5 accuracy (micro) on ``(images, labels)``."""
        x, y = batch
        logits = self(x)
        self.val_top1(logits, y)
        self.val_top5(logits, y)
        self.log("val/top1", self.val_top1, prog_bar=True, batch_size=x.shape[0])
        self.log("val/top5", self.val_top5, batch_size=x.shape[0])

    def parameter_groups(self) -> list[dict[str, Any]]:
        """One group, or two when ``norm_weight_decay`` is set: weights of norm layers and
        every bias get ``norm_weight_decay`` (torchvision's ``set_weight_decay``)."""
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if hp.norm_weight_decay is None:
            return [{"params": params, "weight_decay": hp.weight_decay}]
        norm_types = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
        norm_ids = {id(p) for m in self.modules() if isinstance(m, norm_types) for p in m.parameters(recurse=False)}
        norm_ids |= {id(p) for n, p in self.named_parameters() if n.endswith(".bias")}
        other = [p for p in params if id(p) not in norm_ids]
        norm = [p for p in params if id(p) in norm_ids]
        return [g for g in ({"params": other, "weight_decay": hp.weight_decay},
                            {"params": norm, "weight_decay": hp.norm_weight_decay}) if g["params"]]

    def configure_optimizers(self) -> Any:
        """SGD; lr schedule per step (warmup, then step or cosine)."""
        hp = self.hparams
        opt = torch.optim.SGD(self.parameter_groups(), lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov)
        # Lightning's own counts: total optimizer steps (max_epochs or max_steps, whichever
        # ends the fit) and optimizer steps per epoch (the last partial accumulation steps too)
        total = self.trainer.estimated_stepping_batches
        if self.trainer.train_dataloader is None:  # max_epochs=-1: Lightning estimated without the loader
            self.trainer.fit_loop.setup_data()
        batches = self.trainer.num_training_batches
        if not math.isfinite(total) or total <= 0 or not math.isfinite(batches) or batches <= 0:
            raise ValueError(
                "CropMixClassifier's lr schedule needs a finite number of training steps per epoch and in "
                f"all (got {batches} batches per epoch, {total} steps): give the train loader a length and "
                "set trainer.max_epochs or trainer.max_steps"
            )
        total = int(total)
        per_epoch = math.ceil(batches / self.trainer.accumulate_grad_batches)
        args = (per_epoch, total, hp.lr_schedule, tuple(hp.milestones), hp.gamma, hp.warmup_epochs,
                hp.warmup_start_factor)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, *args))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
