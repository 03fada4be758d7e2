"""The DataModule refactor (issue 26: sources + view recipes) changes how the data is
*configured*, not what it serves: the same seeds give the same first training losses as
before it (recorded at main df7aab7 with the flat DataModule arguments: the same YAML with
``dataset: demo``, ``views: mae|supervised``, ``mae_view`` / ``supervised_*`` in place of
``source`` / ``views``), for the smoke MoCo recipe as written and a MAE and a supervised
CropMix recipe on the demo set, and MoCo views built on the device (``augment_on: device``)
(small models, so the runs stay cheap)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytorch_lightning import Callback

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke" / "moco_demo_cpu.yaml"

MAE = """\
seed_everything: 0
trainer: {accelerator: cpu, devices: 1, max_epochs: 2}
model:
  class_path: ssl_cropmix.methods.mae.MAECropMix
  init_args: {model_name: vit_tiny_patch16_224, img_size: 32, patch_size: 8, vit_kwargs: {depth: 1},
              decoder_dim: 32, decoder_depth: 1, decoder_num_heads: 2, base_lr: 0.00015}
data:
  class_path: ssl_cropmix.data.datamodule.CropMixDataModule
  init_args:
    source: {class_path: ssl_cropmix.data.sources.DemoSource}
    views: {class_path: ssl_cropmix.data.recipes.MAEViews, init_args: {kind: cropmix_mixup}}
    image_size: 32
    batch_size: 16
    num_workers: 0
    persistent_workers: false
"""

SUPERVISED = """\
seed_everything: 0
trainer: {accelerator: cpu, devices: 1, max_epochs: 2}
model:
  class_path: ssl_cropmix.methods.classifier.CropMixClassifier
  init_args: {num_classes: 8, backbone: {class_path: cli_fixtures.TinyTrunk}, lr: 0.1}
data:
  class_path: ssl_cropmix.data.datamodule.CropMixDataModule
  init_args:
    source: {class_path: ssl_cropmix.data.sources.DemoSource}
    views: {class_path: ssl_cropmix.data.recipes.SupervisedViews, init_args: {kind: cropmix, crop_scale: [0.25, 1.0], num_crops: 2}}
    image_size: 32
    batch_size: 16
    num_workers: 0
    persistent_workers: false
"""

MOCO_DEVICE = """\
seed_everything: 0
trainer: {accelerator: cpu, devices: 1, max_epochs: 2}
model:
  class_path: ssl_cropmix.methods.moco.MoCoCropMix
  init_args: {backbone: {class_path: cli_fixtures.TinyTrunk}, proj_hidden_dim: 16, out_dim: 8, queue_size: 32}
data:
  class_path: ssl_cropmix.data.datamodule.CropMixDataModule
  init_args:
    source: {class_path: ssl_cropmix.data.sources.DemoSource}
    views: {class_path: ssl_cropmix.data.recipes.MoCoViews, init_args: {query: scalemix, augment_on: device}}
    image_size: 32
    batch_size: 16
    num_workers: 0
    persistent_workers: false
"""

# float32 losses of steps 0-4 with the flat DataModule arguments (exact: compared with ==):
# at main df7aab7; moco_device re-recorded at 19c516d, whose new device colour pass (issue 24)
# reorders float operations, just before the refactor landed; mae re-recorded when CropMix
# began to skip the crops invisible in its uint8 Mixup (``skip_invisible``, issue 24): its
# df7aab7 losses, MAE_EVERY_CROP, are still what the recipe gives when every crop is rendered
MAE_EVERY_CROP = [1.297441005706787, 1.2904390096664429, 1.2929736375808716, 1.2986139059066772, 1.2900294065475464]
EXPECTED = {
    "moco_smoke": [2.5802605152130127, 2.9980735778808594, 3.56949520111084, 3.8505144119262695, 4.229132175445557],
    "mae": [1.297441005706787, 1.2904390096664429, 1.2929747104644775, 1.2986302375793457, 1.2900276184082031],
    "moco_device": [1.2673418521881104, 3.2316842079162598, 2.9617979526519775, 2.8916468620300293, 2.941962957382202],
    "supervised": [2.174433469772339, 2.221261978149414, 2.199615716934204, 2.1049563884735107, 2.0376033782958984],
}


class _Losses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(loss.detach().float().item())


def first_losses(config: Path, tmp_path: Path, steps: int = 5) -> list[float]:
    from ssl_cropmix.cli import cli_main

    cli = cli_main(["--config", str(config), f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0",
                    "--trainer.logger=false",
                    "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"], run=False)
    rec = _Losses()
    cli.trainer.callbacks.append(rec)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return rec.losses


@pytest.mark.parametrize("name", list(EXPECTED))
def test_first_five_losses_are_unchanged(name: str, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if name == "moco_smoke":
        config = SMOKE
    else:
        config = tmp_path / f"{name}.yaml"
        config.write_text({"mae": MAE, "supervised": SUPERVISED, "moco_device": MOCO_DEVICE}[name])
    assert first_losses(config, tmp_path) == EXPECTED[name]


def test_mae_losses_with_every_crop_rendered_are_those_before_skipping(tmp_path, monkeypatch):
    """Skipping the invisible crops is the only change to the MAE recipe's data: with every
    crop rendered (the weights left as they are), the first losses are df7aab7's."""
    from ssl_cropmix.transforms import functional as CF

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(CF, "visible_fold_weights", lambda w, levels=255.0: list(w))
    config = tmp_path / "mae.yaml"
    config.write_text(MAE)
    assert first_losses(config, tmp_path) == MAE_EVERY_CROP
