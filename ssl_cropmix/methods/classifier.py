"""Supervised training with CropMix (paper Sec. 4, Table 1).

The CropMix input transform itself comes from the DataModule (``views="supervised"``; CIFAR:
``num_crops=2``, Mixup alpha 0.4, channel permutation, crop scale (0.01, 1) or (0.25, 1);
ImageNet: ``num_crops`` in {2, 3, 4}, crop scale (0.01, 1)). This module only adds the
optional *batch* augmentation (ResizeMix / MixUp / CutMix, which make soft labels) and
trains backbone + linear classifier with soft-label cross-entropy and SGD. It exposes
``backbone``, so every evaluation callback works on it.
"""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import v2

from ssl_cropmix.models.backbones import build_backbone
from ssl_cropmix.transforms.resizemix import ResizeMix

BATCH_AUGS = (None, "resizemix", "mixup", "cutmix")


class CropMixClassifier(pl.LightningModule):
    """Backbone + linear head trained with (soft-label) cross-entropy.

    Args:
        num_classes: classes.
        backbone: ``build_backbone`` name or module.
        small_image: 3x3 stem without max-pool (CIFAR).
        batch_aug: ``None``, ``"resizemix"``, ``"mixup"`` or ``"cutmix"`` applied to each
            training batch on the device (ResizeMix: Qin et al. 2020, as in paper Sec. 4).
        batch_aug_alpha: Beta parameter of MixUp / CutMix.
        lr, momentum, weight_decay: SGD; cosine decay over ``trainer.max_epochs``.
        label_smoothing: cross-entropy label smoothing.

    Shape:
        images ``(B, 3, H, W)`` -> logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str | nn.Module = "resnet18",
        small_image: bool = False,
        batch_aug: Literal["resizemix", "mixup", "cutmix"] | None = None,
        batch_aug_alpha: float = 1.0,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if batch_aug not in BATCH_AUGS:
            raise ValueError(f"batch_aug must be one of {BATCH_AUGS}, got {batch_aug!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, nn.Module) else [])
        self.backbone, self.feature_dim = build_backbone(backbone, small_image=small_image)
        self.head = nn.Linear(self.feature_dim, num_classes)
        makers = {
            "resizemix": lambda: ResizeMix(num_classes=num_classes),
            "mixup": lambda: v2.MixUp(alpha=batch_aug_alpha, num_classes=num_classes),
            "cutmix": lambda: v2.CutMix(alpha=batch_aug_alpha, num_classes=num_classes),
        }
        self.batch_aug: nn.Module | None = makers[batch_aug]() if batch_aug is not None else None
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1)
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        f = self.backbone(x)
        return self.head(f.flatten(1) if f.ndim > 2 else f)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Non-finite weights are never saved (``checkpoints.check_finite_state``)."""
        from ssl_cropmix.checkpoints import check_finite_state

        check_finite_state(checkpoint.get("state_dict", {}), self.global_step, type(self).__name__)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Soft-label CE; hard labels ``(B,)`` become one-hot when no batch aug is set."""
        x, y = batch
        if self.batch_aug is not None:
            x, y = self.batch_aug(x, y)
        loss = F.cross_entropy(self(x), y, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Top-1 / top-5 (%) on ``(images, labels)``."""
        x, y = batch
        logits = self(x)
        self.val_top1(logits, y)
        self.val_top5(logits, y)
        self.log("val/top1", self.val_top1, prog_bar=True)
        self.log("val/top5", self.val_top5)

    def configure_optimizers(self) -> Any:
        """SGD + cosine over ``max_epochs``."""
        hp = self.hparams
        opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        epochs = max(1, self.trainer.max_epochs or 1)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)}
