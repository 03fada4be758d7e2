"""The supervised recipes in configs/classify/ instantiate through the CLI and put the view
the paper compares into the train transform: CropMix rows a CropMix with channel
permutation on their crop range, RRC rows a RandomResizedCrop on theirs (Sec. 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torchvision.transforms import v2

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "classify").glob("*.yaml"))
SCALES = {"075": (0.75, 1.0), "025": (0.25, 1.0), "001": (0.01, 1.0)}


def _instantiate(config: Path):
    from ssl_cropmix.cli import cli_main

    return cli_main(["--config", str(config), "--trainer.logger=false"], run=False)


def test_every_cifar_scale_and_both_methods_are_shipped():
    names = {p.stem for p in CONFIGS}
    for ds in ("cifar10", "cifar100"):
        for method in ("cropmix", "rrc"):
            assert {f"{ds}_{method}_{t}" for t in SCALES} <= names
    assert {f"imagenet_r{r}_{m}" for r in (1, 2, 3) for m in ("cropmix", "rrc")} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_instantiates_with_the_papers_train_view(config: Path, tmp_path, monkeypatch):
    from ssl_cropmix.data import views as V
    from ssl_cropmix.methods.classifier import CropMixClassifier
    from ssl_cropmix.transforms import CropMix

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    cli = _instantiate(config)
    model, dm, trainer = cli.model, cli.datamodule, cli.trainer
    assert isinstance(model, CropMixClassifier) and dm.views == "supervised"
    name = config.stem
    tf = dm.train_transform()
    assert isinstance(tf, v2.Compose) and isinstance(tf.transforms[-1], (V.ToNormalizedTensor, v2.RandomErasing))
    first, flip = tf.transforms[0], tf.transforms[1]
    assert isinstance(flip, v2.RandomHorizontalFlip)
    cifar = name.startswith("cifar")
    expected_scale = SCALES[name.rsplit("_", 1)[1]] if cifar else None
    if "_cropmix" in name:
        assert isinstance(first, CropMix)
        assert first.mixing == "mixup" and first.alpha == 0.4 and first.intermediate == "channel_permute"
        assert first.num_crops == ((2,) if cifar else (2, 3, 4))
        assert np.allclose(first.crop_scale, expected_scale or (0.01, 1.0))
    else:
        assert isinstance(first, v2.RandomResizedCrop)
        assert np.allclose(first.scale, expected_scale or (0.08, 1.0))
    hp = model.hparams
    if cifar:
        # Sec. 4.1 / official CIFAR code: 32 px, flip only (nothing but crop/mix, flip, normalise)
        assert dm.image_size == 32 and len(tf.transforms) == 3
        assert trainer.max_epochs == 300 and (hp.lr, hp.weight_decay, hp.milestones) == (0.1, 1e-4, [100, 200])
        assert dm.batch_size == 100 and model.head.out_features == (10 if name.startswith("cifar10_") else 100)
    else:
        assert dm.image_size == 224 and model.head.out_features == 1000
        assert dm.batch_size * trainer.num_devices == (256 if "_r1_" in name else 1024)
        if "_r1_" in name:  # the official ImageNet code = CropMixClassifier's defaults
            assert trainer.max_epochs == 300 and (hp.lr, hp.weight_decay, hp.lr_schedule) == (0.1, 1e-4, "step")
            assert hp.milestones == [75, 150, 225] and hp.label_smoothing == 0 and model.batch_aug is None
            assert len(tf.transforms) == 3
        else:
            aug = v2.TrivialAugmentWide if "_r2_" in name else v2.RandAugment
            assert any(isinstance(t, aug) for t in tf.transforms)
            assert isinstance(tf.transforms[-1], v2.RandomErasing)
            assert hp.label_smoothing == 0.1 and hp.batch_aug == "mixup_cutmix"
        # evaluation: resize 256, centre crop 224 (crop ratio 0.875)
        val = dm.eval_transforms()[1].transforms
        assert isinstance(val[0], v2.Resize) and val[0].size == [256] and isinstance(val[1], v2.CenterCrop)
