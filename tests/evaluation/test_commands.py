"""`ssl-cropmix probe` / `finetune`: same modules as the callbacks, `--trainer.*` and
`--config`, data settings from the checkpoint, results in the checkpoint's run directory,
`--batch-size` is the probe's batch, one clear line for a missing GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A 2-step MoCo run on the demo set at 32 px, checkpoint in <run>/checkpoints/."""
    from ssl_cropmix.data.datamodule import CropMixDataModule
    from ssl_cropmix.data.recipes import MoCoViews
    from ssl_cropmix.data.sources import DemoSource
    from ssl_cropmix.methods.moco import MoCoCropMix

    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    dm = CropMixDataModule(DemoSource(), MoCoViews("contrastive"), image_size=32, batch_size=16, num_workers=0,
                           persistent_workers=False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    model = MoCoCropMix(backbone="resnet18", small_image=True, queue_size=64)
    cb = pl.callbacks.ModelCheckpoint(dirpath=run / "checkpoints", save_last=True)
    pl.Trainer(accelerator="cpu", max_steps=2, logger=False, callbacks=[cb], enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0, default_root_dir=run).fit(model, dm)
    return run / "checkpoints" / "last.ckpt"


def _records(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def test_probe_reads_data_from_checkpoint_and_writes_into_its_run(ckpt, tmp_path, capsys):
    from ssl_cropmix.cli import main

    cfg = tmp_path / "probe.yaml"
    cfg.write_text("preset: moco\nepochs: 1\ncached_features: true\nnum_workers: 0\ntrainer:\n  accelerator: cpu\n")
    assert main(["probe", "--ckpt", str(ckpt), "--config", str(cfg), "--batch-size", "32",
                 "--trainer.precision", "bf16-mixed", "--trainer.devices", "1"]) == 0
    recs = _records(ckpt.parent.parent / "eval_results.json")  # <run>/eval_results.json, not ./
    r = recs[-1]
    assert r["key"] == "linear" and r["checkpoint"] == str(ckpt)
    assert r["hparams"]["batch_size"] == 32 and r["hparams"]["per_device_batch"] == 32  # --batch-size is the probe's
    assert r["hparams"]["epochs"] == 1 and r["hparams"]["cached_features"] is True  # from --config
    d = r["hparams"]["data"]
    assert (d["source"]["class_path"], d["image_size"], d["small_image"]) == ("ssl_cropmix.data.sources.DemoSource", 32, True)  # from the checkpoint
    assert d["mean"] == [0.5, 0.5, 0.5] and d["std"] == [0.25, 0.25, 0.25]
    assert r["hardware"]["precision"] == "bf16-mixed" and r["hardware"]["accelerator"] == "CPUAccelerator"
    assert r["val_samples"] == 64 and r["train_samples"] == 64
    assert not (Path.cwd() / "linear_probe.json").exists() and not (Path.cwd() / "eval_results.json").exists()


def test_finetune_scales_milestones_and_states_real_fraction(ckpt, tmp_path):
    from ssl_cropmix.cli import main

    out = tmp_path / "ft.json"
    assert main(["finetune", "--ckpt", str(ckpt), "--preset", "1pct", "--epochs", "3", "--batch-size", "8",
                 "--num-workers", "0", "--trainer.accelerator", "cpu", "--out", str(out)]) == 0
    r = _records(out)[-1]
    assert r["key"] == "finetune_1pct"
    assert "x0.1 at epochs [1, 2, 3] of 3" in r["protocol"]
    # 1 % of 64 demo images is one image per class: 8 images, 12.5 % of the split
    assert "8 labelled images = 12.5% of 64 (1% asked)" in r["protocol"]
    assert r["hparams"]["real_label_fraction"] == pytest.approx(0.125)


def test_cuda_on_a_cpu_machine_is_one_line(ckpt, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from ssl_cropmix.cli import main

    for cmd in ("probe", "finetune"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--ckpt", str(ckpt), "--device", "cuda"])
        msg = str(e.value.code)
        assert "\n" not in msg and "no" in msg.lower() and "CUDA GPU" in msg and msg.startswith(f"ssl-cropmix {cmd}")
    with pytest.raises(SystemExit):
        main(["probe", "--ckpt", str(ckpt), "--trainer.accelerator", "gpu"])


def test_config_with_unknown_key_is_refused(ckpt, tmp_path, capsys):
    from ssl_cropmix.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("epoks: 3\n")
    with pytest.raises(SystemExit):
        main(["probe", "--ckpt", str(ckpt), "--config", str(cfg)])
    assert "unknown option(s) ['epoks']" in capsys.readouterr().err
