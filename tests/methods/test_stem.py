"""Issue 21.4: backbone and image size agree. In Python, a fit on <= 64-px images with the
ImageNet stem warns once naming ``small_image=True``; through the CLI, a ``small_image``
contradicting the data's ``image_size`` is refused and an unset MAE ``img_size`` /
``patch_size`` comes from it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from moco_helpers import PairDataset

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fit(model, size: int, steps: int = 2):
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, DataLoader(PairDataset(n=8, size=size), batch_size=4, drop_last=True))


def test_imagenet_stem_on_32px_warns_once_naming_the_fix():
    from ssl_cropmix.methods.moco import MoCoCropMix

    model = MoCoCropMix(backbone="resnet18", queue_size=16, proj_hidden_dim=16, out_dim=8, lr=0.01)
    with pytest.warns(UserWarning, match=r"ImageNet stem .* 32 px .*small_image=True") as rec:
        _fit(model, 32)
    assert sum("ImageNet stem" in str(w.message) for w in rec) == 1  # two steps, one warning


def test_small_stem_or_large_images_do_not_warn():
    from ssl_cropmix.methods.moco import MoCoCropMix
    from ssl_cropmix.methods.stem import has_imagenet_stem, warn_imagenet_stem_on_small_images
    from ssl_cropmix.models.backbones import build_backbone

    model = MoCoCropMix(backbone="resnet18", small_image=True, queue_size=16, proj_hidden_dim=16, out_dim=8, lr=0.01)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*ImageNet stem.*")
        _fit(model, 32, steps=1)
        assert not warn_imagenet_stem_on_small_images("M", build_backbone("resnet18")[0], 96)
    assert has_imagenet_stem(build_backbone("resnet18")[0]) and not has_imagenet_stem(build_backbone("resnet18", small_image=True)[0])


def test_cli_refuses_a_small_image_that_contradicts_the_data(tmp_path, monkeypatch):
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from ssl_cropmix.cli import cli_main

    monkeypatch.chdir(tmp_path)
    smoke = REPO / "configs" / "smoke" / "moco_demo_cpu.yaml"
    with pytest.raises(MisconfigurationException, match=r"model.small_image=False .*data.image_size=32 .*"
                                                        r"--model.init_args.small_image=true"):
        cli_main(["--config", str(smoke), "--model.init_args.small_image=false", "--trainer.logger=false"], run=False)
    with pytest.raises(MisconfigurationException, match=r"model.small_image=True .*data.image_size=96"):
        cli_main(["--config", str(smoke), "--data.init_args.image_size=96", "--trainer.logger=false"], run=False)


def test_cli_links_an_unset_mae_img_size_and_patch_size_from_the_data(tmp_path, monkeypatch):
    from ssl_cropmix.cli import cli_main

    monkeypatch.chdir(tmp_path)
    cfg = REPO / "configs" / "mae" / "cifar10_cropmix.yaml"
    cli = cli_main(["--config", str(cfg), "--model.init_args.img_size=null", "--model.init_args.patch_size=null",
                    "--trainer.logger=false"], run=False)
    assert cli.model.hparams.img_size == 32 and cli.model.patch_size == 4  # 224/16 before: refused at setup
    cli = cli_main(["--config", str(cfg), "--trainer.logger=false"], run=False)  # explicit values: kept
    assert (cli.model.hparams.img_size, cli.model.patch_size) == (32, 4)
