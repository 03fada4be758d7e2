"""Weights are checked before any use (issue 22, cases 3 and 6): non-finite tensors are
refused by every loading path with their names, a checkpoint whose ``_class_path`` does not
match its weights gets ``fit``'s ``CheckpointMismatchError``, and a resume with data of
another class count names the online probe and both counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from ssl_cropmix.checkpoints import (
    CheckpointMismatchError,
    NonFiniteCheckpointError,
    load_backbone,
    load_module,
)

REPO = Path(__file__).resolve().parents[1]
MOCO = "ssl_cropmix.methods.moco.MoCoCropMix"
NAN_MSG = r"non-finite \(NaN/inf\) weights in backbone\.conv1\.weight \(1 tensor\)"


@pytest.fixture(scope="module")
def moco_state():
    """One small MoCo (ResNet-18, CIFAR stem) for the whole file: its state and hyper-parameters."""
    from ssl_cropmix.methods.moco import MoCoCropMix

    m = MoCoCropMix("resnet18", small_image=True, queue_size=8, proj_hidden_dim=16, out_dim=8)
    return m.state_dict(), dict(m.hparams)


def _moco_ckpt(tmp_path: Path, moco_state, nan: bool = False, class_path: str = MOCO, extra_hp=None,
               name="m.ckpt", **extra) -> Path:
    state, hp = moco_state
    state = {k: v.clone() for k, v in state.items()}
    if nan:
        state["backbone.conv1.weight"][0, 0, 0, 0] = float("nan")
    hp = {**hp, "_class_path": class_path, **(extra_hp or {})}
    path = tmp_path / name
    torch.save({"pytorch-lightning_version": "2.6.0", "epoch": 0, "global_step": 4, "state_dict": state,
                "hyper_parameters": hp, **extra}, path)
    return path


def _main(args):
    from ssl_cropmix.cli import main

    return main(args)


def _tiny_val(tmp_path: Path) -> Path:
    for c in ("a", "b"):
        (tmp_path / "val" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8), (40, 90, 200)).save(tmp_path / "val" / c / "x.png")
    return tmp_path / "val"


@pytest.mark.parametrize("entry", ["load_module", "load_backbone", "probe", "robustness", "export", "fit"])
def test_nan_weights_refused_by_every_loading_path(entry, tmp_path, monkeypatch, moco_state):
    """Before: export wrote the NaN weights and robustness printed {"Clean": 50.0, "RMS": null ...}.
    (finetune shares probe's loader, validate / test fit's --ckpt_path check.)"""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    path = _moco_ckpt(tmp_path, moco_state, nan=True)
    out = tmp_path / "o.safetensors"
    data = ["--dataset", "demo", "--image-size", "32", "--num-workers", "0", "--device", "cpu", "--epochs", "1"]
    calls = {
        "load_module": lambda: load_module(path),
        "load_backbone": lambda: load_backbone(path),
        "probe": lambda: _main(["probe", "--ckpt", str(path), "--cached-features", *data]),
        "robustness": lambda: _main(["robustness", "--ckpt", str(path), "--val", str(_tiny_val(tmp_path)),
                                     "--image-size", "32", "--num-workers", "0", "--accelerator", "cpu"]),
        "export": lambda: _main(["export", "--ckpt", str(path), "--out", str(out)]),
        "fit": lambda: _main(["fit", "--config", str(REPO / "configs/smoke/moco_demo_cpu.yaml"),
                              "--ckpt_path", str(path), "--trainer.logger=false"]),
    }
    with pytest.raises(NonFiniteCheckpointError, match=NAN_MSG):
        calls[entry]()
    assert not out.exists()


MAE_HP = {"model_name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4, "vit_kwargs": {"depth": 1},
          "decoder_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2}


@pytest.mark.parametrize("entry", ["load_module", "export"])
def test_class_path_checked_against_weights(entry, tmp_path, moco_state):
    """MoCo weights labelled MAECropMix: before, load_module ended in load_state_dict's
    'Unexpected key(s)' traceback and export wrote a file."""
    from ssl_cropmix.export import export_backbone

    path = _moco_ckpt(tmp_path, moco_state, class_path="ssl_cropmix.methods.mae.MAECropMix", extra_hp=MAE_HP)
    with pytest.raises(CheckpointMismatchError, match=r"m\.ckpt' is read as class 'ssl_cropmix\.methods\.mae\."
                       r"MAECropMix' but its weights are not that class's: \d+ tensor\(s\) the class does not "
                       r"have \(backbone\.bn1\.bias.*missing \(backbone\.mask_token, backbone\.vit\."):
        load_module(path) if entry == "load_module" else export_backbone(path, tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


RESUME_RECIPE = (REPO / "configs/smoke/moco_demo_cpu.yaml")


def test_resume_with_another_class_count_names_the_online_probe(tmp_path, monkeypatch, moco_state):
    """A 3-class folder run resumed with the 8-class demo config: before, Lightning's
    'size mismatch for bias ... torch.Size([3]) ... torch.Size([8])'."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    new = {"source": {"class_path": "ssl_cropmix.data.sources.ImageFolderSource", "init_args": {"root": "/data/three"}}}
    old = {"dataset": "folder", "data_dir": "/data/three"}  # a record of ssl_cropmix < 0.2
    for record, was in ((new, r"ImageFolderSource\(root='/data/three'\)"), (old, r"dataset='folder', data_dir='/data/three'")):
        _moco_ckpt(tmp_path, moco_state, name="three.ckpt", datamodule_hyper_parameters=record,
                   callbacks={"OnlineLinearProbe": {"head": {"weight": torch.zeros(3, 512), "bias": torch.zeros(3)}}})
        with pytest.raises(CheckpointMismatchError, match=rf"three\.ckpt' was trained on 3 classes \({was}\) but the "
                           r"configured data has 8 \(DemoSource\(\)\): the class count changed, so its online probe "
                           r"\(OnlineLinearProbe: a linear head of 3 classes\) cannot be resumed"):
            _main(["fit", "--config", str(RESUME_RECIPE), "--ckpt_path", str(tmp_path / "three.ckpt"),
                   "--trainer.logger=false"])
