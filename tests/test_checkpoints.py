"""load_backbone: one call from a real Lightning checkpoint, weights_only=True enforced."""

from __future__ import annotations

import pytorch_lightning as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ssl_cropmix.checkpoints import load_backbone, strip_prefix


class _Pre(pl.LightningModule):
    def __init__(self, backbone: str = "resnet18", small_image: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.backbone_momentum = nn.Linear(2, 2)  # must not be mistaken for the backbone

    def training_step(self, batch, batch_idx):
        return self.backbone(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_checkpoint_round_trip(tmp_path):
    m = _Pre()
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(m, DataLoader(TensorDataset(torch.randn(8, 3, 8, 8)), batch_size=4))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    template = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    got = load_backbone(path, template)
    for k, v in m.backbone.state_dict().items():
        assert torch.equal(got.state_dict()[k], v), k
    assert got.state_dict()["1.num_batches_tracked"].item() == 2 and not got.training


def test_named_backbone_from_hyperparameters(tmp_path):
    from ssl_cropmix.models.backbones import build_backbone

    net, _ = build_backbone("resnet18", small_image=True)
    state = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"backbone": "resnet18", "small_image": True}}, tmp_path / "c.ckpt")
    got = load_backbone(tmp_path / "c.ckpt")
    assert all(torch.equal(got.state_dict()[k], v) for k, v in net.state_dict().items())
    assert got(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_refuses_arbitrary_pickles(tmp_path):
    torch.save({"state_dict": {}, "obj": _Pre}, tmp_path / "bad.ckpt")  # a class: not weights
    with pytest.raises(RuntimeError, match="weights_only=True"):
        load_backbone(tmp_path / "bad.ckpt", nn.Linear(2, 2))
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_backbone(tmp_path / "nope.ckpt", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="names no backbone"):
        torch.save({"w": torch.zeros(1)}, tmp_path / "plain.pt")
        load_backbone(tmp_path / "plain.pt")


def test_official_moco_prefix():
    state = {"module.encoder_q.conv.weight": torch.ones(1), "module.queue": torch.zeros(1)}
    assert list(strip_prefix(state)) == ["conv.weight"]


def test_load_module_rebuilds_mae_from_hyperparameters_with_identical_features(tmp_path):
    """``load_module`` rebuilds a module that ``load_backbone`` cannot name (MAE) from its
    hyper-parameters and loads every weight strictly: features equal the original's."""
    from ssl_cropmix.checkpoints import load_module
    from ssl_cropmix.methods.mae import MAECropMix

    m = MAECropMix("vit_tiny_patch16_224", img_size=32, patch_size=4, vit_kwargs={"depth": 1},
                   decoder_dim=32, decoder_depth=1, decoder_num_heads=2)
    path = tmp_path / "mae.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}, path)
    r = load_module(path)
    x = torch.randn(2, 3, 32, 32)
    assert isinstance(r, MAECropMix)
    assert torch.equal(r.backbone(x), m.eval().backbone(x))
    bad = {"state_dict": {k: v for k, v in m.state_dict().items() if "decoder" not in k},
           "hyper_parameters": dict(m.hparams)}
    torch.save(bad, tmp_path / "partial.ckpt")
    from ssl_cropmix.checkpoints import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match=r"20 of the class's tensor\(s\) missing \(decoder\."):
        load_module(tmp_path / "partial.ckpt")  # before loading, naming the keys (was load_state_dict's error)
