"""Exact resume with the evaluation callbacks attached (issue 14, item 3): a checkpoint taken
by ``ModelCheckpoint(every_n_train_steps=...)`` on an epoch's last batch, with
``OnlineLinearProbe``, ``KNNMonitor`` and ``BadImageCounter``, resumes with the same losses as
the uninterrupted run (real folder data and CropMix views; CPU, tiny)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import nn

from ssl_cropmix.callbacks.knn import KNNMonitor
from ssl_cropmix.callbacks.online_probe import OnlineLinearProbe
from ssl_cropmix.data.datamodule import BadImageCounter, CropMixDataModule
from ssl_cropmix.data.recipes import MoCoViews
from ssl_cropmix.data.sources import ImageFolderSource

STEPS_PER_EPOCH = 4


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2)):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


class _Losses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.probe: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())
        self.probe.append(trainer.callback_metrics["online_probe/train_loss"].item())


def _model():
    from ssl_cropmix.methods.moco import MoCoCropMix

    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return MoCoCropMix(backbone=backbone, proj_hidden_dim=16, out_dim=8, queue_size=32, lr=0.05)


def _fit(root: Path, out: Path, ckpt_path: str | None = None, every: int | None = None):
    dm = CropMixDataModule(ImageFolderSource(str(root)), MoCoViews("cropmix"), image_size=32,
                           batch_size=4, num_workers=0, persistent_workers=False)
    rec = _Losses()
    probe = OnlineLinearProbe(lr=0.1)
    callbacks = [probe, KNNMonitor(k=3, every_n_epochs=1), BadImageCounter(), rec]
    if every is not None:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=out / "ck", every_n_train_steps=every, save_top_k=-1))
    trainer = pl.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=every is not None, default_root_dir=out, callbacks=callbacks, log_every_n_steps=1,
    )
    model = _model()
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return rec, probe


@pytest.mark.timeout(300)
def test_resume_from_step_checkpoint_with_eval_callbacks_is_exact(tmp_path):
    root = _folder(tmp_path / "data")
    pl.seed_everything(0, workers=True)
    full, full_probe = _fit(root, tmp_path / "a", every=STEPS_PER_EPOCH)
    assert len(full.losses) == 3 * STEPS_PER_EPOCH
    ckpt = tmp_path / "a" / "ck" / f"epoch=0-step={STEPS_PER_EPOCH}.ckpt"
    assert ckpt.is_file()  # taken on epoch 0's last batch

    pl.seed_everything(1, workers=True)  # a different seed: everything must come from the checkpoint
    resumed, resumed_probe = _fit(root, tmp_path / "b", ckpt_path=str(ckpt))
    assert resumed.losses == full.losses[STEPS_PER_EPOCH:]  # bit for bit
    assert resumed.probe == full.probe[STEPS_PER_EPOCH:]
    for a, b in zip(resumed_probe.head.parameters(), full_probe.head.parameters()):
        assert torch.equal(a, b)


def test_probe_head_init_leaves_the_global_rng_alone():
    """The head is built from its own seeded generator: the global stream is untouched and
    two probes start from the same weights whatever the global state."""
    probe = OnlineLinearProbe(num_classes=3)
    probe.setup(None, None, "fit")
    before = torch.get_rng_state()
    head = probe._ensure_head(torch.zeros(2, 5))
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(123)
    other = OnlineLinearProbe(num_classes=3)
    other.setup(None, None, "fit")
    assert torch.equal(other._ensure_head(torch.zeros(2, 5)).weight, head.weight)


def test_probe_head_is_nn_linear_default_init_from_its_seed():
    """Reference: nn.Linear's own init after torch.manual_seed(seed); another seed differs."""
    probe = OnlineLinearProbe(num_classes=3, seed=7)
    probe.setup(None, None, "fit")
    head = probe._ensure_head(torch.zeros(2, 5))
    torch.manual_seed(7)
    ref = nn.Linear(5, 3)
    assert torch.equal(head.weight, ref.weight) and torch.equal(head.bias, ref.bias)
    other = OnlineLinearProbe(num_classes=3, seed=8)
    other.setup(None, None, "fit")
    assert not torch.equal(other._ensure_head(torch.zeros(2, 5)).weight, head.weight)
