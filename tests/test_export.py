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
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is fastest


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


@pytest.fixture(scope="module")
def small_stem_moco():
    from ssl_cropmix.methods.moco import MoCoCropMix

    torch.manual_seed(0)
    m = MoCoCropMix(backbone="resnet18", small_image=True, proj_hidden_dim=16, out_dim=8, queue_size=32, lr=0.1)
    with torch.no_grad():  # distinct from a fresh init, BN statistics included
        for t in [*m.backbone.parameters(), *m.backbone.buffers()]:
            if t.is_floating_point():
                t.add_(torch.rand_like(t) * 0.01)
    return m.eval()


def test_moco_export_is_the_resnet_trunk(small_stem_moco, tmp_path):
    from ssl_cropmix.models.backbones import build_backbone

    m = small_stem_moco
    path = export_backbone(m, tmp_path / "r.safetensors")
    trunk, _ = build_backbone("resnet18", small_image=True)
    trunk.load_state_dict(load_file(str(path)))  # strict: exactly the trunk, no momentum copy
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(trunk.eval()(x), m.backbone(x))
    meta = safe_open(str(path), "pt").metadata()
    assert meta["kind"] == "resnet_trunk" and meta["loader"] == "ssl_cropmix.load_exported(PATH)"
    assert json.loads(meta["model_args"]) == {"backbone": "resnet18", "small_image": True}


def test_export_errors(tmp_path):
    with pytest.raises(TypeError, match="module_or_ckpt_path"):
        export_backbone(123, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="no 'backbone.vit"):
        export_backbone(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")


# ---------------------------------------------------------------------------- load_exported
def _x(size: int = 32) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_load_exported_rebuilds_the_vit_exactly(trained_mae, tmp_path):
    """ViT-Tiny / patch 4 / 32 px: one call gives the in-memory backbone's features bit for bit."""
    import ssl_cropmix

    path = export_backbone(trained_mae, tmp_path / "vit.safetensors")
    vit = ssl_cropmix.load_exported(path)
    assert not vit.training
    assert tuple(vit.patch_embed.img_size) == (32, 32) and tuple(vit.patch_embed.patch_size) == (4, 4)
    x = _x()
    with torch.no_grad():
        assert torch.equal(vit(x), trained_mae.backbone(x))  # class-token features (B, D)
        assert torch.equal(vit.forward_features(x), trained_mae.backbone.vit.forward_features(x))
    # expectations that agree are accepted (sizes as int or pair)
    ssl_cropmix.load_exported(path, model_name="vit_tiny_patch16_224", img_size=(32, 32), patch_size=4, depth=2)
    # a head for fine-tuning: the backbone weights, a new head
    clf = ssl_cropmix.load_exported(path, num_classes=10)
    with torch.no_grad():
        assert clf(x).shape == (2, 10)
        assert torch.equal(clf.forward_features(x), vit.forward_features(x))


@pytest.mark.parametrize("key,value", [("img_size", 224), ("patch_size", 16), ("model_name", "vit_base_patch16_224"),
                                       ("depth", 12)])
def test_load_exported_refuses_a_mismatching_architecture(trained_mae, tmp_path, key, value):
    """What a user believes the model is and the file disagree: an error naming the key, not a
    silently resampled 224-px model."""
    from ssl_cropmix.export import load_exported

    path = export_backbone(trained_mae, tmp_path / "vit.safetensors")
    with pytest.raises(ValueError, match=rf"{key}={value!r} disagrees with the exported model's {key}="):
        load_exported(path, **{key: value})
    with pytest.raises(ValueError, match="small_image=True is not recorded"):
        load_exported(path, small_image=True)


def test_name_only_timm_call_is_a_different_model(trained_mae, tmp_path):
    """Why the loader exists (docs/mae.md): timm's overlay with the name alone resamples the
    32-px / patch-4 weights into a 224-px / patch-16 model without a word."""
    path = export_backbone(trained_mae, tmp_path / "vit.safetensors")
    wrong = timm.create_model("vit_tiny_patch16_224", pretrained=True, depth=2,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=0))
    assert tuple(wrong.patch_embed.img_size) == (224, 224)


def test_timm_defaults_are_recorded(tmp_path):
    """img_size / patch_size left to timm's defaults are still written out (224, 16)."""
    from ssl_cropmix.export import load_exported, read_export_metadata

    m = MAECropMix("vit_tiny_patch16_224", vit_kwargs={"depth": 1}, decoder_dim=32, decoder_depth=1,
                   decoder_num_heads=2)
    path = export_backbone(m, tmp_path / "v.safetensors")
    assert read_export_metadata(path) == (
        "timm_vit", {"model_name": "vit_tiny_patch16_224", "img_size": 224, "patch_size": 16, "depth": 1})
    with pytest.raises(ValueError, match="img_size=32 disagrees"):
        load_exported(path, img_size=32)


def test_load_exported_rebuilds_the_small_stem_resnet(small_stem_moco, tmp_path):
    from ssl_cropmix.export import load_exported

    path = export_backbone(small_stem_moco, tmp_path / "r.safetensors")
    trunk = load_exported(path, backbone="resnet18", small_image=True)
    assert not trunk.training and trunk.conv1.kernel_size == (3, 3)
    x = _x()
    with torch.no_grad():
        assert torch.equal(trunk(x), small_stem_moco.backbone(x))
    for key, value in (("small_image", False), ("backbone", "resnet50")):
        with pytest.raises(ValueError, match=rf"{key}={value!r} disagrees"):
            load_exported(path, **{key: value})
    with pytest.raises(ValueError, match="num_classes=10 applies to timm_vit exports only"):
        load_exported(path, num_classes=10)


def test_custom_module_backbone_exports_weights_only(tmp_path):
    from cli_fixtures import TinyTrunk

    from ssl_cropmix.export import load_exported
    from ssl_cropmix.methods.moco import MoCoCropMix

    m = MoCoCropMix(backbone=TinyTrunk(), proj_hidden_dim=16, out_dim=8, queue_size=32, lr=0.1)
    path = export_backbone(m, tmp_path / "t.safetensors")
    assert safe_open(str(path), "pt").metadata()["kind"] == "module_state_dict"
    TinyTrunk().load_state_dict(load_file(str(path)))
    with pytest.raises(ValueError, match="custom nn.Module"):
        load_exported(path)


def test_export_refuses_weights_its_hparams_do_not_rebuild(trained_mae, tmp_path):
    """A checkpoint whose hyperparameters do not describe its weights is not exported."""
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": trained_mae.state_dict(), "hyper_parameters": {**trained_mae.hparams, "img_size": 64}},
               ckpt)
    with pytest.raises(ValueError, match="does not load into the model its hyperparameters describe"):
        export_backbone(ckpt, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_load_exported_errors(tmp_path):
    from safetensors.torch import save_file

    from ssl_cropmix.export import load_exported

    with pytest.raises(FileNotFoundError, match="path does not exist"):
        load_exported(tmp_path / "missing.safetensors")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="no 'kind' / 'model_args' metadata"):
        load_exported(tmp_path / "plain.safetensors")


# ---------------------------------------------------------------------------- the docs' snippets, executed
def _export_snippet(doc: str) -> str:
    """The first ``python`` block of the export section of ``docs/<doc>`` (read, not copied)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / doc).read_text()
    section = re.split(r"^## Export\b", text, flags=re.M)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


@pytest.mark.parametrize("doc", ["mae.md", "moco.md"])
def test_docs_export_snippet_gives_the_trained_features(doc, trained_mae, small_stem_moco, tmp_path, monkeypatch):
    """The snippet runs as written (its checkpoint path created in a scratch folder) and its
    ``features`` are the in-memory backbone's, bit for bit."""
    import re

    module = trained_mae if doc == "mae.md" else small_stem_moco
    code = _export_snippet(doc)
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / re.search(r'"([^"]+\.ckpt)"', code).group(1)
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    images = _x()
    scope = {"images": images}
    with torch.no_grad():
        exec(compile(code, f"docs/{doc}", "exec"), scope)
        expected = module.backbone(images)
        assert torch.equal(scope["features"], expected)
        if doc == "mae.md":  # the plain-timm route of the same snippet builds the same model
            assert torch.equal(scope["vit_timm"](images), expected)
            assert scope["finetune_model"](images).shape == (2, 10)
