"""Export a pretrained backbone as a plain safetensors state dict for downstream users.

* ``MAECropMix``: the timm ``VisionTransformer`` inside ``backbone.vit`` (no lightly
  wrapper, no decoder). Load it with timm::

      vit = timm.create_model("vit_base_patch16_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file="mae_vit.safetensors", num_classes=0))
      # or: timm.create_model(name, num_classes=0).load_state_dict(safetensors.torch.load_file(path))

  (add the ``img_size`` / ``patch_size`` / other overrides the model was trained with; they are
  stored in the file's metadata). ``num_classes=0``: the file has no classifier head; with a
  head (``num_classes=1000``) use ``load_state_dict(..., strict=False)`` or timm's overlay with
  a different ``num_classes``, which drops the head keys.
* ``MoCoCropMix``: the query-encoder trunk ``module.backbone`` (a ResNet without its
  classifier), loadable by ``ssl_cropmix.models.backbones.build_backbone(name,
  small_image=...)[0].load_state_dict(...)``; the metadata names the backbone and stem.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ssl_cropmix.checkpoints import (
    _state_dict_of,
    check_checkpoint_weights,
    check_class_path,
    load_checkpoint,
    strip_prefix,
)


def _hparams_of(obj: Any) -> dict[str, Any]:
    hp = getattr(obj, "hparams", None)
    if hp is None and isinstance(obj, dict):
        hp = obj.get("hyper_parameters")
    return dict(hp or {})


def _sub_state_dict(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    try:
        return strip_prefix(state, prefix)
    except KeyError:
        return {}


def export_backbone(module_or_ckpt_path: nn.Module | str | Path, out_path: str | Path) -> Path:
    """Write the backbone weights of an MAE or MoCo module (or Lightning checkpoint).

    Args:
        module_or_ckpt_path: a ``MAECropMix`` / ``MoCoCropMix`` instance (any module with a
            ``backbone``), or the path of a Lightning checkpoint of one (read with
            ``torch.load(weights_only=True)``: no code is executed).
        out_path: the ``.safetensors`` file to write (parent folders are created).

    Returns:
        ``out_path`` as a ``Path``. The file's metadata holds ``kind`` (``"timm_vit"`` or
        ``"resnet_trunk"``), the model arguments, and ``loader`` (how to load it).

    Raises:
        ValueError: no backbone weights found (neither ``backbone.vit.*`` nor ``backbone.*``).
        TypeError: an input that is neither a module nor a path.
    """
    if isinstance(module_or_ckpt_path, nn.Module):
        state = module_or_ckpt_path.state_dict()
        hparams = _hparams_of(module_or_ckpt_path)
        source = type(module_or_ckpt_path).__name__
    elif isinstance(module_or_ckpt_path, (str, Path)):
        ckpt = load_checkpoint(module_or_ckpt_path)  # weights_only, clear errors
        if not isinstance(ckpt, dict):
            raise ValueError(f"module_or_ckpt_path {str(module_or_ckpt_path)!r} is not a checkpoint dict")
        state = _state_dict_of(ckpt)
        hparams = _hparams_of(ckpt)
        check_class_path(hparams.get("_class_path"), module_or_ckpt_path)  # same trust rule as loading
        check_checkpoint_weights(ckpt, module_or_ckpt_path)  # finite, and the named class's weights
        # the file name, not the absolute path: metadata travels with the file to other machines
        source = Path(module_or_ckpt_path).name
    else:
        raise TypeError(
            f"module_or_ckpt_path must be an nn.Module or a checkpoint path, got {type(module_or_ckpt_path).__name__}"
        )
    weights = _sub_state_dict(state, "backbone.vit.")
    meta: dict[str, str] = {"source": source}
    if weights:
        args = {k: hparams.get(k) for k in ("model_name", "img_size", "patch_size") if hparams.get(k) is not None}
        args.update(hparams.get("vit_kwargs") or {})
        meta["kind"] = "timm_vit"
        meta["loader"] = (
            f"timm.create_model({args.get('model_name', '<model_name>')!r}, pretrained=True, "
            f"pretrained_cfg_overlay=dict(file=PATH, num_classes=0), "
            + ", ".join(f"{k}={v!r}" for k, v in args.items() if k != "model_name")
            + ")"
        )
    else:
        weights = _sub_state_dict(state, "backbone.")
        if not weights:
            raise ValueError(f"no 'backbone.vit.*' or 'backbone.*' weights found in {source}")
        args = {k: hparams.get(k) for k in ("backbone", "small_image") if isinstance(hparams.get(k), (str, bool))}
        meta["kind"] = "resnet_trunk"
        meta["loader"] = (
            "ssl_cropmix.models.backbones.build_backbone("
            + ", ".join(f"{k}={v!r}" for k, v in args.items()).replace("backbone=", "name_or_module=")
            + ")[0].load_state_dict(safetensors.torch.load_file(PATH))"
        )
    meta["model_args"] = json.dumps(args, default=str)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # safetensors needs contiguous, non-shared tensors
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}, str(out), metadata=meta)
    _set_default_mode(out)
    return out


def _set_default_mode(path: Path) -> None:
    """Give ``path`` the mode a plain ``open(path, "w")`` would (0666 minus the umask, e.g.
    0644): safetensors writes through a private temporary file (0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
