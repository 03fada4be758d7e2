"""export_backbone: MAE encoder -> timm-loadable safetensors; MoCo trunk -> ResNet state dict."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ssl_cropmix.export import export_backbone
from ssl_cropmix.methods.mae import MAECropMix

TIMM_ARGS = dict(img_size=32, patch_size=4, depth=2)


@pytest.fixture(scope="module")
def trained_mae():
    torch.manual_seed(0)
    m = MAECropMix("vit_tiny_patch16_224", img_size=32, patch_size=4, vit_kwargs={"depth": 2},
                   decoder_dim=32, decoder_depth=1, decoder_num_heads=2)
    with torch.no_grad():  # make every weight distinct from a fresh init
        for p in m.backbone.vit.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return m.eval()


def _features(vit, x):
    with torch.no_grad():
        return vit.eval().forward_features(x)


def test_mae_export_loads_into_fresh_timm_model_both_ways(trained_mae, tmp_path):
    path = export_backbone(trained_mae, tmp_path / "out" / "vit.safetensors")
    x = torch.rand(2, 3, 32, 32)
    ref = _features(trained_mae.backbone.vit, x)
    # 1) load_state_dict (strict) into a fresh model
    fresh = timm.create_model("vit_tiny_patch16_224", num_classes=0, **TIMM_ARGS)
    assert not torch.equal(_features(fresh, x), ref)
    fresh.load_state_dict(load_file(str(path)))
    assert torch.equal(_features(fresh, x), ref)
    # 2) timm's pretrained loader, offline, from the file
    for overlay, kw in ((dict(file=str(path), num_classes=0), {}), (dict(file=str(path)), dict(num_classes=0)),
                        (dict(file=str(path), num_classes=0), dict(num_classes=10))):
        vit = timm.create_model("vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay, **kw, **TIMM_ARGS)
        assert torch.equal(_features(vit, x), ref)
    # no lightly wrapper / decoder keys, metadata tells how to load it
    keys = set(load_file(str(path)))
    assert keys == set(fresh.state_dict())
    meta = safe_open(str(path), "pt").metadata()
    assert meta["kind"] == "timm_vit"
    assert json.loads(meta["model_args"]) == {"model_name": "vit_tiny_patch16_224", **TIMM_ARGS}


def test_export_from_lightning_checkpoint(trained_mae, tmp_path):
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": trained_mae.state_dict(), "hyper_parameters": dict(trained_mae.hparams)}, ckpt)
    a = load_file(str(export_backbone(ckpt, tmp_path / "a.safetensors")))
    b = load_file(str(export_backbone(trained_mae, tmp_path / "b.safetensors")))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the metadata names the checkpoint by its file name, not this machine's absolute path
    assert safe_open(str(tmp_path / "a.safetensors"), "pt").metadata()["source"] == "m.ckpt"


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_file_mode_follows_the_umask(trained_mae, tmp_path, umask):
    """Like any file a user writes: 0666 minus the umask (0644, 0640), not 0600."""
    import os
    import stat

    old = os.umask(umask)
    try:
        path = export_backbone(trained_mae, tmp_path / f"m{umask:o}.safetensors")
        reference = tmp_path / f"ref{umask:o}"
        reference.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)


def test_moco_export_is_the_resnet_trunk(tmp_path):
    from ssl_cropmix.methods.moco import MoCoCropMix
    from ssl_cropmix.models.backbones import build_backbone

    m = MoCoCropMix(backbone="resnet18", small_image=True, proj_hidden_dim=16, out_dim=8, queue_size=32, lr=0.1).eval()
    path = export_backbone(m, tmp_path / "r.safetensors")
    trunk, _ = build_backbone("resnet18", small_image=True)
    trunk.load_state_dict(load_file(str(path)))  # strict: exactly the trunk, no momentum copy
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(trunk.eval()(x), m.backbone(x))
    meta = safe_open(str(path), "pt").metadata()
    assert meta["kind"] == "resnet_trunk" and "build_backbone" in meta["loader"]


def test_export_errors(tmp_path):
    with pytest.raises(TypeError, match="module_or_ckpt_path"):
        export_backbone(123, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="no 'backbone.vit"):
        export_backbone(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")
