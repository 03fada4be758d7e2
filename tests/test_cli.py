"""The CLI: every recipe in configs/ parses and instantiates (no training), task commands
have help, and the run directory holds config + logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]

CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if not p.name.startswith("_"))


def _instantiate(config: Path, *extra: str):
    from ssl_cropmix.cli import cli_main

    return cli_main(["--config", str(config), *extra, "--trainer.logger=false"], run=False)


FRAGMENT_BASE = REPO / "configs" / "smoke" / "moco_demo_cpu.yaml"


@pytest.mark.parametrize("config", CONFIGS, ids=[str(p.relative_to(REPO / "configs")) for p in CONFIGS])
def test_every_config_instantiates(config: Path, tmp_path, monkeypatch):
    """Full recipes instantiate alone; evaluation fragments (``configs/eval``, callbacks
    appended with ``callbacks+:``) instantiate on top of a pretraining recipe and really add
    their callbacks to the base recipe's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    from pytorch_lightning import LightningDataModule, LightningModule, Trainer

    fragment = config.parent.name == "eval"
    if fragment:
        base = _instantiate(FRAGMENT_BASE)
        cli = _instantiate(FRAGMENT_BASE, "--config", str(config))
        base_cbs = {type(c).__name__ for c in base.trainer.callbacks}
        added = [type(c).__name__ for c in cli.trainer.callbacks if type(c).__name__ not in base_cbs]
        assert added, f"{config.name} added no callback to the base recipe"
        assert base_cbs <= {type(c).__name__ for c in cli.trainer.callbacks}, "base callbacks were replaced"
    else:
        cli = _instantiate(config)
    assert isinstance(cli.model, LightningModule)
    assert isinstance(cli.datamodule, LightningDataModule)
    assert isinstance(cli.trainer, Trainer)


def test_main_help_lists_task_commands(capsys, monkeypatch):
    from ssl_cropmix.cli import main

    monkeypatch.setattr("sys.argv", ["ssl-cropmix", "--help"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("fit", "validate", "test", "show-views", "probe", "finetune", "export"):
        assert cmd in out


def test_fit_smoke_recipe_writes_one_run_directory(tmp_path, monkeypatch):
    """A real (tiny) `ssl-cropmix fit` through the CLI: the model/data hparams merge for the
    loggers, and config, TensorBoard events, metrics.csv and a checkpoint share one folder."""
    from ssl_cropmix.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    config = REPO / "configs" / "smoke" / "moco_demo_cpu.yaml"
    monkeypatch.setattr(
        "sys.argv",
        ["ssl-cropmix", "fit", "--config", str(config), "--experiment", "smoke",
         "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
         "--trainer.enable_progress_bar=false"],
    )
    assert main() == 0
    runs = list((tmp_path / "runs" / "smoke").iterdir())
    assert len(runs) == 1
    run = runs[0]
    assert (run / "config.yaml").is_file()
    assert (run / "metrics.csv").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    assert list((run / "checkpoints").glob("*.ckpt"))
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss" in header

    # the task commands work on that checkpoint (rebuilt from its recorded class path)
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    data = ["--dataset", "demo", "--image-size", "32", "--batch-size", "16", "--num-workers", "0"]
    assert main(["probe", "--ckpt", str(ckpt), "--epochs", "2", "--cached-features",
                 "--out", str(tmp_path / "probe.json"), *data]) == 0
    probe = json.loads((tmp_path / "probe.json").read_text())
    probe = probe[-1] if isinstance(probe, list) else probe
    assert "cached features" in probe["protocol"] and 0 <= probe["top1"] <= 100
    assert main(["finetune", "--ckpt", str(ckpt), "--epochs", "1",
                 "--out", str(tmp_path / "ft.json"), *data]) == 0
    assert (tmp_path / "ft.json").is_file()
    out = tmp_path / "backbone.safetensors"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    from safetensors.torch import load_file

    from ssl_cropmix.checkpoints import load_checkpoint

    exported = load_file(str(out))
    state = load_checkpoint(ckpt)["state_dict"]
    for k, v in exported.items():  # the query trunk's weights, bit for bit
        assert torch.equal(v, state["backbone." + k])
