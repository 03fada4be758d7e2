"""SemiSupervisedFineTune: trunk/head lrs at each milestone, milestones scaled with epochs,
the real label fraction in the protocol, pretrained module untouched, standalone entry point
from a checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from eval_fixtures import FakeProvider, UserModule, snapshot
from ssl_cropmix.callbacks.finetune import (
    FINETUNE_PRESETS,
    SemiSupervisedFineTune,
    copy_feature_module,
    finetune_from_checkpoint,
)


def test_presets_match_paper():
    p10, p1 = FINETUNE_PRESETS["10pct"], FINETUNE_PRESETS["1pct"]
    assert (p10.label_fraction, p10.trunk_lr, p10.head_lr) == (0.1, 0.01, 0.2)
    assert (p1.label_fraction, p1.trunk_lr, p1.head_lr) == (0.01, 0.02, 5.0)
    for p in (p10, p1):
        assert (p.epochs, p.milestones, p.gamma, p.momentum, p.weight_decay) == (100, (30, 60, 90), 0.1, 0.9, 0.0)


def test_lrs_stay_separate_and_fraction_is_exact(tmp_path):
    provider = FakeProvider(n_per_class=50)  # 4 classes x 50 -> 10% = 5 per class = 20 images
    module = UserModule()
    before = snapshot(module)
    cb = SemiSupervisedFineTune(
        "1pct", label_fraction=0.1, epochs=7, milestones=(2, 4, 6), batch_size=8, provider=provider,
        results_path=tmp_path / "ft.json",
    )
    res = cb.run(None, module)
    assert provider.calls[-1]["label_fraction"] == 0.1 and provider.calls[-1]["augment"] is True
    assert res.train_samples == 20 and res.details["samples_seen_per_epoch"] == 20
    expected = [(0.02 * 0.1**k, 5.0 * 0.1**k) for k in (0, 0, 1, 1, 2, 2, 3)]
    history = res.details["lr_history"]
    assert len(history) == 7
    for (t, h), (et, eh) in zip(history, expected):
        assert t == pytest.approx(et) and h == pytest.approx(eh)
        assert h / t == pytest.approx(250.0)  # the reference code's bug would make this 1
    after = snapshot(module)  # fine-tuning worked on a deep copy
    assert all(torch.equal(before[k], after[k]) for k in before)
    rec = json.loads((tmp_path / "ft.json").read_text())[0]
    assert rec["key"] == "finetune_10pct"  # the fraction used, not the preset's name
    assert "finetune[1pct]" in rec["protocol"] and "20 labelled images = 10% of 200" in rec["protocol"]
    assert 0 <= rec["top1"] <= rec["top5"] <= 100


def test_milestones_scale_with_epochs_and_real_fraction_is_reported():
    """Issue 18.4: `--epochs 3` must not keep milestones [30, 60, 90], and a fraction that
    rounds to one image per class must say how many images were really kept."""
    cb = SemiSupervisedFineTune("1pct", epochs=3, batch_size=8, provider=FakeProvider(n_per_class=12))
    assert cb.recipe.milestones == (1, 2, 3)  # round(30/100*3), round(60/100*3), round(90/100*3)
    assert SemiSupervisedFineTune("1pct", epochs=200).recipe.milestones == (60, 120, 180)
    assert SemiSupervisedFineTune("1pct").recipe.milestones == (30, 60, 90)
    assert SemiSupervisedFineTune("1pct", epochs=10, milestones=(4,)).recipe.milestones == (4,)  # explicit wins

    class OnePerClass(FakeProvider):  # like the data module: at least one image per class
        def labeled_train_dataloader(self, augment=True, batch_size=None, label_fraction=None, subset_file=None, shuffle=True):
            frac = None if label_fraction is None else max(label_fraction, 1 / 12)
            return super().labeled_train_dataloader(augment, batch_size, frac, subset_file, shuffle)

    res = SemiSupervisedFineTune("1pct", epochs=3, batch_size=4, provider=OnePerClass(n_per_class=12)).run(None, UserModule())
    assert "4 labelled images = 8.33% of 48 (1% asked)" in res.protocol
    assert "x0.1 at epochs [1, 2, 3] of 3" in res.protocol
    assert res.hparams["real_label_fraction"] == pytest.approx(4 / 48)
    assert [h[0] for h in res.details["lr_history"]] == pytest.approx([0.02, 0.002, 0.0002])  # x0.1 from epochs 1 and 2 on


def test_finetune_learns_and_subset_file_wins(tmp_path):
    provider = FakeProvider()
    cb = SemiSupervisedFineTune("10pct", subset_file="list.txt", epochs=3, milestones=(2,), provider=provider)
    assert cb.run(None, UserModule()).protocol.endswith("(subset file list.txt)")
    assert provider.calls[-1]["label_fraction"] is None and provider.calls[-1]["subset_file"] == "list.txt"


class TimmLikeBackbone(torch.nn.Module):
    """Like a timm model with ``num_classes=0``: ``forward`` pools, ``forward_features`` does not."""

    pooled_calls = 0  # class-level: counts calls on the callback's deep copy too

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward_features(self, x):
        return self.conv(x)  # (B, 8, H, W)

    def forward(self, x):
        TimmLikeBackbone.pooled_calls += 1
        return self.conv(x).mean((2, 3))  # (B, 8)


def test_backbone_is_called_through_forward_not_forward_features():
    module = UserModule()
    module.backbone = TimmLikeBackbone()
    TimmLikeBackbone.pooled_calls = 0
    cb = SemiSupervisedFineTune("10pct", label_fraction=0.5, epochs=1, batch_size=16, provider=FakeProvider())
    assert cb.run(None, module).train_samples == 128
    # 1 call for the feature width + 8 training batches + the validation batches:
    # the head was trained on pooled (B, 8) features, never on a flattened (B, 8*H*W) map
    assert TimmLikeBackbone.pooled_calls >= 9
    trunk = copy_feature_module(module)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(trunk(x), module.backbone(x))


def test_from_checkpoint(tmp_path):
    module = UserModule()
    path = tmp_path / "w.pt"
    torch.save({"state_dict": module.state_dict()}, path)
    template = UserModule().backbone
    res = finetune_from_checkpoint(path, FakeProvider(), "10pct", backbone=template, label_fraction=0.5, epochs=2, batch_size=16)
    assert res.train_samples == 128 and len(res.details["lr_history"]) == 2
    assert res.checkpoint == str(path)


def test_validation():
    with pytest.raises(ValueError, match="preset.*'5pct'"):
        SemiSupervisedFineTune("5pct")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label_fraction.*1.5"):
        SemiSupervisedFineTune(label_fraction=1.5)
    with pytest.raises(ValueError, match="head_lr.*0"):
        SemiSupervisedFineTune(head_lr=0)
    with pytest.raises(ValueError, match="bn_mode.*'global'"):
        SemiSupervisedFineTune(bn_mode="global")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"num_classes=2 is below the data's class count \(4\)"):
        SemiSupervisedFineTune(num_classes=2, provider=FakeProvider()).run(None, UserModule())


def test_sync_bn_only_with_a_live_multi_process_group():
    """bn_mode="sync" converts the copy's BatchNorm only when more than one process runs in a
    live process group (a CPU run, or a trainer that claims two devices without a group,
    keeps plain BatchNorm, which SyncBatchNorm would refuse on the CPU)."""
    from dataclasses import replace
    from types import SimpleNamespace

    from ssl_cropmix.evaluation.finetune import SemiSupervisedFineTuneModule

    recipe = replace(FINETUNE_PRESETS["10pct"], bn_mode="sync")
    for world in (1, 2):
        m = SemiSupervisedFineTuneModule(copy_feature_module(UserModule()), 16, 4, recipe)
        m._trainer = SimpleNamespace(world_size=world)
        m.setup("fit")
        assert not any(isinstance(x, torch.nn.SyncBatchNorm) for x in m.modules())
        assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())


def test_head_is_initialised_from_normal_0_01_with_zero_bias():
    """The fine-tuning head starts from N(0, 0.01) weights and a zero bias (the reference
    recipe), not PyTorch's default uniform(+-1/sqrt(D)), whose std is 1/sqrt(3 D) = 0.026 here."""
    from ssl_cropmix.evaluation.finetune import SemiSupervisedFineTuneModule

    torch.manual_seed(0)
    m = SemiSupervisedFineTuneModule(torch.nn.Identity(), 512, 100, FINETUNE_PRESETS["10pct"])
    w = m.head.weight.detach()
    assert w.shape == (100, 512)
    # 51,200 draws: the sample std of N(0, 0.01) is within 2 % of 0.01 with overwhelming probability
    assert abs(float(w.std()) - 0.01) < 2e-4
    assert abs(float(w.mean())) < 2e-4
    assert torch.count_nonzero(m.head.bias) == 0
