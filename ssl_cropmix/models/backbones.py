"""Backbones by name (torchvision / timm ResNets) or any ``nn.Module``.

The returned trunk maps ``(B, 3, H, W) -> (B, D)``: the classifier is replaced by
``nn.Identity`` and the feature dimension ``D`` is found automatically.
"""

from __future__ import annotations

import torch
from torch import nn


def _small_image_stem(model: nn.Module) -> None:
    """3x3 stride-1 first convolution and no max-pool (CIFAR ResNets, He et al. 2016 Sec. 4.2)."""
    conv1 = getattr(model, "conv1", None)
    if not isinstance(conv1, nn.Conv2d):
        raise ValueError(
            f"small_image=True needs a ResNet with a `conv1` Conv2d stem, got {type(model).__name__}"
        )
    model.conv1 = nn.Conv2d(3, conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


@torch.no_grad()
def infer_feature_dim(module: nn.Module, image_size: int = 32) -> int:
    """Feature dimension of ``module`` found by one forward pass on a dummy batch.

    The module is run in eval mode (batch-norm statistics untouched) and restored.

    Raises:
        ValueError: when the output is not ``(B, D)`` or ``(B, D, 1, ...)``.
    """
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = module.training
    module.eval()
    try:
        out = module(torch.zeros(2, 3, image_size, image_size, device=device))
    finally:
        module.train(was_training)
    if out.ndim < 2 or any(s != 1 for s in out.shape[2:]):
        raise ValueError(
            f"backbone must map (B,3,H,W) to (B,D) or (B,D,1,1), got output shape {tuple(out.shape)}"
        )
    return int(out.shape[1])


class _Flatten(nn.Module):
    """Wraps a trunk so its output is always ``(B, D)``."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).flatten(1)


def build_backbone(
    name_or_module: str | nn.Module, small_image: bool = False, pretrained: bool = False
) -> tuple[nn.Module, int]:
    """Build a feature trunk.

    Args:
        name_or_module: a torchvision ResNet name (``"resnet18"``, ``"resnet50"``, ...), a
            timm name prefixed with ``"timm/"`` (``"timm/resnet50"``), or an ``nn.Module``
            mapping ``(B,3,H,W)`` to ``(B,D)`` / ``(B,D,1,1)`` (used as is).
        small_image: replace the stem by a 3x3 stride-1 convolution without max-pool, for
            32-px images (CIFAR). Only for named ResNets.
        pretrained: load the library's default ImageNet weights (needs them cached).

    Returns:
        ``(module, feature_dim)``; ``module(x)`` has shape ``(B, feature_dim)``.

    Shape:
        module: ``(B, 3, H, W) -> (B, D)``.

    Raises:
        ValueError: unknown name, or ``small_image`` for a model without a ResNet stem.
        TypeError: ``name_or_module`` is neither a string nor an ``nn.Module``.
    """
    if isinstance(name_or_module, nn.Module):
        if small_image:
            raise ValueError("small_image=True applies to named backbones only, got an nn.Module")
        dim = infer_feature_dim(name_or_module)
        return _Flatten(name_or_module), dim
    if not isinstance(name_or_module, str):
        raise TypeError(f"backbone must be a name or an nn.Module, got {type(name_or_module).__name__}")
    name = name_or_module
    if name.startswith("timm/"):
        import timm

        try:
            model = timm.create_model(name[len("timm/") :], pretrained=pretrained, num_classes=0)
        except RuntimeError as e:  # timm raises RuntimeError for unknown models
            raise ValueError(f"unknown timm backbone {name!r}: {e}") from e
        if small_image:
            _small_image_stem(model)
        return model, int(model.num_features)
    import torchvision

    builder = getattr(torchvision.models, name, None)
    if builder is None or not name.startswith(("resnet", "resnext", "wide_resnet")):
        raise ValueError(
            f"backbone must be a torchvision ResNet name (e.g. 'resnet18', 'resnet50'), a "
            f"'timm/<name>' or an nn.Module, got {name!r}"
        )
    model = builder(weights="DEFAULT" if pretrained else None)
    dim = int(model.fc.in_features)
    model.fc = nn.Identity()
    if small_image:
        _small_image_stem(model)
    return model, dim
