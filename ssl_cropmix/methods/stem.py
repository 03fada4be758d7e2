"""Backbone and image size agree: an ImageNet stem on small images is said once.

A ResNet's ImageNet stem (7x7 stride-2 convolution + max-pool) divides the input by 4
before the first block: a 32-px image leaves 8x8 maps, 1x1 after the last stage. It trains
"without a word" but far below what the CIFAR stem (3x3 stride 1, no max-pool;
``small_image=True``) reaches, so a fit whose first training batch is small says so.
"""

from __future__ import annotations

from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from ssl_cropmix.data.views import SMALL_IMAGE_MAX


def has_imagenet_stem(backbone: nn.Module) -> bool:
    """``True`` when the first ``Conv2d`` of ``backbone`` is the ImageNet stem's: kernel >= 7
    and stride >= 2 (torchvision / timm ResNets with ``small_image=False``)."""
    conv = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    return conv is not None and conv.kernel_size[0] >= 7 and conv.stride[0] >= 2


def warn_imagenet_stem_on_small_images(owner: str, backbone: nn.Module, image_px: int) -> bool:
    """Warn (rank 0) when ``image_px <= 64`` and ``backbone`` has the ImageNet stem.

    Args:
        owner: the method's class name, for the message.
        backbone: the trunk that sees the images.
        image_px: height of the first training batch.

    Returns:
        whether it warned (callers warn once per fit).
    """
    if image_px > SMALL_IMAGE_MAX or not has_imagenet_stem(backbone):
        return False
    rank_zero_warn(
        f"{owner}: the backbone has the ImageNet stem (7x7 stride-2 conv + max-pool) but the training images are "
        f"{image_px} px (<= {SMALL_IMAGE_MAX}): its first block sees {max(1, image_px // 4)}x{max(1, image_px // 4)} "
        f"maps. Pass small_image=True (3x3 stride-1 stem, no max-pool; --model.init_args.small_image=true), or "
        f"train on larger images",
        category=UserWarning,
    )
    return True
