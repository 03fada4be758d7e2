"""Cross-part integration: the pieces compose the way a user would combine them."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn

from ssl_cropmix.data.datamodule import CropMixDataModule
from ssl_cropmix.data.recipes import MoCoViews
from ssl_cropmix.data.sources import DemoSource
from ssl_cropmix.methods.moco import MoCoCropMix


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_user_module_backbone_with_small_image_data_logs_hparams(tmp_path, monkeypatch):
    """A custom backbone (model small_image=False) on 32-px data (views small_image auto=True):
    Lightning merges model and data hparams for the logger and must not find a conflict."""
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    dm = CropMixDataModule(DemoSource(), MoCoViews("cropmix"), image_size=32, batch_size=8, num_workers=0,
                           persistent_workers=False)
    model = MoCoCropMix(backbone=TinyNet(), queue_size=64, base_lr=0.03)
    trainer = pl.Trainer(max_steps=2, limit_val_batches=1, accelerator="cpu",
                         logger=pl.loggers.CSVLogger(tmp_path), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    assert trainer.global_step == 2
    assert "small_image" not in dm.hparams  # auto value is derived, not logged
    explicit = CropMixDataModule(DemoSource(), image_size=32, small_image=False)
    assert explicit.hparams["small_image"] is False


def test_moco_queue_holds_unit_norm_keys_and_loss_stays_bounded():
    """Regression: keys must be L2-normalised before they enter the queue; otherwise the
    negative logits (q . queue / T) are unbounded and the loss explodes. With unit vectors the
    InfoNCE loss is at most 2/T + log(1 + K)."""
    import math

    torch.manual_seed(0)
    model = MoCoCropMix(backbone=TinyNet(), queue_size=64, base_lr=0.03, temperature=0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(16, 3, 16, 16) * 50  # large activations: unnormalised keys would be huge
    bound = 2 / 0.2 + math.log(1 + 64)
    for step in range(6):
        out = model.training_step(((x, x.flip(-1)), torch.zeros(16, dtype=torch.long)), step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        assert out["loss"].item() <= bound + 1e-4
    norms = model.queue.queue.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
