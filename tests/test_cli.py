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
    # 10 % of the demo set is 8 labelled images: an explicit --batch-size 16 is refused before
    # training (issue 21), the preset's 256 left unset runs as 8, recorded
    with pytest.raises(SystemExit, match=r"batch_size=16 .*8 labelled image"):
        main(["finetune", "--ckpt", str(ckpt), "--epochs", "1", "--out", str(tmp_path / "ft.json"), *data])
    assert not (tmp_path / "ft.json").exists()
    data_ft = ["--dataset", "demo", "--image-size", "32", "--num-workers", "0"]
    assert main(["finetune", "--ckpt", str(ckpt), "--epochs", "1",
                 "--out", str(tmp_path / "ft.json"), *data_ft]) == 0
    ft = json.loads((tmp_path / "ft.json").read_text())[-1]
    assert ft["hparams"]["adapted"]["batch_size"] == {"default": 256, "used": 8}
    out = tmp_path / "backbone.safetensors"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    from safetensors.torch import load_file

    from ssl_cropmix.checkpoints import load_checkpoint

    exported = load_file(str(out))
    state = load_checkpoint(ckpt)["state_dict"]
    for k, v in exported.items():  # the query trunk's weights, bit for bit
        assert torch.equal(v, state["backbone." + k])


# ---------------------------------------------------------------------------- CLI conventions
def _print_config(argv: list[str], capsys, monkeypatch) -> dict:
    import yaml

    from ssl_cropmix.cli import main

    monkeypatch.setattr("sys.argv", ["ssl-cropmix"])
    with pytest.raises(SystemExit) as e:
        main(["fit", *argv, "--print_config"])
    assert e.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_short_class_names_resolve(tmp_path, monkeypatch, capsys):
    """``--model MAECropMix``, ``--data CropMixDataModule`` and a callback by class name
    resolve to the package's classes, without a dotted import path."""
    from cli_fixtures import write_tiny_recipe

    monkeypatch.chdir(tmp_path)
    recipe = write_tiny_recipe(tmp_path)
    cfg = _print_config(["--config", str(recipe), "--model", "MAECropMix", "--data", "CropMixDataModule",
                         "--trainer.callbacks+=KNNMonitor"], capsys, monkeypatch)
    assert cfg["model"]["class_path"].rsplit(".", 1)[-1] == "MAECropMix"
    assert cfg["data"]["class_path"].rsplit(".", 1)[-1] == "CropMixDataModule"
    assert [c["class_path"].rsplit(".", 1)[-1] for c in cfg["trainer"]["callbacks"]] == ["KNNMonitor"]
    from ssl_cropmix.methods.mae import MAECropMix

    mod, _, name = cfg["model"]["class_path"].rpartition(".")
    assert getattr(__import__(mod, fromlist=[name]), name) is MAECropMix


def test_print_config_shows_the_run_directory_and_loggers(tmp_path, monkeypatch, capsys):
    """What ``--print_config`` prints is what the run uses (TensorBoard + CSV loggers in
    runs/<experiment>/<version>, default_root_dir that run directory, where Lightning's SLURM
    requeue writes its hpc checkpoints), and printing creates nothing."""
    from cli_fixtures import write_tiny_recipe

    monkeypatch.chdir(tmp_path)
    recipe = write_tiny_recipe(tmp_path)
    cfg = _print_config(["--config", str(recipe), "--experiment", "demo"], capsys, monkeypatch)
    trainer = cfg["trainer"]
    kinds = [lg["class_path"].rsplit(".", 1)[-1] for lg in trainer["logger"]]
    assert kinds == ["TensorBoardLogger", "RunCSVLogger"]
    for lg in trainer["logger"]:
        assert lg["init_args"]["save_dir"] == "runs" and lg["init_args"]["name"] == "demo"
        assert lg["init_args"]["version"]
    assert trainer["default_root_dir"] == str(Path("runs", "demo", trainer["logger"][0]["init_args"]["version"]))
    assert not (tmp_path / "runs").exists()


def test_predict_is_not_offered(monkeypatch, capsys):
    """No model here has a predict_step, so ``predict`` is not a subcommand (it used to be
    listed and then fail with 'predict_dataloader must be implemented')."""
    from ssl_cropmix.cli import main

    monkeypatch.setattr("sys.argv", ["ssl-cropmix"])
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "predict" not in out and "fit" in out
    with pytest.raises(SystemExit) as e:
        main(["predict", "--help"])
    assert e.value.code != 0
    assert "predict" in capsys.readouterr().err


def test_experiment_names_a_user_logger_or_warns(tmp_path, monkeypatch):
    from cli_fixtures import write_tiny_recipe

    from ssl_cropmix.cli import cli_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("sys.argv", ["ssl-cropmix"])
    recipe = write_tiny_recipe(tmp_path)
    cli = cli_main(["--config", str(recipe), "--experiment", "mine", "--trainer.logger=CSVLogger",
                    f"--trainer.logger.save_dir={tmp_path / 'logs'}"], run=False)
    assert cli.trainer.logger.name == "mine"
    with pytest.warns(UserWarning, match="--experiment 'mine' ignored"):
        cli_main(["--config", str(recipe), "--experiment", "mine", "--trainer.logger=false"], run=False)


def test_16_mixed_on_cpu_is_reported_once(tmp_path, monkeypatch):
    """``precision: 16-mixed`` on a CPU runs bf16 autocast: one warning says so."""
    import warnings

    from cli_fixtures import write_tiny_recipe

    from ssl_cropmix.cli import cli_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["ssl-cropmix"])
    recipe = write_tiny_recipe(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = cli_main(["--config", str(recipe), "--trainer.precision=16-mixed", "--trainer.logger=false"], run=False)
    said = [str(w.message) for w in caught if "bf16" in str(w.message)]
    assert len(said) == 1, said
    assert cli.trainer.precision == "bf16-mixed"


