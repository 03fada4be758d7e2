"""The shipped evaluation fragments: combining the 1 % and 10 % fine-tunes gives two result
keys and two JSON records; the probe fragments carry the paper's batch sizes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "configs" / "smoke" / "moco_demo_cpu.yaml"


def _cli(*configs: Path, extra: tuple[str, ...] = ()):
    from ssl_cropmix.cli import cli_main

    args = ["--config", str(BASE)]
    for c in configs:
        args += ["--config", str(c)]
    return cli_main([*args, "--trainer.logger=false", *extra], run=False)


@pytest.mark.slow
def test_1pct_and_10pct_fragments_give_two_keys_and_two_records(tmp_path, monkeypatch):
    from ssl_cropmix.callbacks import SemiSupervisedFineTune

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    ev = REPO / "configs" / "eval"
    cli = _cli(ev / "finetune_1pct.yaml", ev / "finetune_10pct.yaml",
               extra=("--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=0",
                      f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"))
    fts = [c for c in cli.trainer.callbacks if isinstance(c, SemiSupervisedFineTune)]
    assert [c.preset for c in fts] == ["1pct", "10pct"]
    assert [c.key for c in fts] == ["finetune_1pct", "finetune_10pct"]
    for c in fts:  # the presets' lrs and fractions as shipped; only the length is cut for CPU
        c.recipe = replace(c.recipe, epochs=1, milestones=(1,), batch_size=8)
    cli.trainer.fit(cli.model, cli.datamodule)
    records = json.loads((tmp_path / "eval_results.json").read_text())
    assert [r["key"] for r in records] == ["finetune_1pct", "finetune_10pct"]
    assert [r["hparams"]["label_fraction"] for r in records] == [0.01, 0.1]
    assert [(r["hparams"]["trunk_lr"], r["hparams"]["head_lr"]) for r in records] == [(0.02, 5.0), (0.01, 0.2)]
    # distinct metric names, not both under finetune/top1
    assert set(fts[0].results[0].metrics()) == {"eval/finetune_1pct/top1", "eval/finetune_1pct/top5"}
    assert set(fts[1].results[0].metrics()) == {"eval/finetune_10pct/top1", "eval/finetune_10pct/top5"}


def test_probe_fragments_are_the_papers(monkeypatch, tmp_path):
    from ssl_cropmix.callbacks import LinearProbe, MAEFineTune

    monkeypatch.chdir(tmp_path)
    ev = REPO / "configs" / "eval"
    moco = [c for c in _cli(ev / "linear_probe_moco.yaml").trainer.callbacks if isinstance(c, LinearProbe)][0]
    assert (moco.recipe.optimizer, moco.recipe.batch_size, moco.recipe.base_lr * moco.recipe.batch_size / 256) == ("lars", 4096, 0.2)
    mae = [c for c in _cli(ev / "linear_probe_mae.yaml").trainer.callbacks if isinstance(c, LinearProbe)][0]
    r = mae.recipe
    assert (r.batch_size, r.device_batch_size, r.extract_chunk, r.head_norm, r.base_lr) == (16384, 1024, 256, True, 0.1)
    ft = [c for c in _cli(ev / "mae_finetune.yaml").trainer.callbacks if isinstance(c, MAEFineTune)][0]
    assert (ft.recipe.batch_size, ft.recipe.device_batch_size, ft.key) == (1024, 64, "mae_finetune")
