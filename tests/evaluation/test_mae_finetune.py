"""MAE fine-tuning: parameter groups carry exactly MAE's layer-decayed lrs (hand computation
of ``lr_decay.py``'s rule), weight decay only on >1-d non-embedding weights, drop path and
Mixup/CutMix on, RandAugment + random erasing, and a tiny end-to-end fit."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import pytorch_lightning as pl
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "callbacks"))
from eval_fixtures import FakeProvider  # noqa: E402
from ssl_cropmix.callbacks.finetune import MAEFineTune  # noqa: E402
from ssl_cropmix.evaluation.mae_finetune import (  # noqa: E402
    MAEFineTuneModule,
    MAEFineTuneRecipe,
    layer_decay_groups,
    prepare_vit,
    timm_train_transform,
)

DEPTH = 3


def tiny_backbone(img: int = 8):
    from lightly.models.modules import MaskedVisionTransformerTIMM

    vit = timm.create_model("vit_tiny_patch16_224", img_size=img, patch_size=4, depth=DEPTH, embed_dim=16, num_heads=2,
                            num_classes=0, pretrained=False)
    return MaskedVisionTransformerTIMM(vit=vit)


def mae_layer_id(name: str, num_layers: int) -> int:
    """MAE's util/lr_decay.py get_layer_id_for_vit, written out again."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    return num_layers


def test_recipe_is_maes():
    r = MAEFineTuneRecipe()
    assert (r.epochs, r.warmup_epochs, r.batch_size, r.blr, r.weight_decay, r.betas) == (100, 5, 1024, 5e-4, 0.05, (0.9, 0.999))
    assert (r.layer_decay, r.drop_path, r.mixup, r.cutmix, r.label_smoothing, r.re_prob) == (0.65, 0.1, 0.8, 1.0, 0.1, 0.25)
    assert r.auto_augment == "rand-m9-mstd0.5-inc1"


def test_layer_decayed_lrs_match_mae_by_hand():
    vit = prepare_vit(tiny_backbone(), num_classes=5, drop_path=0.1)
    lr = 5e-4 * 1024 / 256
    groups = layer_decay_groups(vit, lr, 0.05, 0.65)
    got = {id(p): g for g in groups for p in g["params"]}
    names = dict(vit.named_parameters())
    assert len(got) == len(names)  # every trainable parameter in exactly one group
    num_layers = DEPTH + 1  # MAE: len(blocks) + 1
    seen_ids = set()
    for name, p in names.items():
        g = got[id(p)]
        layer_id = mae_layer_id(name, num_layers)
        seen_ids.add(layer_id)
        assert g["lr"] == pytest.approx(lr * 0.65 ** (num_layers - layer_id)), name  # = 0.65 ** (depth + 1 - id)
        no_decay = p.ndim == 1 or name in ("pos_embed", "cls_token")
        assert g["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert seen_ids == set(range(DEPTH + 2))  # embeddings, each block, head/fc_norm
    assert got[id(names["head.weight"])]["lr"] == pytest.approx(lr)
    assert got[id(names["blocks.2.mlp.fc1.weight"])]["lr"] == pytest.approx(lr * 0.65)
    assert got[id(names["pos_embed"])]["lr"] == pytest.approx(lr * 0.65 ** 4)


def test_drop_path_pooling_and_mixing_are_on():
    from timm.layers import DropPath
    from timm.loss import SoftTargetCrossEntropy

    vit = prepare_vit(tiny_backbone(), num_classes=4, drop_path=0.1)
    rates = [blk.drop_path1.drop_prob if isinstance(blk.drop_path1, DropPath) else 0.0 for blk in vit.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1])  # linear in depth, MAE/timm's stochastic depth rule
    assert all(isinstance(blk.drop_path2, DropPath) for blk in vit.blocks[1:])
    assert vit.global_pool == "avg" and isinstance(vit.fc_norm, torch.nn.LayerNorm) and isinstance(vit.norm, torch.nn.Identity)
    m = MAEFineTuneModule(vit, 4, MAEFineTuneRecipe())
    assert (m.mixup_fn.mixup_alpha, m.mixup_fn.cutmix_alpha, m.mixup_fn.label_smoothing) == (0.8, 1.0, 0.1)
    assert isinstance(m.criterion, SoftTargetCrossEntropy)
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    _, soft = m.mixup_fn(x, y)
    assert soft.shape == (4, 4) and torch.allclose(soft.sum(1), torch.ones(4))
    assert (soft.max(1).values < 1.0).all()  # smoothed and mixed targets, never one-hot
    tf = repr(timm_train_transform(32, MAEFineTuneRecipe(), (0.5,) * 3, (0.25,) * 3))
    assert "RandAugment" in tf and "RandomErasing" in tf and "p=0.25" in tf


def test_fit_with_accumulation_uses_the_groups(tmp_path):
    recipe = replace(MAEFineTuneRecipe(), epochs=2, warmup_epochs=1, batch_size=8, device_batch_size=4)
    vit = prepare_vit(tiny_backbone(), num_classes=4, drop_path=0.1)
    module = MAEFineTuneModule(vit, 4, recipe)
    x, y = FakeProvider(n_per_class=4).train
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=4, drop_last=True))
    opt = trainer.optimizers[0]
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    lr = 5e-4 * 8 / 256
    names = {id(p): n for n, p in vit.named_parameters()}
    for g in opt.param_groups:
        for p in g["params"]:
            assert g["initial_lr"] == pytest.approx(lr * 0.65 ** (DEPTH + 1 - mae_layer_id(names[id(p)], DEPTH + 1)))
    assert len(module.lr_history) == 4  # 16 images / 4 per step / 2 accumulated x 2 epochs


def test_callback_runs_and_keys_by_fraction():
    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = tiny_backbone()

    cb = MAEFineTune(epochs=1, warmup_epochs=0, batch_size=8, device_batch_size=8, provider=FakeProvider(n_per_class=8))
    assert cb.key == "mae_finetune" and MAEFineTune(label_fraction=0.1).key == "mae_finetune_10pct"
    with pytest.raises(TypeError, match="transform"):  # the toy provider's tensors cannot take MAE's PIL transform
        cb.run(None, Holder())
    from ssl_cropmix.evaluation.mae_finetune import mae_finetune

    p = FakeProvider(n_per_class=8)
    res = mae_finetune(Holder().backbone, p.labeled_train_dataloader(), p.labeled_val_dataloader(), 4, cb.recipe,
                       timm_transform=False, trainer_kwargs={"accelerator": "cpu", "enable_progress_bar": False})
    assert res.key == "mae_finetune" and res.val_samples == 32 and res.train_samples == 32
    assert "layer decay 0.65" in res.protocol and "drop path 0.1" in res.protocol and "Mixup 0.8 / CutMix 1" in res.protocol
    with pytest.raises(TypeError, match="VisionTransformer"):
        mae_finetune(torch.nn.Conv2d(3, 3, 1), p.labeled_train_dataloader(), p.labeled_val_dataloader(), 4, cb.recipe)


def test_mae_train_loader_drops_the_tail_per_rank_and_uses_the_given_dataset() -> None:
    """MAE's Mixup needs full, even batches: with ``drop_last`` every rank's shard and batches
    are cut (no padding, no short batch), ranks stay disjoint, and ``dataset`` replaces the
    loader's (the timm transform copy)."""
    from ssl_cropmix.evaluation.data import train_loader

    base = DataLoader(TensorDataset(torch.zeros(11, 1), torch.zeros(11)), batch_size=3)
    other = TensorDataset(torch.arange(11.0)[:, None], torch.arange(11))
    shards = []
    for rank in range(2):
        dl = train_loader(base, 4, world=2, rank=rank, seed=0, dataset=other, drop_last=True)
        batches = [y.tolist() for _, y in dl]
        assert [len(b) for b in batches] == [4]  # 11 // 2 = 5 per rank, one full batch of 4
        shards.append({i for b in batches for i in b})
    assert not shards[0] & shards[1]
    padded = train_loader(base, 4, world=2, rank=0, seed=0)  # default: padded to 6 per rank, short last batch
    assert [len(y) for _, y in padded] == [4, 2]
