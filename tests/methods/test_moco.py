"""MoCoCropMix: loss vs reference, queue contents after a step, momentum update, gradient
flow, lr scaling, faults, resume, and 2-process DDP (gloo)."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from moco_helpers import pair_loader, tiny_moco

from ssl_cropmix.losses.infonce import infonce_queue_loss
from ssl_cropmix.methods.moco import MoCoCropMix


def _batch(b=4, size=16):
    g = torch.Generator().manual_seed(5)
    return (torch.rand(b, 3, size, size, generator=g), torch.rand(b, 3, size, size, generator=g)), torch.zeros(b)


def _trainer(tmp_path, **kw):
    args = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, deterministic=True, num_sanity_val_steps=0,
    )
    args.update(kw)
    return pl.Trainer(**args)


def test_step_loss_queue_and_momentum_update_match_references():
    model = tiny_moco(momentum=0.9)
    with torch.no_grad():  # make the momentum encoder differ from the query encoder
        for p in model.backbone_momentum.parameters():
            p.add_(0.1)
    (xq, xk), y = _batch()
    old_q = [p.detach().clone() for p in model.backbone.parameters()]
    old_k = [p.detach().clone() for p in model.backbone_momentum.parameters()]
    queue_before = model.queue.queue.clone()
    out = model.training_step(((xq, xk), y), 0)
    # momentum update: k <- m k + (1 - m) q, exactly
    for pk, ok, oq in zip(model.backbone_momentum.parameters(), old_k, old_q):
        assert torch.allclose(pk, 0.9 * ok + 0.1 * oq, atol=1e-7)
    # reference loss: MoCo's builder step written out (moco/builder.py, Chen et al. 2020):
    # q, k L2-normalised, l_pos = q.k, l_neg = q @ queue^T, logits / T, positive at index 0
    with torch.no_grad():
        q = model.projection_head(model.backbone(xq))
        k = model.projection_head_momentum(model.backbone_momentum(xk))
        qn, kn = q / q.norm(dim=1, keepdim=True), k / k.norm(dim=1, keepdim=True)
        l_pos = (qn * kn).sum(dim=1, keepdim=True)
        l_neg = qn @ queue_before.T
        logits = torch.cat([l_pos, l_neg], dim=1) / 0.2
        ref = (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()  # CE with label 0
    assert torch.allclose(out["loss"], ref, atol=1e-6)
    # and the package's loss agrees on the same inputs (it is used by the symmetric path)
    assert torch.allclose(infonce_queue_loss(q, k, queue_before, 0.2), ref, atol=1e-6)
    # queue: exactly the new keys, L2-normalised as in the reference MoCo, at [0, 4); the rest
    # untouched
    k_unit = k / k.norm(dim=1, keepdim=True)
    assert torch.allclose(model.queue.queue[:4], k_unit, atol=1e-6)
    assert torch.allclose(model.queue.queue[:4].norm(dim=1), torch.ones(4), atol=1e-6)
    assert torch.equal(model.queue.queue[4:], queue_before[4:])
    assert int(model.queue.ptr) == 4
    model.training_step(_batch(), 1)
    assert int(model.queue.ptr) == 8


def test_gradients_reach_only_the_query_encoder():
    model = tiny_moco()
    out = model.training_step(_batch(), 0)
    out["loss"].backward()
    for name, p in model.named_parameters():
        if name.startswith(("backbone_momentum", "projection_head_momentum")):
            assert p.grad is None and not p.requires_grad, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not model.queue.queue.requires_grad


def test_symmetric_enqueues_both_directions():
    model = tiny_moco(symmetric=True)
    model.training_step(_batch(), 0)
    assert int(model.queue.ptr) == 8


def test_cosine_momentum_schedule_reaches_one(tmp_path):
    model = tiny_moco(momentum=0.99, momentum_schedule="cosine")
    seen = []

    class Rec(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(pl_module.current_momentum())

    _trainer(tmp_path, max_steps=5, max_epochs=5, callbacks=[Rec()]).fit(model, pair_loader(8, 4))
    assert seen[0] == pytest.approx(0.99) and seen[-1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(seen, seen[1:]))


def test_lr_scaled_by_global_batch(tmp_path):
    model = tiny_moco(lr=None, base_lr=0.03)
    trainer = _trainer(tmp_path, max_steps=1, accumulate_grad_batches=2)
    trainer.fit(model, pair_loader(16, 4))
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(0.03 * 8 / 256)
    assert trainer.optimizers[0].param_groups[0]["momentum"] == 0.9
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == 1e-4


def test_optimizer_callable_is_used(tmp_path):
    model = tiny_moco(optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), cosine_lr=False)
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(model, pair_loader(8, 4))
    assert isinstance(trainer.optimizers[0], torch.optim.AdamW)


def test_single_sample_batch_rejected_at_train_start(tmp_path):
    with pytest.raises(ValueError, match="batch_size=1"):
        _trainer(tmp_path, max_steps=1).fit(tiny_moco(), pair_loader(4, 1))


def test_batch_larger_than_queue_rejected(tmp_path):
    with pytest.raises(ValueError, match="queue_size=4"):
        _trainer(tmp_path, max_steps=1).fit(tiny_moco(queue_size=4), pair_loader(8, 8))
    # symmetric: 2 x 6 keys per step do not fit a queue of 8 (6 alone would): refused up front
    with pytest.raises(ValueError, match="12 keys per step .* x2 for symmetric=True.* queue_size=8"):
        _trainer(tmp_path, max_steps=1).fit(tiny_moco(queue_size=8, symmetric=True), pair_loader(12, 6))


def test_queue_not_divisible_by_batch_wraps(tmp_path):
    model = tiny_moco(queue_size=10)
    _trainer(tmp_path, max_steps=3).fit(model, pair_loader(12, 4))
    assert int(model.queue.ptr) == 12 % 10


def test_nan_loss_names_the_step(tmp_path):
    model = tiny_moco()

    class Poison(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 2:
                batch[0][0].fill_(float("nan"))

    with pytest.raises(FloatingPointError, match="global step 2"):
        _trainer(tmp_path, max_steps=5, max_epochs=5, callbacks=[Poison()]).fit(model, pair_loader(8, 4))


def test_bad_arguments():
    with pytest.raises(ValueError, match="momentum_schedule"):
        tiny_moco(momentum_schedule="linear")
    with pytest.raises(ValueError, match="bn_mode"):
        tiny_moco(bn_mode="ghost")
    with pytest.raises(ValueError, match="queue_size"):
        tiny_moco(queue_size=0)
    with pytest.raises(ValueError, match="temperature"):
        tiny_moco(temperature=0)


def test_hparams_saved_and_backbone_protocol():
    model = MoCoCropMix(backbone="resnet18", small_image=True, proj_hidden_dim=32, out_dim=8, queue_size=64)
    assert model.hparams.backbone == "resnet18" and model.hparams.queue_size == 64
    assert "optimizer" not in model.hparams
    model.eval()
    assert model.backbone(torch.rand(2, 3, 32, 32)).shape == (2, 512)
    assert "backbone" not in tiny_moco().hparams


class _Losses(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def test_resume_continues_identically(tmp_path):
    pl.seed_everything(0)
    rec = _Losses()
    full = tiny_moco()
    _trainer(tmp_path / "a", max_epochs=4, callbacks=[rec]).fit(full, pair_loader(8, 4))
    assert len(rec.losses) == 8

    pl.seed_everything(0)
    first = _Losses()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=0)
    part = tiny_moco()

    class StopAfterTwoEpochs(pl.Callback):  # same max_epochs (lr/momentum schedules), interrupted
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = trainer.current_epoch == 1

    _trainer(
        tmp_path / "b", max_epochs=4, callbacks=[first, StopAfterTwoEpochs(), ckpt], enable_checkpointing=True
    ).fit(
        part, pair_loader(8, 4)
    )
    pl.seed_everything(1)  # a different seed: everything must come from the checkpoint
    second = _Losses()
    resumed = tiny_moco()
    _trainer(tmp_path / "c", max_epochs=4, callbacks=[second]).fit(
        resumed, pair_loader(8, 4), ckpt_path=str(tmp_path / "ck" / "last.ckpt")
    )
    assert first.losses == pytest.approx(rec.losses[:4], abs=1e-6)
    assert second.losses == pytest.approx(rec.losses[4:], abs=1e-6)
    assert torch.allclose(resumed.queue.queue, full.queue.queue, atol=1e-6)
    assert int(resumed.queue.ptr) == int(full.queue.ptr)
    for a, b in zip(resumed.backbone_momentum.parameters(), full.backbone_momentum.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    # merely loading the checkpoint (no fit) leaves the caller's RNG alone
    ck = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=False)
    assert "moco_rng_state" in ck
    loaded = tiny_moco()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    loaded.on_load_checkpoint(ck)
    assert torch.equal(torch.get_rng_state(), before)


class _SaveRankState(pl.Callback):
    def __init__(self, out_dir):
        self.out_dir = str(out_dir)
        self.keys = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.keys.append(outputs["keys"].cpu())

    def on_train_end(self, trainer, pl_module):
        torch.save(
            {"keys": self.keys, "queue": pl_module.queue.queue.cpu(), "ptr": int(pl_module.queue.ptr),
             "shuffle": pl_module._shuffle_distributed},
            f"{self.out_dir}/rank{trainer.global_rank}.pt",
        )


def test_ddp_two_processes_queue_holds_keys_of_both(tmp_path):
    model = tiny_moco(queue_size=32)
    trainer = _trainer(
        tmp_path, accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=2,
        callbacks=[_SaveRankState(tmp_path)], deterministic=False,
    )
    trainer.fit(model, pair_loader(8, 2, shuffle=False))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["shuffle"] and r1["shuffle"]  # shuffle-BN active across the two processes
    assert len(r0["keys"]) == len(r1["keys"]) == 2
    assert not torch.allclose(r0["keys"][0], r1["keys"][0])  # different data on each rank
    for r in (r0, r1):
        assert r["ptr"] == 8  # 2 steps x 2 processes x 2 samples
        for step in range(2):
            expected = torch.cat([r0["keys"][step], r1["keys"][step]])  # rank order
            assert torch.allclose(r["queue"][4 * step : 4 * step + 4], expected, atol=1e-6)


def _write_folder(root, classes=("a", "b", "c"), n=4, size=40):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size + i, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    return root


def test_fit_with_datamodule_resnet18_small_image_and_online_probe(tmp_path):
    from ssl_cropmix.callbacks.online_probe import OnlineLinearProbe
    from ssl_cropmix.data.datamodule import CropMixDataModule
    from ssl_cropmix.data.recipes import MoCoViews
    from ssl_cropmix.data.sources import ImageFolderSource

    dm = CropMixDataModule(
        ImageFolderSource(str(_write_folder(tmp_path / "data"))), MoCoViews("cropmix"), image_size=32, batch_size=4,
        num_workers=0,
    )
    model = MoCoCropMix(backbone="resnet18", small_image=True, proj_hidden_dim=64, out_dim=16, queue_size=64)
    backbone_before = copy.deepcopy(model.backbone_momentum.state_dict())
    probe = OnlineLinearProbe()
    trainer = _trainer(
        tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[probe], deterministic=False
    )
    trainer.fit(model, dm)
    assert int(model.queue.ptr) == 8
    assert probe.num_classes == 3 and probe.head.in_features == 512
    assert "online_probe/val_top1" in trainer.callback_metrics
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(0.03 * 4 / 256)
    changed = any(not torch.equal(v, backbone_before[k]) for k, v in model.backbone_momentum.state_dict().items())
    assert changed  # the key encoder moved (momentum update + BN statistics)


@pytest.mark.parametrize("mode,world,expect_sync,expect_shuffle", [
    ("sync", 2, True, False), ("shuffle", 2, False, True), ("shuffle", 1, False, False), ("sync", 1, False, False),
])
def test_bn_mode_choice(mode, world, expect_sync, expect_shuffle):
    from types import SimpleNamespace

    model = tiny_moco(bn_mode=mode)
    model._trainer = SimpleNamespace(world_size=world, datamodule=None)
    model.setup("fit")
    n_sync = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert (n_sync == n_bn == 4) if expect_sync else n_sync == 0  # BN2d + BN1d in both encoders
    assert model._shuffle_distributed is expect_shuffle


@pytest.mark.slow
def test_shuffle_bn_keeps_keys_aligned_across_two_processes(tmp_path):
    """2 gloo processes, shuffle-BN on: every key (and the queue) stays matched to its own
    image after the cross-process shuffle / unshuffle (see ddp_shuffle_alignment.py)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("ddp_shuffle_alignment.py")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "pg_init")], capture_output=True, text=True, timeout=240,
        env=env, cwd=root,
    )
    ok = proc.returncode == 0 and all(f"rank {r} aligned" in proc.stdout for r in (0, 1))
    assert ok, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_fit_with_default_datamodule_uses_the_papers_contrastive_query(tmp_path):
    """``Trainer.fit(MoCoCropMix(), CropMixDataModule(ImageFolderSource(root)))`` with no views given trains
    on the paper's contrastive preset (App. A): crops from (0.2, 0.6) and (0.6, 1), each
    MoCo-v2-augmented, CutMix-pasted; not the generic Mixup CropMix."""
    import numpy as np

    from ssl_cropmix.data.datamodule import CropMixDataModule
    from ssl_cropmix.data.recipes import MoCoViews
    from ssl_cropmix.data.sources import ImageFolderSource
    from ssl_cropmix.transforms import CropMix

    dm = CropMixDataModule(ImageFolderSource(str(_write_folder(tmp_path / "data"))), image_size=32, batch_size=4,
                           num_workers=0)
    seen = {}

    class Grab(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["query"] = trainer.train_dataloader.dataset.transform.query
            seen["shapes"] = [t.shape for t in batch[0]]

    model = MoCoCropMix()  # every default: ResNet-50, K 65536, m 0.999, T 0.2, base lr 0.03
    hp = model.hparams
    assert (hp.backbone, hp.queue_size, hp.momentum, hp.temperature, hp.base_lr) == ("resnet50", 65536, 0.999, 0.2, 0.03)
    # every default on 32-px images: the ImageNet stem is said once (issue 21.4), and it trains
    with pytest.warns(UserWarning, match="ImageNet stem.*small_image=True"):
        _trainer(tmp_path, max_steps=1, limit_val_batches=0, callbacks=[Grab()], deterministic=False).fit(model, dm)
    assert int(model.queue.ptr) == 4
    mix = seen["query"].transforms[0]
    assert isinstance(mix, CropMix) and mix.mixing == "cutmix" and mix.paste == "into_mix"
    assert np.allclose(mix.scale_ranges(2), ((0.2, 0.6), (0.6, 1.0))) and mix.view_transform is not None
    assert seen["shapes"] == [(4, 3, 32, 32), (4, 3, 32, 32)]
