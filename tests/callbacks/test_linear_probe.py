"""LinearProbe: frozen backbone (weights, BN buffers, train flags), presets, LARS, JSON,
a user-written LightningModule probed through ``trainer.fit``."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from eval_fixtures import FakeProvider, UserModule, snapshot
from ssl_cropmix.callbacks.lars import LARS
from ssl_cropmix.callbacks.linear_probe import PROBE_PRESETS, LinearProbe, warmup_cosine


@pytest.mark.parametrize("cached", [True, False])
def test_probe_never_changes_backbone(cached, tmp_path):
    module = UserModule()
    module.train()  # BN in train mode would update running stats if the probe forgot eval()
    before = snapshot(module)
    probe = LinearProbe(epochs=2, batch_size=32, cached_features=cached, provider=FakeProvider(), results_path=tmp_path / "r.json")
    res = probe.run(None, module)
    after = snapshot(module)
    assert before.keys() == after.keys() and any("running_mean" in k for k in before)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert all(m.training for m in module.modules())  # train/eval flags restored
    assert all(p.grad is None for p in module.parameters())
    assert res.train_samples == 256 and res.val_samples == 64 and res.feature_dim == 16


def test_user_module_probed_through_fit(tmp_path):
    provider = FakeProvider()
    probe = LinearProbe(epochs=30, batch_size=32, base_lr=0.8, cached_features=True, provider=provider)
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=2, callbacks=[probe], default_root_dir=tmp_path,
        logger=pl.loggers.CSVLogger(tmp_path), enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(UserModule(), train_dataloaders=provider.labeled_train_dataloader())
    assert provider.calls[-1]["augment"] is False  # cached features: no augmentation
    records = json.loads((tmp_path / "lightning_logs" / "version_0" / "linear_probe.json").read_text())
    assert len(records) == 1
    r = records[0]
    assert "linear_probe[moco]" in r["protocol"] and "cached features" in r["protocol"]
    assert r["lr"] == pytest.approx(0.8 * 32 / 256) and r["pretrain_epoch"] == 1
    assert r["top1"] > 90.0 and r["top5"] == 100.0  # separable toy classes; 4 classes -> top-5 = all
    assert r["total_seconds"] >= r["train_seconds"] > 0
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "linear_probe/top1" in metrics


def test_mae_preset_has_affine_free_bn_and_lars():
    r = PROBE_PRESETS["mae"]
    assert (r.optimizer, r.base_lr, r.epochs, r.warmup_epochs, r.head_norm, r.weight_decay) == ("lars", 0.1, 90, 10, True, 0.0)
    m = PROBE_PRESETS["moco"]
    assert (m.optimizer, m.base_lr, m.epochs, m.warmup_epochs, m.head_norm, m.weight_decay) == ("sgd", 0.1, 90, 0, False, 0.0)
    # LARS steps are lr * 0.001 * ||w||: MAE's lr (0.1 x 16384/256 = 6.4) is only reached with
    # huge batches, so the toy run raises base_lr.
    probe = LinearProbe("mae", epochs=20, warmup_epochs=2, batch_size=64, base_lr=400.0, cached_features=True, provider=FakeProvider())
    res = probe.run(None, UserModule())
    assert "LARS" in res.protocol and "BN(affine=False)" in res.protocol
    assert res.top1 > 80.0


def test_warmup_cosine_values():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 0) == pytest.approx(0.0)
    assert warmup_cosine(150, 100, 10) == pytest.approx(0.0)  # held at 0 past the end
    assert warmup_cosine(25, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))  # MoCo: no warm-up


def test_lars_step_matches_reference():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=0.5, momentum=0.9, trust_coefficient=0.001)
    w.grad = torch.tensor([[0.6, 0.8]])  # ||g|| = 1 -> ratio = 0.001 * 5 / 1
    b.grad = torch.tensor([2.0])  # 1-d: no trust ratio
    opt.step()
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 4.0]]) - 0.5 * 0.005 * torch.tensor([[0.6, 0.8]]))
    assert torch.allclose(b.detach(), torch.tensor([0.0]))


def test_validation_messages():
    with pytest.raises(ValueError, match="preset.*'simclr'"):
        LinearProbe("simclr")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epochs.*0"):
        LinearProbe(epochs=0)
    with pytest.raises(TypeError, match="provider"):
        LinearProbe().run(None, UserModule())
    assert not math.isnan(warmup_cosine(0, 1, 0))
