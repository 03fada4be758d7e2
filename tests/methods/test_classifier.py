"""CropMixClassifier: soft-label CE equals the reference, batch augs make convex labels,
it learns a toy task, and the evaluation callbacks can probe it."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ssl_cropmix.methods.classifier import CropMixClassifier


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


@pytest.mark.parametrize("aug", ["mixup", "cutmix", "resizemix"])
def test_batch_aug_gives_soft_labels_and_reference_loss(aug):
    m = CropMixClassifier(4, backbone=_tiny(), batch_aug=aug)
    x, y = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    torch.manual_seed(1)
    xa, ya = m.batch_aug(x, y)
    assert ya.shape == (6, 4) and torch.allclose(ya.sum(1), torch.ones(6))
    assert ((ya > 0).sum(1) <= 2).all()  # a mix of at most two classes
    torch.manual_seed(1)
    loss = m.training_step((x, y), 0)
    ref = -(ya * F.log_softmax(m(xa), 1)).sum(1).mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_learns_toy_task_and_exposes_backbone(tmp_path):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat_interleave(32)
    x = (torch.randn(4, 3, generator=g) * 2)[y][:, :, None, None] + 0.3 * torch.randn(128, 3, 8, 8, generator=g)
    dl = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    m = CropMixClassifier(4, backbone=_tiny(), lr=0.1)
    pl.Trainer(max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, default_root_dir=tmp_path).fit(m, dl, DataLoader(TensorDataset(x, y), batch_size=128))
    m.eval()
    with torch.no_grad():
        assert (m(x).argmax(1) == y).float().mean() > 0.9
    from ssl_cropmix.callbacks.utils import get_backbone

    assert get_backbone(m) is m.backbone


def test_validation():
    with pytest.raises(ValueError, match="batch_aug.*'mosaic'"):
        CropMixClassifier(10, backbone=_tiny(), batch_aug="mosaic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_classes.*1"):
        CropMixClassifier(1, backbone=_tiny())
