"""SemiSupervisedFineTune: trunk/head lrs through the whole schedule, exact label fraction,
pretrained module untouched, standalone entry point from a checkpoint."""

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
    assert res.train_samples == 20 and res.samples_seen_per_epoch == 20
    expected = [(0.02 * 0.1**k, 5.0 * 0.1**k) for k in (0, 0, 1, 1, 2, 2, 3)]
    assert len(res.lr_history) == 7
    for (t, h), (et, eh) in zip(res.lr_history, expected):
        assert t == pytest.approx(et) and h == pytest.approx(eh)
        assert h / t == pytest.approx(250.0)  # the reference code's bug would make this 1
    after = snapshot(module)  # fine-tuning worked on a deep copy
    assert all(torch.equal(before[k], after[k]) for k in before)
    rec = json.loads((tmp_path / "ft.json").read_text())[0]
    assert "finetune[1pct]" in rec["protocol"] and "10% labels" in rec["protocol"]
    assert 0 <= rec["top1"] <= rec["top5"] <= 100


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
    # 1 probe call for the feature width + 8 training batches + the validation batches:
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
    assert res.train_samples == 128 and len(res.lr_history) == 2


def test_validation():
    with pytest.raises(ValueError, match="preset.*'5pct'"):
        SemiSupervisedFineTune("5pct")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label_fraction.*1.5"):
        SemiSupervisedFineTune(label_fraction=1.5)
    with pytest.raises(ValueError, match="head_lr.*0"):
        SemiSupervisedFineTune(head_lr=0)
