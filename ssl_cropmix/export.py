"""Export a pretrained backbone as a safetensors file that rebuilds exactly the trained model.

The file holds the backbone's state dict and, in its metadata, everything needed to build
the same architecture: ``kind``, ``model_args`` (JSON) and a ``loader`` line. Load it with
one call, which builds the recorded architecture and loads the weights strictly::

    import ssl_cropmix
    backbone = ssl_cropmix.load_exported("mae_vit.safetensors")           # eval mode
    backbone = ssl_cropmix.load_exported(path, img_size=32, patch_size=4)  # checked against the file

Keyword arguments given to :func:`load_exported` are *expectations*: each must equal the
recorded value, otherwise a ``ValueError`` names the key and both values (a 224-px ViT
cannot be built from a 32-px export by mistake).

* ``MAECropMix``: the timm ``VisionTransformer`` inside ``backbone.vit`` (no lightly wrapper,
  no decoder, no head). ``model_args`` is ``{"model_name", "img_size", "patch_size", **vit_kwargs}``,
  resolved from the built model (``img_size`` / ``patch_size`` are recorded even when the
  model used timm's defaults), i.e. exactly the ``timm.create_model`` arguments:
  ``timm.create_model(**model_args, num_classes=0)`` builds the same model, and
  ``load_exported(path, num_classes=N)`` adds a freshly initialised head for fine-tuning.
  timm's own ``pretrained_cfg_overlay=dict(file=...)`` also reads the file, but it resamples
  position and patch embeddings to whatever size it is asked for, so it silently builds a
  different model when one of ``model_args`` is left out; prefer :func:`load_exported`.
* ``MoCoCropMix`` with a named ResNet: the query-encoder trunk ``module.backbone`` (no
  classifier, no momentum copy); ``model_args`` is ``{"backbone", "small_image"}``, rebuilt by
  ``ssl_cropmix.models.backbones.build_backbone``.
* A module whose backbone is a user's ``nn.Module`` (``kind="module_state_dict"``): the
  weights only; build that module yourself and ``load_state_dict`` the file.

Every export is rebuilt from its own metadata and loaded strictly before it is written, so
a file that :func:`load_exported` could not rebuild is never written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ssl_cropmix.checkpoints import (
    _state_dict_of,
    check_checkpoint_weights,
    check_class_path,
    load_checkpoint,
    strip_prefix,
)

#: version of the metadata layout written by :func:`export_backbone`
EXPORT_FORMAT = "2"
KIND_VIT = "timm_vit"
KIND_RESNET = "resnet_trunk"
KIND_MODULE = "module_state_dict"


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


# ---------------------------------------------------------------------------- reading the source
def _read_source(module_or_ckpt_path: nn.Module | str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """``(state_dict, hparams, source name)`` of a module or a Lightning checkpoint."""
    if isinstance(module_or_ckpt_path, nn.Module):
        return module_or_ckpt_path.state_dict(), _hparams_of(module_or_ckpt_path), type(module_or_ckpt_path).__name__
    if isinstance(module_or_ckpt_path, (str, Path)):
        ckpt = load_checkpoint(module_or_ckpt_path)  # weights_only, clear errors
        if not isinstance(ckpt, dict):
            raise ValueError(f"module_or_ckpt_path {str(module_or_ckpt_path)!r} is not a checkpoint dict")
        hparams = _hparams_of(ckpt)
        check_class_path(hparams.get("_class_path"), module_or_ckpt_path)  # same trust rule as loading
        check_checkpoint_weights(ckpt, module_or_ckpt_path)  # finite, and the named class's weights
        # the file name, not the absolute path: metadata travels with the file to other machines
        return _state_dict_of(ckpt), hparams, Path(module_or_ckpt_path).name
    raise TypeError(
        f"module_or_ckpt_path must be an nn.Module or a checkpoint path, got {type(module_or_ckpt_path).__name__}"
    )


def _backbone_of(
    state: dict[str, torch.Tensor], hparams: dict[str, Any], source: str
) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
    """``(kind, weights, model_args)``: the backbone weights and the arguments that built them."""
    weights = _sub_state_dict(state, "backbone.vit.")
    if weights:
        args: dict[str, Any] = {"model_name": hparams.get("model_name", "vit_base_patch16_224")}
        for k in ("img_size", "patch_size"):
            if hparams.get(k) is not None:
                args[k] = hparams[k]
        args.update(hparams.get("vit_kwargs") or {})
        args.pop("num_classes", None)  # the export has no head
        return KIND_VIT, weights, args
    weights = _sub_state_dict(state, "backbone.")
    if not weights:
        raise ValueError(f"no 'backbone.vit.*' or 'backbone.*' weights found in {source}")
    name = hparams.get("backbone")  # absent when it was an nn.Module (not saved as a hyperparameter)
    if isinstance(name, str):
        return KIND_RESNET, weights, {"backbone": name, "small_image": bool(hparams.get("small_image", False))}
    if "small_image" in hparams and all(k.startswith("trunk.") for k in weights):
        # MoCoCropMix wraps a user's module in build_backbone's flattening ``_Flatten(trunk)``:
        # export the user's module itself, so ``YourModule().load_state_dict`` takes the file
        weights = strip_prefix(weights, "trunk.")
    return KIND_MODULE, weights, {}


# ---------------------------------------------------------------------------- building from metadata
def build_exported_model(kind: str, model_args: dict[str, Any], num_classes: int = 0) -> nn.Module:
    """The untrained model that ``model_args`` of an export of ``kind`` describe.

    Args:
        kind: ``"timm_vit"`` or ``"resnet_trunk"`` (the file's ``kind`` metadata).
        model_args: the file's ``model_args`` (decoded JSON).
        num_classes: ``timm_vit`` only: size of a new classification head (0: none).

    Returns:
        A timm ``VisionTransformer`` (``(B,3,H,W) -> (B, D)``, or ``(B, num_classes)``) or a
        ResNet trunk (``(B,3,H,W) -> (B, D)``).

    Raises:
        ValueError: ``kind`` cannot be rebuilt (a custom module), or ``num_classes`` on a
            ResNet trunk.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
    if kind == KIND_VIT:
        from ssl_cropmix.models.vit import build_vit

        args = dict(model_args)
        name = args.pop("model_name")
        img_size, patch_size = args.pop("img_size", None), args.pop("patch_size", None)
        return build_vit(name, img_size=img_size, patch_size=patch_size, vit_kwargs={**args, "num_classes": num_classes})
    if kind == KIND_RESNET:
        if num_classes:
            raise ValueError(f"num_classes={num_classes} applies to timm_vit exports only, got kind={kind!r}")
        from ssl_cropmix.models.backbones import build_backbone

        return build_backbone(model_args["backbone"], small_image=bool(model_args.get("small_image", False)))[0]
    raise ValueError(
        f"an export of kind={kind!r} cannot be rebuilt from its metadata (the backbone was a custom nn.Module): "
        "build that module and call .load_state_dict(safetensors.torch.load_file(path))"
    )


def _resolved_args(kind: str, model: nn.Module, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` with the ViT's effective ``img_size`` / ``patch_size`` (timm's defaults included)."""
    if kind != KIND_VIT:
        return dict(args)
    out = dict(args)
    for key in ("img_size", "patch_size"):
        value = tuple(int(v) for v in getattr(model.patch_embed, key))
        out[key] = value[0] if value[0] == value[1] else list(value)
    return out


def _rebuilds_exactly(kind: str, args: dict[str, Any], weights: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Rebuild the model from ``args`` and load ``weights`` strictly; returns the resolved args.

    Raises:
        ValueError: the rebuilt model does not take exactly these weights (the recorded
            arguments do not describe the trained model).
    """
    if kind == KIND_MODULE:
        return dict(args)
    model = build_exported_model(kind, args)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"the backbone of {source} does not load into the model its hyperparameters describe "
            f"({kind}, {args}): {str(e).splitlines()[0]}"
        ) from e
    return _resolved_args(kind, model, args)


# ---------------------------------------------------------------------------- metadata
def _loader_line(kind: str) -> str:
    if kind == KIND_MODULE:
        return "YourModule(...).load_state_dict(safetensors.torch.load_file(PATH))"
    return "ssl_cropmix.load_exported(PATH)"


def _metadata(kind: str, args: dict[str, Any], source: str) -> dict[str, str]:
    return {
        "format": EXPORT_FORMAT,
        "source": source,
        "kind": kind,
        "model_args": json.dumps(args, sort_keys=True),
        "loader": _loader_line(kind),
    }


def read_export_metadata(path: str | Path) -> tuple[str, dict[str, Any]]:
    """``(kind, model_args)`` recorded in an exported file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a safetensors file without this package's export metadata.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path does not exist: {str(p)!r}")
    with safe_open(str(p), "pt") as f:
        meta = f.metadata() or {}
    if "kind" not in meta or "model_args" not in meta:
        raise ValueError(
            f"{str(p)!r} has no 'kind' / 'model_args' metadata: not written by ssl_cropmix.export_backbone "
            f"(metadata keys: {sorted(meta)})"
        )
    return meta["kind"], json.loads(meta["model_args"])


def _normalised(value: Any) -> Any:
    """``(32, 32)`` / ``[32, 32]`` -> ``32`` (square sizes are recorded as one int); tuples -> lists."""
    if isinstance(value, (list, tuple)):
        value = list(value)
        return value[0] if len(value) == 2 and value[0] == value[1] else value
    return value


def _check_expected(expected: dict[str, Any], kind: str, args: dict[str, Any], path: str | Path) -> None:
    """Each ``expected`` key must be recorded in ``args`` with the same value."""
    for key, value in expected.items():
        if key not in args:
            raise ValueError(
                f"{key}={value!r} is not recorded in {str(path)!r} ({kind}; recorded model_args: {sorted(args)})"
            )
        if _normalised(value) != _normalised(args[key]):
            raise ValueError(
                f"{key}={value!r} disagrees with the exported model's {key}={args[key]!r} (metadata of "
                f"{str(path)!r}); leave {key} out to build exactly the exported model"
            )


# ---------------------------------------------------------------------------- public API
def export_backbone(module_or_ckpt_path: nn.Module | str | Path, out_path: str | Path) -> Path:
    """Write the backbone weights of an MAE or MoCo module (or Lightning checkpoint).

    Args:
        module_or_ckpt_path: a ``MAECropMix`` / ``MoCoCropMix`` instance (any module with a
            ``backbone``), or the path of a Lightning checkpoint of one (read with
            ``torch.load(weights_only=True)``: no code is executed).
        out_path: the ``.safetensors`` file to write (parent folders are created).

    Returns:
        ``out_path`` as a ``Path``. The file's metadata holds ``format``, ``source``,
        ``kind`` (``"timm_vit"``, ``"resnet_trunk"`` or ``"module_state_dict"``),
        ``model_args`` (JSON) and ``loader`` (how to load it: :func:`load_exported`).

    Raises:
        ValueError: no backbone weights found (neither ``backbone.vit.*`` nor ``backbone.*``),
            or weights that the recorded arguments do not rebuild.
        TypeError: an input that is neither a module nor a path.
    """
    state, hparams, source = _read_source(module_or_ckpt_path)
    kind, weights, args = _backbone_of(state, hparams, source)
    # safetensors needs contiguous, non-shared tensors
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}
    args = _rebuilds_exactly(kind, args, weights, source)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out), metadata=_metadata(kind, args, source))
    _set_default_mode(out)
    return out


def load_exported(path: str | Path, num_classes: int = 0, **expected: Any) -> nn.Module:
    """Build exactly the model recorded in an exported file and load its weights (strict).

    Args:
        path: a ``.safetensors`` file written by :func:`export_backbone` / ``ssl-cropmix export``.
        num_classes: ``timm_vit`` only: add a new, randomly initialised classification head
            of this size (for fine-tuning); 0 (default): the backbone alone.
        **expected: model arguments the caller relies on (``model_name="vit_tiny_patch16_224"``,
            ``img_size=32``, ``patch_size=4``, ``backbone="resnet18"``, ``small_image=True``);
            each must equal the recorded value. They never change the model that is built.

    Returns:
        The model in eval mode. ViT: ``(B,3,H,W) -> (B, D)`` class-token features (the
        ``MAECropMix.backbone`` output), ``forward_features`` ``(B, L, D)``; ResNet trunk:
        ``(B,3,H,W) -> (B, D)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file without export metadata, a custom-module export, or an
            ``expected`` key that is not recorded or disagrees with the recorded value
            (the message names the key and both values).
    """
    kind, args = read_export_metadata(path)
    _check_expected(expected, kind, args, path)
    model = build_exported_model(kind, args, num_classes=num_classes)
    weights = load_file(str(path))
    if num_classes:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        head = {k for k in model.state_dict() if k.startswith("head.")}
        if unexpected or set(missing) != head:
            raise ValueError(f"{str(path)!r} does not load into {kind} {args}: missing {missing}, unexpected {unexpected}")
    else:
        model.load_state_dict(weights, strict=True)
    return model.eval()


def _set_default_mode(path: Path) -> None:
    """Give ``path`` the mode a plain ``open(path, "w")`` would (0666 minus the umask, e.g.
    0644): safetensors writes through a private temporary file (0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
