"""Synthetic data and a user-written LightningModule for the evaluation-callback tests.

Imported as ``from eval_fixtures import ...`` (pytest puts this folder on sys.path). Nothing
here depends on the DataModule or the pretraining methods."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def toy_images(
    n_per_class: int, num_classes: int = 4, size: int = 8, seed: int = 0, center_seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose per-channel mean depends on the class (linearly separable), + noise.

    Shape:
        ``(n_per_class * num_classes, 3, size, size)``, ``(N,)``.
    """
    centers = torch.randn(num_classes, 3, generator=torch.Generator().manual_seed(center_seed)) * 2.0
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centers[y][:, :, None, None] + 0.3 * torch.randn(len(y), 3, size, size, generator=g)
    return x, y


class UserModule(pl.LightningModule):
    """A user's own module: only a ``backbone`` attribute (with BatchNorm) is shared."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )

    def training_step(self, batch, batch_idx):
        x, _ = batch
        return self.backbone(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class FakeProvider:
    """Implements the labelled-data provider protocol of docs/architecture.md on tensors.

    ``label_fraction`` keeps ``round(fraction * n_c)`` samples of every class (balanced,
    first ones in order); every call is recorded in ``calls``.
    """

    def __init__(self, n_per_class: int = 64, num_classes: int = 4, batch_size: int = 32) -> None:
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.train = toy_images(n_per_class, num_classes, seed=0)
        self.val = toy_images(max(8, n_per_class // 4), num_classes, seed=1)
        self.calls: list[dict] = []

    def labeled_train_dataloader(self, augment=True, batch_size=None, label_fraction=None, subset_file=None, shuffle=True):
        self.calls.append(dict(augment=augment, batch_size=batch_size, label_fraction=label_fraction, subset_file=subset_file, shuffle=shuffle))
        x, y = self.train
        if label_fraction is not None:
            keep = []
            for c in range(self.num_classes):
                idx = (y == c).nonzero().flatten()
                keep.append(idx[: round(label_fraction * len(idx))])
            keep = torch.cat(keep)
            x, y = x[keep], y[keep]
        return DataLoader(TensorDataset(x, y), batch_size=batch_size or self.batch_size, shuffle=shuffle)

    def labeled_val_dataloader(self, batch_size=None):
        return DataLoader(TensorDataset(*self.val), batch_size=batch_size or self.batch_size)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
