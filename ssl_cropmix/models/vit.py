"""timm Vision Transformers by name, for MAE (He et al., 2022) and CropMix (Han et al., 2022).

``build_vit("vit_base_patch16_224")`` is the paper's ViT-B/16; ``build_vit(
"vit_tiny_patch16_224", img_size=32, patch_size=4)`` a ViT-Tiny sized for 32-px images.
"""

from __future__ import annotations

import difflib
from typing import Any

import timm
from timm.models.vision_transformer import VisionTransformer


def build_vit(
    model_name: str = "vit_base_patch16_224",
    img_size: int | None = None,
    patch_size: int | None = None,
    vit_kwargs: dict[str, Any] | None = None,
) -> VisionTransformer:
    """Create an untrained timm ``VisionTransformer`` (classifier head removed).

    Args:
        model_name: a timm ViT name (``timm.list_models('*vit*')``).
        img_size: input resolution override (default: the model's own).
        patch_size: patch size override (default: the model's own).
        vit_kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``depth=2``).

    Returns:
        The ViT; ``vit.forward_features(x)`` maps ``(B,3,H,W) -> (B, L, D)``.

    Raises:
        ValueError: unknown model name (with close matches), a model that is not a
            ``VisionTransformer``, or ``img_size`` not divisible by ``patch_size``.
    """
    if not isinstance(model_name, str) or not timm.is_model(model_name):
        candidates = timm.list_models("*vit*")
        close = difflib.get_close_matches(str(model_name), candidates, n=5, cutoff=0.5)
        hint = f"; did you mean one of {close}?" if close else "; see timm.list_models('*vit*')"
        raise ValueError(f"model_name {model_name!r} is not a timm model{hint}")
    for name, value in (("img_size", img_size), ("patch_size", patch_size)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    kwargs: dict[str, Any] = dict(vit_kwargs or {})
    if img_size is not None:
        kwargs["img_size"] = img_size
    if patch_size is not None:
        kwargs["patch_size"] = patch_size
    kwargs.setdefault("num_classes", 0)
    # Check divisibility before building (timm would fail later with a shape error).
    cfg = timm.models.get_pretrained_cfg(model_name)
    default_size = cfg.input_size[-1] if cfg is not None else None
    size = img_size if img_size is not None else default_size
    patch = patch_size
    if patch is None:
        patch = _default_patch(model_name)
    if size is not None and patch is not None and size % patch != 0:
        raise ValueError(
            f"img_size {size} is not divisible by patch_size {patch} (model_name={model_name!r})"
        )
    try:
        model = timm.create_model(model_name, pretrained=False, **kwargs)
    except TypeError as e:  # e.g. a ResNet name given ViT arguments
        raise ValueError(
            f"model_name {model_name!r} does not build a timm VisionTransformer with {sorted(kwargs)} ({e})"
        ) from e
    if not isinstance(model, VisionTransformer):
        raise ValueError(
            f"model_name {model_name!r} builds a {type(model).__name__}, not a timm VisionTransformer"
        )
    return model


def _default_patch(model_name: str) -> int | None:
    """Patch size encoded in a timm ViT name (``..._patch16_...``), or ``None``."""
    import re

    m = re.search(r"patch(\d+)", model_name)
    return int(m.group(1)) if m else None
