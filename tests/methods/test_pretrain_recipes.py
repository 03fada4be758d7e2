"""The ImageNet pretraining recipes reproduce the papers' global batch and precision (or say
why not): MoCo 256 = 4 GPUs x 64 in fp32 (Asym-Siam's main_moco.py), MAE 4096 = 4 x 64 x 16
(CropMix's mae/PRETRAIN.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _instantiate(config: Path):
    from ssl_cropmix.cli import cli_main

    return cli_main(["--config", str(config), "--trainer.logger=false"], run=False)


@pytest.mark.parametrize("name", ["imagenet_cropmix", "imagenet_scalemix", "imagenet_plain"])
def test_moco_imagenet_recipes_use_a_global_batch_of_256(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = _instantiate(REPO / "configs" / "moco" / f"{name}.yaml")
    t, dm, m = cli.trainer, cli.datamodule, cli.model
    assert t.num_devices * t.num_nodes * dm.batch_size * t.accumulate_grad_batches == 256
    assert t.precision == "32-true" and m.hparams.base_lr == 0.03 and m.hparams.queue_size == 65536
    expected = {"imagenet_cropmix": "contrastive", "imagenet_scalemix": "scalemix", "imagenet_plain": "plain"}[name]
    assert dm.views.query == expected


@pytest.mark.parametrize("name,view,epochs", [("imagenet_cropmix", "cropmix_cutmix", 200),
                                              ("imagenet10pct_cropmix", "cropmix_mixup", 300)])
def test_mae_imagenet_recipes_use_an_effective_batch_of_4096(name, view, epochs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = _instantiate(REPO / "configs" / "mae" / f"{name}.yaml")
    t, dm, m = cli.trainer, cli.datamodule, cli.model
    assert t.num_devices * dm.batch_size * t.accumulate_grad_batches == 4096
    assert dm.views.kind == view and t.max_epochs == epochs and m.hparams.warmup_epochs == 20
    assert m.hparams.base_lr == 1.5e-4 and m.hparams.weight_decay == 0.05 and m.hparams.norm_pix_loss


def test_cli_refuses_a_misspelt_query_at_parse_time_and_takes_a_transform(tmp_path, monkeypatch, capsys):
    """``query`` is ``Literal[names] | Callable``: a typo fails while parsing (a short usage
    error naming the choices, before anything is built); a ``class_path`` gives a transform."""
    from torchvision.transforms import v2

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    smoke = REPO / "configs" / "smoke" / "moco_demo_cpu.yaml"
    from ssl_cropmix.cli import cli_main

    with pytest.raises(SystemExit) as e:
        cli_main(["--config", str(smoke), "--data.views.query=contrastiv", "--trainer.logger=false"], run=False)
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert "contrastiv" in err and "'contrastive'" in err and "Traceback" not in err
    cli = cli_main(
        ["--config", str(smoke), "--data.views.query=torchvision.transforms.v2.RandomHorizontalFlip",
         "--trainer.logger=false"], run=False,
    )
    assert isinstance(cli.datamodule.views.query, v2.RandomHorizontalFlip)
