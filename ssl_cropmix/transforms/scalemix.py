"""ScaleMix (Asym-Siam, Wang et al., CVPR 2022, Sec. 4.2) expressed as CropMix.

ScaleMix draws two crops from the *same* scale range with the same per-view augmentation
and mixes them with CutMix. That is exactly CropMix with one shared range instead of
``n`` disjoint ones, so this class only fixes three CropMix arguments::

    ScaleMix(...) == CropMix(..., shared_range=True, num_crops=2, mixing="cutmix")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision.transforms.v2 import InterpolationMode

from ssl_cropmix.transforms.cropmix import CropMix

#: The CropMix arguments that turn CropMix into ScaleMix.
SCALEMIX_SETTINGS: dict[str, Any] = dict(shared_range=True, num_crops=2, mixing="cutmix")


class ScaleMix(CropMix):
    """ScaleMix: CutMix of two crops drawn from one shared scale range.

    Paper: Wang et al., "On the Importance of Asymmetry for Siamese Representation
    Learning" (Asym-Siam), CVPR 2022, Sec. 4.2.

    Args:
        size: output size.
        crop_scale: the shared area-fraction range of both crops.
        view_transform: augmentation applied to each crop before mixing.
        interpolation, ratio, paste, output_dtype, antialias, generator: as in
            :class:`~ssl_cropmix.transforms.cropmix.CropMix`.
        **kwargs: other CropMix arguments (not ``shared_range``, ``num_crops``, ``mixing``).

    Shape:
        ``(C, H, W)`` / PIL ``->`` ``(C, *size)``
    """

    def __init__(
        self,
        size: int | Sequence[int] = 224,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        view_transform: Callable[[Any], Any] | None = None,
        interpolation: InterpolationMode | str = InterpolationMode.BILINEAR,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        fixed = sorted(set(kwargs) & set(SCALEMIX_SETTINGS))
        if fixed:
            raise ValueError(f"ScaleMix fixes {fixed}; use CropMix to change them, got {kwargs!r}")
        super().__init__(
            size=size,
            crop_scale=crop_scale,
            view_transform=view_transform,
            interpolation=interpolation,
            generator=generator,
            **SCALEMIX_SETTINGS,
            **kwargs,
        )
