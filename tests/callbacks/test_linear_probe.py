"""LinearProbe: frozen backbone (weights, BN buffers, train flags), the LARS presets (global
batch, lr at step 0 and at the end of the cosine, no wd, 90 epochs), JSON records, a
user-written LightningModule probed through ``trainer.fit`` on the pretraining's hardware."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from eval_fixtures import FakeProvider, UserModule, snapshot
from ssl_cropmix.evaluation.lars import LARS
from ssl_cropmix.callbacks.linear_probe import PROBE_PRESETS, LinearProbe, warmup_cosine
from ssl_cropmix.evaluation.linear import LinearProbeModule, run_linear_probe


def _quiet(**kw) -> dict:
    return dict(enable_progress_bar=False, **kw)


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
    assert res.train_samples == 256 and res.val_samples == 64 and res.details["feature_dim"] == 16


def test_user_module_probed_through_fit_on_the_pretraining_hardware(tmp_path):
    """The evaluation trainer's accelerator, strategy, world size and precision are the
    pretraining trainer's (bf16-mixed here), and the probe's parameters were on its device."""
    provider = FakeProvider()
    probe = LinearProbe(optimizer="sgd", epochs=30, batch_size=32, base_lr=0.8, cached_features=True, provider=provider)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, precision="bf16-mixed", max_epochs=1, limit_train_batches=2, callbacks=[probe],
        default_root_dir=tmp_path, logger=pl.loggers.CSVLogger(tmp_path), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(UserModule(), train_dataloaders=provider.labeled_train_dataloader())
    assert provider.calls[-1]["augment"] is False  # cached features: no augmentation
    records = json.loads((tmp_path / "lightning_logs" / "version_0" / "eval_results.json").read_text())
    assert len(records) == 1
    r = records[0]
    hw = r["hardware"]
    assert hw["accelerator"] == type(trainer.accelerator).__name__ == "CPUAccelerator"
    assert hw["strategy"] == type(trainer.strategy).__name__
    assert hw["world_size"] == trainer.world_size == 1
    assert hw["precision"] == trainer.precision == "bf16-mixed"
    assert hw["device"] == "cpu"
    assert r["key"] == "linear" and "linear[moco]" in r["protocol"] and "cached features" in r["protocol"]
    assert r["hparams"]["lr"] == pytest.approx(0.8 * 32 / 256) and r["pretrain_epoch"] == 1
    assert r["top1"] > 90.0 and r["top5"] == 100.0  # separable toy classes; 4 classes -> top-5 = all
    assert r["wall_seconds"] >= r["details"]["train_seconds"] > 0
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "eval/linear/top1" in metrics


@pytest.mark.parametrize("preset, lr0", [("moco", 0.2), ("moco_simsiam_code", 1.6)])
def test_moco_lars_preset_schedule(preset, lr0):
    r = PROBE_PRESETS[preset]
    assert (r.optimizer, r.batch_size, r.epochs, r.warmup_epochs, r.weight_decay, r.head_norm) == ("lars", 4096, 90, 0, 0.0, False)
    # one step per epoch: 4096 cached features of a 4-d trunk; the preset runs unchanged
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4096, 4, generator=g), torch.randint(0, 3, (4096,), generator=g)
    train = DataLoader(TensorDataset(x, y), batch_size=512)
    val = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=64)
    holder = nn.Module()
    holder.backbone = nn.Identity()
    res = run_linear_probe(holder, train, val, 3, r, cached_features=True, name=preset,
                           trainer_kwargs=_quiet(accelerator="cpu", devices=1))
    hp = res.hparams
    assert hp["per_device_batch"] == 4096 and hp["accumulate_grad_batches"] == 1  # the global batch on one device
    assert res.details["optimizer_steps"] == 90 and res.epochs == 90
    assert res.details["lr_first"] == pytest.approx(lr0)  # paper: 0.2; SimSiam code: 0.1 x 4096/256
    # last step of the cosine: lr0 * 0.5 * (1 + cos(pi * 89/90))
    assert res.details["lr_last"] == pytest.approx(lr0 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert "LARS" in res.protocol and "wd=0" in res.protocol and "global batch 4096" in res.protocol


def test_global_batch_is_split_and_accumulated():
    from ssl_cropmix.evaluation.linear import split_batch

    assert split_batch(4096, 8, None) == (512, 1)
    assert split_batch(16384, 1, 1024) == (1024, 16)
    assert split_batch(16384, 8, 256) == (256, 8)
    with pytest.raises(ValueError, match="16384.*world size 3"):
        split_batch(16384, 3, 1000)


def test_mae_preset_has_affine_free_bn_lars_and_split_batches():
    r = PROBE_PRESETS["mae"]
    assert (r.optimizer, r.base_lr, r.batch_size, r.epochs, r.warmup_epochs, r.head_norm, r.weight_decay) == (
        "lars", 0.1, 16384, 90, 10, True, 0.0)
    head = LinearProbeModule(None, 8, 4, r).head
    assert isinstance(head[0], nn.BatchNorm1d) and not head[0].affine
    # a batch of images goes through the trunk extract_chunk images at a time
    calls = []

    class Trunk(nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return x.mean((2, 3))

    from dataclasses import replace

    m = LinearProbeModule(Trunk(), 3, 4, replace(r, extract_chunk=5))
    assert m.logits(torch.rand(12, 3, 4, 4)).shape == (12, 4) and calls == [5, 5, 2]
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
    # num_classes below the data's class count: refused, naming both values
    with pytest.raises(ValueError, match=r"num_classes=3 is below the data's class count \(4\)"):
        LinearProbe(num_classes=3, provider=FakeProvider()).run(None, UserModule())
    loader = FakeProvider().labeled_train_dataloader()
    with pytest.raises(ValueError, match=r"num_classes=2 .*label 3"):
        LinearProbe(epochs=1, batch_size=32, cached_features=True, train_dataloader=loader, val_dataloader=loader,
                    num_classes=2).run(None, UserModule())
    assert not math.isnan(warmup_cosine(0, 1, 0))
