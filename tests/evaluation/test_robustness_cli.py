"""End to end: a tiny CropMixClassifier trained through ``ssl-cropmix fit`` with the
RobustnessCallback, then ``ssl-cropmix robustness`` on its checkpoint; both write the table."""

from __future__ import annotations

import json

import pytest

from ssl_cropmix.evaluation.robustness import NOT_GIVEN


def test_robustness_help_answers(capsys):
    from ssl_cropmix.cli import main

    with pytest.raises(SystemExit) as e:
        main(["robustness", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--ckpt", "--imagenet-a", "--imagenet-r", "--imagenet-sketch", "--replace", "--noise", "--val",
                "--precision", "--devices"):
        assert opt in out


def test_robustness_cli_rejects_a_module_without_logits(tmp_path):
    import torch

    from ssl_cropmix.cli import main
    from ssl_cropmix.data.demo import write_demo_folder
    from ssl_cropmix.models.backbones import build_backbone

    backbone, _ = build_backbone("resnet18", small_image=True)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in backbone.state_dict().items()},
                "hyper_parameters": {"backbone": "resnet18", "small_image": True}}, tmp_path / "b.ckpt")
    demo = write_demo_folder(tmp_path / "demo")
    with pytest.raises(SystemExit, match="does not return logits"):
        main(["robustness", "--ckpt", str(tmp_path / "b.ckpt"), "--val", str(demo / "val"), "--image-size", "32",
              "--accelerator", "cpu", "--num-workers", "0"])


def test_robustness_cli_refuses_a_self_supervised_checkpoint(tmp_path, monkeypatch):
    """A MoCo checkpoint's forward gives 512-d features: scoring them as 512 logits wrote
    Clean 0.0 with exit 0 (new-user audit); now a one-line refusal naming the class."""
    import torch

    from ssl_cropmix.cli import main
    from ssl_cropmix.data.demo import write_demo_folder
    from ssl_cropmix.methods.moco import MoCoCropMix

    module = MoCoCropMix(backbone="resnet18", small_image=True, queue_size=64)
    hp = {**dict(module.hparams), "_class_path": "ssl_cropmix.methods.moco.MoCoCropMix"}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hp}, tmp_path / "m.ckpt")
    demo = write_demo_folder(tmp_path / "demo")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="self-supervised MoCoCropMix, whose forward gives features"):
        main(["robustness", "--ckpt", str(tmp_path / "m.ckpt"), "--val", str(demo / "val"), "--image-size", "32",
              "--accelerator", "cpu", "--num-workers", "0"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "m.ckpt"]  # no table, no run written


@pytest.mark.slow
def test_fit_with_callback_then_command_write_the_table(tmp_path, monkeypatch):
    from ssl_cropmix.cli import main
    from ssl_cropmix.data.demo import write_demo_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "classify.yaml"
    config.write_text(
        """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 1
  limit_train_batches: 2
  limit_val_batches: 1
  enable_progress_bar: false
  callbacks:
    - class_path: ssl_cropmix.callbacks.robustness.RobustnessCallback
      init_args:
        batch_size: 16
        calibration_bin_size: 16
model:
  class_path: ssl_cropmix.methods.classifier.CropMixClassifier
  init_args:
    num_classes: 8
    backbone: resnet18
    small_image: true
data:
  class_path: ssl_cropmix.data.datamodule.CropMixDataModule
  init_args:
    source: {class_path: ssl_cropmix.data.sources.DemoSource}
    views: {class_path: ssl_cropmix.data.recipes.SupervisedViews}
    image_size: 32
    batch_size: 16
    num_workers: 0
    persistent_workers: false
"""
    )
    monkeypatch.setattr("sys.argv", ["ssl-cropmix", "fit", "--config", str(config), "--experiment", "rob"])
    assert main() == 0
    (run,) = list((tmp_path / "runs" / "rob").iterdir())
    (cb_json,) = list(run.glob("robustness-epoch*.json"))
    cb = json.loads(cb_json.read_text())
    assert cb["sets"]["clean"]["n"] == 64  # the demo val split
    for col in ("Clean", "RMS", "FGSM"):
        assert isinstance(cb["columns"][col], float) and 0 <= cb["columns"][col] <= 100
    assert all(cb["columns"][c] == NOT_GIVEN for c in ("Replace", "Noise", "IN-A", "IN-R", "IN-S"))
    assert cb["columns"]["FGSM"] <= cb["columns"]["Clean"]
    assert (cb_json.with_suffix(".md")).read_text().count(NOT_GIVEN) >= 5

    # the command on the checkpoint (rebuilt by load_module from its recorded class path)
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    demo = write_demo_folder(tmp_path / "demo")
    assert main(["robustness", "--ckpt", str(ckpt), "--val", str(demo / "val"), "--image-size", "32",
                 "--batch-size", "16", "--num-workers", "0", "--calibration-bin-size", "16",
                 "--accelerator", "cpu", "--fgsm-eps", "8/255"]) == 0
    md, js = run / f"robustness-{ckpt.stem}.md", run / f"robustness-{ckpt.stem}.json"
    data = json.loads(js.read_text())
    assert data["checkpoint"] == str(ckpt)
    assert data["columns"]["IN-A"] == NOT_GIVEN and data["columns"]["Replace"] == NOT_GIVEN
    # same weights, same images, same protocol as the callback -> same numbers
    for col in ("Clean", "RMS", "FGSM"):
        assert data["columns"][col] == pytest.approx(cb["columns"][col], abs=1e-6)
    assert "eps=0.0313725" in data["protocol"]["fgsm"] and "## Protocol" in md.read_text()
