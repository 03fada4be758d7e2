"""CropMixClassifier: soft-label CE equals the reference, batch augs make convex labels,
it learns a toy task, and the evaluation callbacks can probe it."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ssl_cropmix.methods.classifier import CropMixClassifier


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


@pytest.mark.parametrize("aug", ["mixup", "cutmix", "mixup_cutmix", "resizemix"])
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
    from ssl_cropmix.evaluation.protocol import get_backbone

    assert get_backbone(m) is m.backbone


def test_validation():
    with pytest.raises(ValueError, match="batch_aug.*'mosaic'"):
        CropMixClassifier(10, backbone=_tiny(), batch_aug="mosaic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_classes.*1"):
        CropMixClassifier(1, backbone=_tiny())


def test_defaults_are_imagenet_recipe_1():
    """R1 = the official ``classification/imagenet/main.py``: SGD lr 0.1, momentum 0.9, wd
    1e-4, x0.1 every 75 epochs, plain cross-entropy, no batch augmentation."""
    m = CropMixClassifier(10, backbone=_tiny())
    hp = m.hparams
    assert (hp.lr, hp.momentum, hp.weight_decay, hp.nesterov) == (0.1, 0.9, 1e-4, False)
    assert (hp.lr_schedule, hp.milestones, hp.gamma, hp.warmup_epochs) == ("step", [75, 150, 225], 0.1, 0.0)
    assert hp.label_smoothing == 0.0 and m.batch_aug is None and hp.norm_weight_decay is None
    import inspect

    assert inspect.signature(CropMixClassifier).parameters["backbone"].default == "resnet50"


def test_step_schedule_with_warmup_per_step(tmp_path):
    """lr seen at every step of a 6-epoch run with 2 steps per epoch: warmup over epoch 0
    (from 0.01 x lr), then x0.1 at epochs 2 and 4."""
    x, y = torch.rand(8, 3, 8, 8), torch.arange(8) % 4
    m = CropMixClassifier(4, backbone=_tiny(), lr=0.2, milestones=[2, 4], warmup_epochs=1)
    lrs = []

    class Rec(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    pl.Trainer(max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, default_root_dir=tmp_path, callbacks=[Rec()]).fit(
        m, DataLoader(TensorDataset(x, y), batch_size=4))
    expected = [0.2 * 0.01, 0.2 * (0.01 + 0.99 / 2), 0.2, 0.2, 0.02, 0.02, 0.02, 0.02, 0.002, 0.002, 0.002, 0.002]
    assert lrs == pytest.approx(expected)


def test_step_schedule_when_max_steps_ends_the_fit(tmp_path):
    """A run bounded by ``max_steps`` only (``max_epochs=-1``) keeps the step schedule, with
    epochs counted from the loader's length: 2 steps per epoch, x0.1 at epochs 1 and 2."""
    x, y = torch.rand(8, 3, 8, 8), torch.arange(8) % 4
    m = CropMixClassifier(4, backbone=_tiny(), lr=0.2, milestones=[1, 2], warmup_epochs=0)
    lrs = []

    class Rec(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    pl.Trainer(max_epochs=-1, max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, default_root_dir=tmp_path, callbacks=[Rec()]).fit(
        m, DataLoader(TensorDataset(x, y), batch_size=4))
    assert lrs == pytest.approx([0.2, 0.2, 0.02, 0.02, 0.002, 0.002])


def test_cosine_schedule_and_norm_weight_decay(tmp_path):
    from ssl_cropmix.methods.classifier import lr_factor

    f = [lr_factor(s, 2, 8, "cosine", (), 0.1, 1, 0.5) for s in range(8)]
    assert f[:2] == pytest.approx([0.5, 0.75])
    assert f[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)])
    m = CropMixClassifier(4, backbone=_tiny(), weight_decay=5e-5, norm_weight_decay=0.0)
    groups = m.parameter_groups()
    names = {id(p): n for n, p in m.named_parameters()}
    no_wd = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert no_wd == {"backbone.trunk.0.bias", "backbone.trunk.1.weight", "backbone.trunk.1.bias", "head.bias"}
    assert {names[id(p)] for g in groups if g["weight_decay"] == 5e-5 for p in g["params"]} == {
        "backbone.trunk.0.weight", "head.weight"}


def test_top1_is_micro_accuracy():
    """Imbalanced classes: 9 of 10 images of class 0 right, the one image of class 1 wrong:
    micro top-1 is 9/11 (the macro average of per-class recalls would be 0.45)."""
    m = CropMixClassifier(2, backbone=_tiny())
    logits = torch.tensor([[5.0, 0.0]] * 9 + [[0.0, 5.0]] + [[5.0, 0.0]])
    y = torch.tensor([0] * 9 + [1] + [1])
    m.val_top1(logits[:10], torch.tensor([0] * 9 + [0]))  # 9 right, 1 wrong (class 0)
    m.val_top1(logits[10:], y[10:])  # the class-1 image predicted as 0
    assert m.val_top1.compute().item() == pytest.approx(9 / 11)
