"""Loading a backbone from a checkpoint in one call, always with ``weights_only=True``.

Understands Lightning checkpoints of ``MoCoCropMix`` / ``MAECropMix`` / ``CropMixClassifier``
/ any module with a ``backbone`` attribute (``state_dict`` + ``hyper_parameters``), plain
state dicts, and official MoCo (``module.encoder_q.``) / MAE (``model``) files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Key prefixes tried, in order, when the caller gives none.
PREFIXES = ("backbone.", "module.encoder_q.", "encoder_q.", "module.", "")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with a clear error.

    Raises:
        FileNotFoundError: missing file.
        RuntimeError: the file holds objects the safe unpickler refuses.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ckpt_path does not exist: {str(p)!r}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends
        raise RuntimeError(
            f"could not load {str(p)!r} with torch.load(weights_only=True) (arbitrary pickles are "
            f"never executed); save weights with plain types / tensors. Cause: {e}"
        ) from e


def _state_dict_of(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(ckpt.get(key), dict):
            return ckpt[key]
    return ckpt


def strip_prefix(state: dict[str, torch.Tensor], prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Keys under ``prefix`` with the prefix removed; ``None`` tries ``PREFIXES`` in order.

    Raises:
        KeyError: no key starts with ``prefix``.
    """
    for pre in (prefix,) if prefix is not None else PREFIXES:
        out = {k[len(pre) :]: v for k, v in state.items() if k.startswith(pre)}
        if out:
            return out
    raise KeyError(f"no state-dict key starts with prefix={prefix!r}; first keys: {list(state)[:5]}")


def load_backbone(
    ckpt_path: str | Path,
    backbone: nn.Module | str | None = None,
    prefix: str | None = None,
    small_image: bool | None = None,
    strict: bool = True,
) -> nn.Module:
    """The backbone stored in ``ckpt_path``, weights loaded, on CPU, in eval mode.

    Args:
        ckpt_path: checkpoint file.
        backbone: the architecture: a module (filled in place), a ``build_backbone`` name,
            or ``None`` to use the checkpoint's ``hyper_parameters["backbone"]`` name
            (MoCoCropMix / CropMixClassifier checkpoints). MAE checkpoints need the module
            (``MAECropMix(...).backbone``).
        prefix: state-dict prefix of the backbone (default: try ``PREFIXES``).
        small_image: CIFAR stem for named ResNets; ``None`` reads the hyper-parameters.
        strict: as in ``nn.Module.load_state_dict``.

    Raises:
        ValueError: ``backbone`` is ``None`` and the checkpoint does not name one.
    """
    ckpt = load_checkpoint(ckpt_path)
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if backbone is None:
        backbone = hp.get("backbone")
        if not isinstance(backbone, str):
            raise ValueError(
                f"backbone=None but {str(ckpt_path)!r} names no backbone in its hyper_parameters; "
                "pass the architecture (a module or a build_backbone name)"
            )
    if isinstance(backbone, str):
        from ssl_cropmix.models.backbones import build_backbone

        si = bool(hp.get("small_image", False)) if small_image is None else small_image
        backbone, _ = build_backbone(backbone, small_image=si)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be an nn.Module, a name or None, got {type(backbone).__name__}")
    state = _state_dict_of(ckpt)
    own = set(backbone.state_dict())
    if prefix is None:  # the first prefix whose stripped keys match the architecture
        for pre in PREFIXES:
            cand = {k[len(pre) :]: v for k, v in state.items() if k.startswith(pre)}
            if cand and (set(cand) == own or (not strict and set(cand) & own)):
                backbone.load_state_dict(cand, strict=strict)
                return backbone.eval()
    backbone.load_state_dict(strip_prefix(state, prefix), strict=strict)
    return backbone.eval()


def load_module(ckpt_path: str | Path, backbone: str | None = None) -> nn.Module:
    """An ``nn.Module`` with a ``backbone`` attribute holding the checkpoint's weights.

    Lightning checkpoints written through the CLI record the module's class
    (``hyper_parameters["_class_path"]``): the module is rebuilt from its hyper-parameters and
    its whole state dict loaded (works for MoCo, MAE, the classifier and users' modules).
    Otherwise :func:`load_backbone` builds the backbone by name.
    Loading always uses ``torch.load(weights_only=True)``.
    """
    import importlib
    import inspect

    ckpt = load_checkpoint(ckpt_path)
    hp = dict(ckpt.get("hyper_parameters") or {}) if isinstance(ckpt, dict) else {}
    class_path = hp.get("_class_path")
    if backbone is None and class_path is None and "model_name" in hp:
        class_path = "ssl_cropmix.methods.mae.MAECropMix"  # MAE checkpoints made from Python
    if backbone is None and class_path:
        mod, _, name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(mod), name)
        params = inspect.signature(cls.__init__).parameters
        module = cls(**{k: v for k, v in hp.items() if k in params and not k.startswith("_")})
        module.load_state_dict(ckpt["state_dict"])  # strict: a partial load must not pass silently
        if not isinstance(getattr(module, "backbone", None), nn.Module):
            raise TypeError(f"{class_path} has no `backbone` module to evaluate")
        return module.eval()
    holder = nn.Module()
    holder.backbone = load_backbone(ckpt_path, backbone)
    return holder.eval()
