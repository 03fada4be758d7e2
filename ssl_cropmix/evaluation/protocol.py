"""The backbone and provider protocols: how evaluation code (``evaluation/`` and the callbacks
above it) finds features and labelled data in any LightningModule / DataModule.

A module is probe-able when it has either

* a ``forward_features(x) -> (B, D)`` method (takes precedence), or
* a ``backbone: nn.Module`` attribute mapping ``(B, 3, H, W) -> (B, D)`` (``(B, D, 1, 1)``
  and other trailing singleton shapes are flattened).

``MoCoCropMix``, ``MAECropMix`` and ``CropMixClassifier`` all expose ``backbone``; a user's
own module needs only one of the two to work with every callback in this package.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ssl_cropmix.validation import check_int


def get_backbone(pl_module: Any) -> nn.Module:
    """Return the module whose parameters/buffers make up the representation.

    Raises:
        TypeError: when ``pl_module`` exposes neither ``backbone`` nor ``forward_features``.
    """
    backbone = getattr(pl_module, "backbone", None)
    if isinstance(backbone, nn.Module):
        return backbone
    if callable(getattr(pl_module, "forward_features", None)) and isinstance(pl_module, nn.Module):
        return pl_module
    raise TypeError(
        f"{type(pl_module).__name__} cannot be probed: give it a `backbone` attribute "
        "(nn.Module mapping (B,3,H,W) -> (B,D)) or a `forward_features(x) -> (B,D)` method."
    )


def extract_features(pl_module: Any, x: torch.Tensor) -> torch.Tensor:
    """Features ``(B, D)`` of images ``x`` ``(B, 3, H, W)`` following the protocol above.

    Runs under whatever grad mode the caller set; callers wrap it in ``torch.no_grad()``.
    """
    fwd = getattr(pl_module, "forward_features", None)
    if callable(fwd):
        feats = fwd(x)
    else:
        feats = get_backbone(pl_module)(x)
    if feats.ndim > 2:
        feats = feats.flatten(1)
    return feats


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode + ``no_grad`` for ``module``; restores every submodule's training flag."""
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        for m, flag in flags.items():
            m.training = flag


# ---------------------------------------------------------------------------------------
# Shared by the evaluation callbacks (linear probe, kNN, fine-tuning); results are in
# ``ssl_cropmix.evaluation.results``.
# ---------------------------------------------------------------------------------------


def resolve_provider(provider: Any, trainer: Any = None) -> Any:
    """The labelled-data provider: ``provider`` if given, else ``trainer.datamodule``.

    Raises:
        TypeError: when no object implementing the provider protocol
            (``num_classes``, ``labeled_train_dataloader``, ``labeled_val_dataloader``,
            see ``docs/architecture.md``) is found.
    """
    if provider is None and trainer is not None:
        provider = getattr(trainer, "datamodule", None)
    needed = ("num_classes", "labeled_train_dataloader", "labeled_val_dataloader")
    if provider is None or not all(hasattr(provider, n) for n in needed):
        raise TypeError(
            "evaluation needs labelled data: pass provider=/train_dataloader=+val_dataloader=, "
            f"or fit with a DataModule implementing {needed}; got {type(provider).__name__}"
        )
    return provider


def check_optional_positive_ints(**values: Any) -> None:
    """Refuse each given (not ``None``) value that is not a positive int (``bool`` refused).

    Raises:
        ValueError: naming the first offending keyword and its value.
    """
    for pname, v in values.items():
        check_int(pname, v, 1, optional=True)


def module_device(module: nn.Module) -> torch.device:
    """Device of the first parameter or buffer (CPU for an empty module)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")
