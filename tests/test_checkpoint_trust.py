"""No code from checkpoints, and wrong / foreign checkpoints refused with clear errors
(issue 14, items 1 and 4).

The gadget is a checkpoint of plain types only (``torch.load(weights_only=True)`` accepts
it) whose ``_class_path`` names ``subprocess.Popen`` with a ``touch FILE`` command: if any
loading path imported and called the class, FILE would exist.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ssl_cropmix.checkpoints import (
    CheckpointMismatchError,
    DroppedKeysWarning,
    UntrustedCheckpointError,
    load_backbone,
    load_checkpoint,
    load_module,
)

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke" / "moco_demo_cpu.yaml"
DATA = ["--dataset", "demo", "--image-size", "32", "--batch-size", "16", "--num-workers", "0"]


def _gadget(tmp_path: Path, instantiator: bool = False, lightning: bool = False) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    hp = {"_class_path": "subprocess.Popen", "args": ["touch", str(marker)]}
    if instantiator:  # Lightning's own load_from_checkpoint honours this key
        hp["_instantiator"] = "pytorch_lightning.cli.instantiate_module"
    ckpt = {"state_dict": {"backbone.w": torch.zeros(1)}, "hyper_parameters": hp}
    if lightning:
        ckpt["pytorch-lightning_version"] = "2.6.0"
    path = tmp_path / "gadget.ckpt"
    torch.save(ckpt, path)
    return path, marker


def _main(args: list[str]):
    from ssl_cropmix.cli import main

    return main(args)


def test_gadget_is_accepted_by_the_safe_unpickler(tmp_path):
    """The premise: weights_only=True alone does not stop it (only plain types inside)."""
    path, _ = _gadget(tmp_path)
    assert load_checkpoint(path)["hyper_parameters"]["_class_path"] == "subprocess.Popen"


@pytest.mark.parametrize("lightning", [False, True])
@pytest.mark.parametrize(
    "entry",
    ["load_module", "load_backbone", "probe", "finetune", "export"],
)
def test_gadget_runs_nothing_through_library_and_task_commands(entry, lightning, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, marker = _gadget(tmp_path, lightning=lightning)
    calls = {
        "load_module": lambda: load_module(path),
        "load_backbone": lambda: load_backbone(path, "resnet18"),
        "probe": lambda: _main(["probe", "--ckpt", str(path), "--epochs", "1", "--cached-features",
                                "--device", "cpu", *DATA]),
        "finetune": lambda: _main(["finetune", "--ckpt", str(path), "--epochs", "1", "--device", "cpu", *DATA]),
        "export": lambda: _main(["export", "--ckpt", str(path), "--out", str(tmp_path / "o.safetensors")]),
    }
    with pytest.raises(UntrustedCheckpointError, match=r"refusing to build class 'subprocess.Popen'.*gadget.ckpt"):
        calls[entry]()
    assert not marker.exists()
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("sub", ["fit", "validate"])
def test_gadget_runs_nothing_through_lightning_cli_ckpt_path(sub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    path, marker = _gadget(tmp_path, instantiator=True, lightning=True)
    with pytest.raises(CheckpointMismatchError, match=r"written by 'subprocess.Popen' but the configured model is "
                       r"'ssl_cropmix.methods.moco.MoCoCropMix'"):
        _main([sub, "--config", str(SMOKE), "--ckpt_path", str(path), "--trainer.logger=false"])
    assert not marker.exists()


def test_cli_without_a_configured_model_refuses_untrusted_class(tmp_path):
    from ssl_cropmix.checkpoints import check_cli_checkpoint

    path, marker = _gadget(tmp_path, lightning=True)
    with pytest.raises(UntrustedCheckpointError, match="'subprocess.Popen'.*gadget.ckpt.*not imported"):
        check_cli_checkpoint(path, None)
    assert not marker.exists()


@pytest.mark.parametrize("instantiator", [False, True])
def test_gadget_through_load_from_checkpoint(instantiator, tmp_path):
    """The methods' ``load_from_checkpoint`` (Lightning's) never builds the named class."""
    from ssl_cropmix.methods.moco import MoCoCropMix

    path, marker = _gadget(tmp_path, instantiator=instantiator, lightning=True)
    with pytest.raises((ValueError, RuntimeError)) as e:
        MoCoCropMix.load_from_checkpoint(path, backbone="resnet18", small_image=True, queue_size=8)
    if instantiator:
        assert "subprocess.Popen" in str(e.value)
    assert not marker.exists()


def test_untrusted_module_is_not_even_imported(tmp_path):
    """Refused *before* importing: a module that does not exist gives our error, not ImportError."""
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "evil_pkg_xyz.Boom"}}, tmp_path / "c.ckpt")
    with pytest.raises(UntrustedCheckpointError, match="evil_pkg_xyz.Boom"):
        load_module(tmp_path / "c.ckpt")
    assert "evil_pkg_xyz" not in sys.modules


def test_user_named_class_is_built(tmp_path):
    """A class the caller names (model_class= / allowed_classes=) is trusted."""
    import pytorch_lightning as pl
    from torch import nn

    global _UserModule

    class _UserModule(pl.LightningModule):
        def __init__(self, width: int = 3) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.backbone = nn.Linear(2, width)

    _UserModule.__qualname__ = "_UserModule"
    m = _UserModule(width=5)
    hp = {"_class_path": f"{__name__}._UserModule", "width": 5}
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": hp}, tmp_path / "u.ckpt")
    with pytest.raises(UntrustedCheckpointError, match=f"{__name__}._UserModule"):
        load_module(tmp_path / "u.ckpt")
    for kw in ({"model_class": _UserModule}, {"allowed_classes": [_UserModule]},
               {"allowed_classes": [f"{__name__}._UserModule"]}):
        got = load_module(tmp_path / "u.ckpt", **kw)
        assert isinstance(got, _UserModule) and torch.equal(got.backbone.weight, m.backbone.weight)


# ------------------------------------------------------------------ item 4: wrong / foreign files
def test_empty_checkpoint_names_the_file(tmp_path):
    (tmp_path / "empty.ckpt").write_bytes(b"")
    for call in (lambda: load_checkpoint(tmp_path / "empty.ckpt"),
                 lambda: load_backbone(tmp_path / "empty.ckpt", "resnet18"),
                 lambda: load_module(tmp_path / "empty.ckpt")):
        with pytest.raises(ValueError, match=r"checkpoint '.*empty.ckpt' is empty \(0 bytes\)"):
            call()
    (tmp_path / "trunc.ckpt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match="trunc.ckpt' is truncated or not a torch checkpoint"):
        load_checkpoint(tmp_path / "trunc.ckpt")


def test_empty_checkpoint_through_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.ckpt' is empty"):
        _main(["validate", "--config", str(SMOKE), "--ckpt_path", str(tmp_path / "empty.ckpt"),
               "--trainer.logger=false"])


def test_torchvision_state_dict_refused_by_fit_and_loaded_by_load_backbone(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.chdir(tmp_path)
    tv = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    with pytest.raises(ValueError, match=r"is not a Lightning checkpoint .*load_backbone.*probe --ckpt PATH --backbone"):
        _main(["fit", "--config", str(SMOKE), "--ckpt_path", str(path), "--trainer.logger=false"])
    with pytest.warns(DroppedKeysWarning, match="fc.bias, fc.weight"):
        trunk = load_backbone(path, "resnet18")
    for k, v in trunk.state_dict().items():  # every trunk weight is torchvision's
        assert torch.equal(v, tv.state_dict()[k]), k
    x = torch.randn(2, 3, 64, 64)
    tv.fc = torch.nn.Identity()
    assert torch.allclose(trunk(x), tv.eval()(x), atol=1e-5)
    # ... and through the probe command's loader (--backbone resnet18)
    with pytest.warns(DroppedKeysWarning):
        held = load_module(path, "resnet18")
    assert torch.allclose(held.backbone(x), trunk(x))


def test_state_dict_with_unknown_extra_keys_still_strict(tmp_path):
    """Only classifier keys are dropped; anything else still fails the strict load."""
    import torchvision

    state = torchvision.models.resnet18().state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "x.pth")
    with pytest.raises(RuntimeError, match="extra.weight"):
        load_backbone(tmp_path / "x.pth", "resnet18")


def _mae_lightning_checkpoint(path: Path) -> None:
    from ssl_cropmix.methods.mae import MAECropMix

    hp = dict(model_name="vit_tiny_patch16_224", img_size=32, patch_size=4, vit_kwargs={"depth": 1},
              decoder_dim=32, decoder_depth=1, decoder_num_heads=2)
    m = MAECropMix(**hp)
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": m.state_dict(), "epoch": 0, "global_step": 0,
                "hyper_parameters": {"_class_path": "ssl_cropmix.methods.mae.MAECropMix", **hp}}, path)


@pytest.mark.parametrize("sub", ["fit", "validate"])
def test_moco_config_with_mae_checkpoint_is_refused_naming_both(sub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _mae_lightning_checkpoint(tmp_path / "mae.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"written by 'ssl_cropmix.methods.mae.MAECropMix' but the "
                       r"configured model is 'ssl_cropmix.methods.moco.MoCoCropMix'"):
        _main([sub, "--config", str(SMOKE), "--ckpt_path", str(tmp_path / "mae.ckpt"), "--trainer.logger=false"])


@pytest.mark.slow
def test_real_cli_checkpoint_still_validates_and_loads(tmp_path, monkeypatch):
    """The trusted path keeps working: a checkpoint written by `fit` validates with the same
    config and rebuilds through load_module (its recorded class is this package's)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    common = ["--config", str(SMOKE), "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]"]
    assert _main(["fit", *common, "--experiment", "t", "--trainer.max_epochs=1",
                  "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=0"]) == 0
    ckpt = next((tmp_path / "runs" / "t").rglob("*.ckpt"))
    assert load_checkpoint(ckpt)["hyper_parameters"]["_class_path"] == "ssl_cropmix.methods.moco.MoCoCropMix"
    assert _main(["validate", *common, "--ckpt_path", str(ckpt), "--trainer.limit_val_batches=1",
                  "--trainer.logger=false"]) == 0
    from ssl_cropmix.methods.moco import MoCoCropMix

    assert isinstance(load_module(ckpt), MoCoCropMix)


def test_checkpoint_from_python_of_another_model_is_refused(tmp_path, monkeypatch):
    """No ``_class_path`` (saved with ``trainer.save_checkpoint`` outside the CLI): the MAE
    hyper-parameters are not MoCo arguments, so the MoCo config refuses it."""
    from ssl_cropmix.checkpoints import check_cli_checkpoint

    monkeypatch.chdir(tmp_path)
    _mae_lightning_checkpoint(tmp_path / "mae.ckpt")
    ckpt = torch.load(tmp_path / "mae.ckpt", weights_only=True)
    del ckpt["hyper_parameters"]["_class_path"]
    torch.save(ckpt, tmp_path / "mae_py.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"hyper-parameters \['decoder_depth', .*\] that the configured "
                       r"model 'ssl_cropmix.methods.moco.MoCoCropMix' does not take"):
        _main(["fit", "--config", str(SMOKE), "--ckpt_path", str(tmp_path / "mae_py.ckpt"), "--trainer.logger=false"])
    # the MAE class itself accepts them, and a re-exported name of the same class matches
    assert check_cli_checkpoint(tmp_path / "mae_py.ckpt", "ssl_cropmix.methods.mae.MAECropMix")
    assert check_cli_checkpoint(tmp_path / "mae.ckpt", "ssl_cropmix.MAECropMix")


def test_reexported_package_names_are_trusted(tmp_path):
    from ssl_cropmix.checkpoints import check_class_path

    assert check_class_path("ssl_cropmix.MAECropMix", "f.ckpt") == "ssl_cropmix.MAECropMix"
    for bad in ("ssl_cropmix.checkpoints.Path", "ssl_cropmix.methods.moco.copy", "ssl_cropmix.nope.X"):
        with pytest.raises(UntrustedCheckpointError, match=bad):
            check_class_path(bad, "f.ckpt")


@pytest.mark.slow
def test_probe_command_takes_a_torchvision_state_dict(tmp_path, monkeypatch):
    import json

    import torchvision

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.warns(DroppedKeysWarning, match="fc.bias, fc.weight"):
        assert _main(["probe", "--ckpt", str(tmp_path / "r18.pth"), "--backbone", "resnet18", "--epochs", "1",
                      "--cached-features", "--device", "cpu", "--out", str(tmp_path / "p.json"), *DATA]) == 0
    res = json.loads((tmp_path / "p.json").read_text())
    res = res[-1] if isinstance(res, list) else res
    assert res["details"]["feature_dim"] == 512 and 0 <= res["top1"] <= 100


@pytest.mark.slow
def test_special_ckpt_path_values_pass_through(tmp_path, monkeypatch):
    """Lightning's "last" / "best" are not files: left to Lightning, as before."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    assert _main(["validate", "--config", str(SMOKE), "--ckpt_path", "last", "--trainer.logger=false",
                  "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]"]) == 0
