"""Issue 21: an evaluation on data smaller than its preset never trains on nothing, never
records NaN, adapts the defaults it may adapt visibly and refuses explicit values."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "callbacks"))
from eval_fixtures import FakeProvider, UserModule  # noqa: E402


@pytest.fixture
def info_log(caplog):
    caplog.set_level(logging.INFO, logger="pytorch_lightning.utilities.rank_zero")
    return caplog


def _quiet(**kw):
    return {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, **kw}


def _vit_holder():
    from test_mae_finetune import tiny_backbone

    holder = torch.nn.Module()
    holder.backbone = tiny_backbone()
    return holder


# ----------------------------------------------------------------- item 1: cannot train
def test_mae_finetune_on_three_labelled_images_with_explicit_batch_raises_before_training():
    """The reported case: 3 labelled images never fill MAE's device batch of 64 (drop_last).
    Before: Lightning said "No training batches", the command exited 0 with top-1 NaN."""
    from ssl_cropmix.evaluation.mae_finetune import MAEFineTuneRecipe, mae_finetune

    p = FakeProvider(n_per_class=1, num_classes=3)
    with pytest.raises(ValueError, match=r"device_batch_size=64") as e:
        mae_finetune(_vit_holder().backbone, p.labeled_train_dataloader(), p.labeled_val_dataloader(), 3,
                     MAEFineTuneRecipe(), timm_transform=False, trainer_kwargs=_quiet())
    msg = str(e.value)
    assert "3 labelled image(s)" in msg and "1 device(s)" in msg and "global batch 1024" in msg
    assert "at most 2" in msg and "leave it unset" in msg


def test_mae_finetune_default_batches_shrink_to_the_data_and_say_so_once(info_log):
    from ssl_cropmix.evaluation.mae_finetune import MAEFineTuneRecipe, mae_finetune

    p = FakeProvider(n_per_class=1, num_classes=3)  # 3 labelled images: one even device batch of 2
    res = mae_finetune(_vit_holder().backbone, p.labeled_train_dataloader(), p.labeled_val_dataloader(), 3,
                       MAEFineTuneRecipe(epochs=1, warmup_epochs=0), timm_transform=False, trainer_kwargs=_quiet(),
                       defaults={"batch_size", "device_batch_size"})
    assert math.isfinite(res.top1) and res.details["optimizer_steps"] == 1
    assert res.hparams["adapted"]["batch_size"] == {"default": 1024, "used": 2}
    assert (res.hparams["per_device_batch"], res.hparams["accumulate_grad_batches"], res.hparams["batch_size"]) == (2, 1, 2)
    assert res.hparams["lr"] == pytest.approx(5e-4 * 2 / 256)  # the lr of the batch that ran
    assert "default global batch 1024 adapted to the data: 2 used" in res.protocol
    said = [r.getMessage() for r in info_log.records if "default global batch 1024" in r.getMessage()]
    assert len(said) == 1 and "3 labelled images" in said[0] and "pass batch_size=" in said[0]


def test_plan_batches_names_count_batch_and_world_size():
    from ssl_cropmix.evaluation.base import plan_batches

    with pytest.raises(ValueError, match=r"no labelled training image \(0 labelled image\(s\), 2 device\(s\), global batch 256\)"):
        plan_batches("FT", 0, 10, 2, 256, batch_default=True)
    with pytest.raises(ValueError, match=r"no validation image \(5 labelled image\(s\), 1 device\(s\), global batch 256\)"):
        plan_batches("FT", 5, 0, 1, 256, batch_default=True)
    with pytest.raises(ValueError, match=r"3 labelled image\(s\) over 4 device\(s\) leave 0 per device.*fewer devices"):
        plan_batches("MAE", 3, 10, 4, 1024, 64, True, True, drop_last=True, even=True)
    # adapted: the largest batch of whole (even) device batches; 2 devices x 64, no accumulation left
    sizes = lambda p: (p.batch_size, p.device_batch, p.accumulate)  # noqa: E731
    assert sizes(plan_batches("MAE", 200, 10, 2, 1024, 64, True, True, drop_last=True, even=True)) == (128, 64, 1)
    assert sizes(plan_batches("LP", 300, 10, 1, 4096, 128, True, True)) == (256, 128, 2)  # 2 accumulated of 128
    assert plan_batches("LP", 64, 10, 1, 32).note is None  # fits: nothing adapted


def test_linear_probe_default_batch_adapts_and_explicit_batch_is_refused(info_log):
    """The preset's 4096 on 32 labelled images: 32 used (lr scaled to it), said once, recorded;
    an explicit batch_size=64 is refused naming the count (before: a partial batch ran
    with the lr of 64)."""
    from ssl_cropmix.callbacks import LinearProbe

    provider = FakeProvider(n_per_class=8)  # 32 labelled images
    res = LinearProbe(epochs=2, cached_features=True, provider=provider).evaluate(None, UserModule(), _quiet())
    assert res.hparams["batch_size"] == 32 and res.hparams["lr"] == pytest.approx(0.0125 * 32 / 256)
    assert res.hparams["adapted"]["batch_size"] == {"default": 4096, "used": 32}
    assert "default global batch 4096 adapted to the data: 32 used" in res.protocol
    assert sum("default global batch 4096" in r.getMessage() for r in info_log.records) == 1
    with pytest.raises(ValueError, match=r"batch_size=64 .*32 labelled image\(s\).*at most 32"):
        LinearProbe(epochs=2, batch_size=64, cached_features=True, provider=provider).evaluate(None, UserModule(), _quiet())


def test_finetune_on_an_empty_subset_raises_before_training():
    from torch.utils.data import DataLoader, TensorDataset

    from ssl_cropmix.evaluation.finetune import FINETUNE_PRESETS, finetune

    p = FakeProvider()
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match=r"cannot train: no labelled training image \(0 labelled.*label_fraction=0.01"):
        finetune(UserModule().backbone, empty, p.labeled_val_dataloader(), 4, FINETUNE_PRESETS["1pct"],
                 trainer_kwargs=_quiet(), defaults={"batch_size"})


def test_no_nan_result_is_logged_or_written(tmp_path):
    from ssl_cropmix.evaluation.results import EvalResult, publish

    res = EvalResult(key="mae_finetune", protocol="p", top1=float("nan"), top5=float("nan"), epochs=1,
                     train_samples=3, val_samples=0)
    with pytest.raises(ValueError, match="not a number"):
        publish(res, None, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()
    ok = EvalResult(key="k", protocol="p", top1=50.0, top5=100.0, epochs=1, train_samples=3, val_samples=2)
    publish(ok, None, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())[0]["top1"] == 50.0


# ----------------------------------------------------------------- item 2: warm-up and flags
def test_mae_probe_with_few_epochs_scales_the_warmup_visibly(info_log):
    """Before: `probe --preset mae --epochs N` failed for N < 10 (warmup 10 > epochs)."""
    from ssl_cropmix.callbacks import LinearProbe

    assert LinearProbe("mae", epochs=9).recipe.warmup_epochs == 1  # 10 of 90 -> 1 of 9
    probe = LinearProbe("mae", epochs=2, batch_size=32, cached_features=True, provider=FakeProvider(n_per_class=8))
    assert probe.recipe.warmup_epochs == 0
    res = probe.evaluate(None, UserModule(), _quiet())
    assert res.hparams["adapted"]["warmup_epochs"] == {"default": 10, "used": 0}
    assert "(0 warm-up)" in res.protocol and "default warmup_epochs 10 adapted: 0 used" in res.protocol
    assert any("the preset's 10 of 90 epochs -> 0 of 2" in r.getMessage() for r in info_log.records)
    with pytest.raises(ValueError, match="warmup_epochs=3 exceeds epochs=2"):
        LinearProbe("mae", epochs=2, warmup_epochs=3)  # explicit: refused, not changed


def test_probe_and_finetune_help_print_the_presets_values(capsys):
    from ssl_cropmix import commands

    for cmd in ("probe", "finetune"):
        with pytest.raises(SystemExit):
            commands.run(cmd, ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--warmup-epochs" in out and "moco 0, moco_simsiam_code 0, mae 10" in out
    assert "moco 4096, moco_simsiam_code 4096, mae 16384" in out and "--weight-decay" in out and "--head-norm" in out
    assert "preset: 5 of 100 (unset: scaled with --epochs)" in out and "--trunk-lr" in out and "--blr" in out
    assert "10pct 0.01, 1pct 0.02" in out  # trunk lrs


def test_finetune_refuses_a_flag_of_the_other_preset(capsys):
    from ssl_cropmix import commands

    with pytest.raises(SystemExit):
        commands.run("finetune", ["--ckpt", "x.ckpt", "--preset", "10pct", "--warmup-epochs", "2"])
    assert "--warmup-epochs does not apply to --preset 10pct" in capsys.readouterr().err


# ----------------------------------------------------------------- item 3: the CPU hint
def test_augmented_probe_on_cpu_names_the_fast_preset_once(info_log):
    from ssl_cropmix.callbacks import LinearProbe

    probe = LinearProbe(epochs=1, batch_size=32, provider=FakeProvider(n_per_class=8))
    probe.evaluate(None, UserModule(), _quiet())
    probe.evaluate(None, UserModule(), _quiet())
    hints = [r.getMessage() for r in info_log.records if "cached_features=True" in r.getMessage()]
    assert len(hints) == 1 and "configs/eval/linear_probe_fast.yaml" in hints[0] and "32 labelled images" in hints[0]
