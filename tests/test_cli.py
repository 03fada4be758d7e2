"""The CLI: every recipe in configs/ parses and instantiates (no training), task commands
have help, and the run directory holds config + logs."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]

CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if not p.name.startswith("_"))


def _instantiate(config: Path, *extra: str):
    from ssl_cropmix.cli import cli_main

    return cli_main(["--config", str(config), *extra, "--trainer.logger=false"], run=False)


@pytest.mark.parametrize("config", CONFIGS, ids=[str(p.relative_to(REPO / "configs")) for p in CONFIGS])
def test_every_config_instantiates(config: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = _instantiate(config)
    from pytorch_lightning import LightningDataModule, LightningModule, Trainer

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
