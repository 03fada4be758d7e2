"""Method and data settings refused at construction (or setup), naming the parameter and
value (issue 14, item 6)."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
from moco_helpers import tiny_backbone, tiny_moco

from ssl_cropmix.methods.mae import MAECropMix

TINY_VIT = dict(model_name="vit_tiny_patch16_224", img_size=32, patch_size=8, vit_kwargs={"depth": 1},
                decoder_dim=32, decoder_depth=1, decoder_num_heads=2)


@pytest.mark.parametrize("kw,msg", [
    ({"weight_decay": -1e-4}, r"weight_decay must be a number in \[0, inf\), got -0.0001"),
    ({"sgd_momentum": -0.9}, r"sgd_momentum must be a number in \[0, 1.0\), got -0.9"),
    ({"sgd_momentum": 1.0}, r"sgd_momentum must be a number in \[0, 1.0\), got 1.0"),
    ({"temperature": 1e-9}, r"temperature must be a finite number >= 0.001, got 1e-09"),
    ({"temperature": float("inf")}, r"temperature must be a finite number >= 0.001, got inf"),
])
def test_moco_refuses(kw, msg):
    with pytest.raises(ValueError, match=msg):
        tiny_moco(**kw)


@pytest.mark.parametrize("backbone", ["timm/vit_tiny_patch16_224", "timm/deit_tiny_patch16_224"])
def test_moco_refuses_a_vit_backbone_by_name(backbone):
    with pytest.raises(ValueError, match=rf"MoCoCropMix takes a ResNet backbone .* got a ViT backbone='{backbone}'"):
        tiny_moco(backbone=backbone)


def test_moco_refuses_a_vit_module():
    vit = MAECropMix(**TINY_VIT).backbone.vit
    with pytest.raises(ValueError, match="got a ViT backbone='VisionTransformer'; use MAECropMix"):
        tiny_moco(backbone=vit)


def test_moco_accepts_numpy_scalars_and_bounds():
    m = tiny_moco(backbone=tiny_backbone(), temperature=np.float32(0.2), weight_decay=np.float64(0.0),
                  sgd_momentum=np.float32(0.0))
    assert m.hparams.temperature == pytest.approx(0.2)
    tiny_moco(temperature=1e-3)  # the documented minimum itself


@pytest.mark.parametrize("betas,shown", [((0.9, 1.0), r"\(0.9, 1.0\)"), ((-0.1, 0.95), r"\(-0.1, 0.95\)"),
                                         ((0.9,), r"\(0.9,\)"), ("ab", "'ab'")])
def test_mae_refuses_bad_betas(betas, shown):
    with pytest.raises(ValueError, match=rf"betas must be a pair \(beta1, beta2\) of numbers in \[0, 1\), got {shown}"):
        MAECropMix(**TINY_VIT, betas=betas)


def test_mae_refuses_negative_weight_decay():
    with pytest.raises(ValueError, match=r"weight_decay must be a finite number >= 0, got -0.05"):
        MAECropMix(**TINY_VIT, weight_decay=-0.05)


def test_mae_refuses_mask_ratio_with_no_visible_patch():
    # 32 px / patch 8 = 16 patches: 0.99 keeps int(16 * 0.01) = 0
    with pytest.raises(ValueError, match=r"mask_ratio=0.99 leaves no visible patch of the 16"):
        MAECropMix(**TINY_VIT, mask_ratio=0.99)
    m = MAECropMix(**TINY_VIT, mask_ratio=np.float32(0.9))  # keeps 1
    idx_keep, _ = m.sample_mask(2)
    assert idx_keep.shape == (2, 1 + 1)


def test_mae_img_size_must_match_the_data(tmp_path):
    from PIL import Image

    from ssl_cropmix.data.datamodule import CropMixDataModule
    from ssl_cropmix.data.recipes import MAEViews
    from ssl_cropmix.data.sources import ImageFolderSource

    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 40), (i * 40, 0, 0)).save(tmp_path / "train" / c / f"{i}.png")
    dm = CropMixDataModule(ImageFolderSource(str(tmp_path), val_split=None), MAEViews(), image_size=64, batch_size=4,
                           num_workers=0, persistent_workers=False)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"MAECropMix img_size=32 does not match the data's image_size=64"):
        trainer.fit(MAECropMix(**TINY_VIT), datamodule=dm)


@pytest.mark.parametrize("size", [2, 7])
def test_datamodule_minimum_image_size(size, tmp_path):
    from ssl_cropmix.data.datamodule import CropMixDataModule
    from ssl_cropmix.data.recipes import MAEViews
    from ssl_cropmix.data.sources import ImageFolderSource

    with pytest.raises(ValueError, match=rf"image_size must be an int >= 8, got {size}"):
        CropMixDataModule(ImageFolderSource(str(tmp_path)), image_size=size)
    assert CropMixDataModule(ImageFolderSource(str(tmp_path)), image_size=np.int64(8)).image_size == 8
    with pytest.raises(ValueError, match=r"^max_image_pixels must be an int >= 1 or None, got -1$"):
        ImageFolderSource(str(tmp_path), max_image_pixels=-1)
