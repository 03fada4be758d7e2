"""ResizeMix (Qin et al., 2020) as a batch augmentation for supervised training / fine-tuning.

Same call convention as torchvision's ``v2.MixUp`` / ``v2.CutMix`` (use those for plain
Mixup / CutMix): ``images (B, C, H, W), labels (B,) -> images, soft labels (B, classes)``.
Each image ``i`` receives image ``i - 1`` (the batch rolled by one, as torchvision pairs
samples) resized by ``tau ~ U(tau_range)`` and pasted at a uniform random place; its label
becomes ``(1 - a) * y_i + a * y_{i-1}`` with ``a`` the pasted area fraction (``~ tau**2``).

ResizeMix as a *crop-mixing op* inside CropMix is ``CropMix(mixing="resizemix")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import query_size

# The one private torchvision name the package uses. ``_BaseMixUpCutMix`` is the base class
# of the public ``v2.MixUp`` and ``v2.CutMix``: it owns the label one-hot encoding, the batch
# checks and the tv_tensor pass-through, so ResizeMix behaves exactly like them with any
# labels_getter. Re-implementing it would copy ~80 lines that torchvision keeps in sync with
# MixUp/CutMix. Tested with torchvision 0.29.1 (tests/transforms/test_resizemix.py exercises
# every method used here: __init__(alpha, num_classes, labels_getter), _mixup_label,
# _check_image_or_video, and forward's batch handling); the pyproject floor (0.21) is the
# oldest release with this interface and make_params/transform public on v2.Transform.
from torchvision.transforms.v2._augment import _BaseMixUpCutMix

from ssl_cropmix.transforms import functional as CF
from ssl_cropmix.transforms.cropmix import _check_interpolation, _check_range


class ResizeMix(_BaseMixUpCutMix):
    """Batch ResizeMix with the ``v2.MixUp`` / ``v2.CutMix`` call convention.

    Subclasses torchvision's ``_BaseMixUpCutMix`` (private, but it is what ``MixUp`` and
    ``CutMix`` share: label handling, batch checks, tv_tensor wrapping; see the note at the
    import for the versions tested); only the sampling and the pixel op are new.

    Paper: Qin et al., "ResizeMix: Mixing Data with Preserved Object Information and
    True Labels", 2020.

    Args:
        num_classes: number of classes (for index labels).
        tau_range: range of the resize factor ``tau``, ``0 < min <= max <= 1``.
        labels_getter: as in ``v2.MixUp``.
        generator: optional ``torch.Generator`` (``None``: torch's global RNG).
        interpolation: interpolation of the pasted image (bilinear, bicubic, nearest).

    Shape:
        ``images (B, C, H, W), labels (B,) or (B, num_classes)`` ->
        ``images (B, C, H, W), labels (B, num_classes)`` float.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        tau_range: tuple[float, float] = (0.1, 0.8),
        labels_getter: str | Callable[[Any], Any] = "default",
        generator: torch.Generator | None = None,
        interpolation: InterpolationMode | str = InterpolationMode.BILINEAR,
    ) -> None:
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        super().__init__(alpha=1.0, num_classes=num_classes, labels_getter=labels_getter)
        self.tau_range = _check_range("tau_range", tau_range, low_open=0.0, high=1.0, strict=False)
        self.interpolation = _check_interpolation(interpolation)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
        self.generator = generator

    def sample_params(self, image_size: tuple[int, int], generator: torch.Generator | None = None) -> dict[str, Any]:
        """Draw ``tau``, the paste box ``(top, left, h, w)`` and the label weight ``lam``
        (weight of each image's own label = 1 - pasted area fraction)."""
        g = generator if generator is not None else self.generator
        height, width = int(image_size[0]), int(image_size[1])
        lo, hi = self.tau_range
        tau = lo + (hi - lo) * torch.rand((), dtype=torch.float64, generator=g).item()
        box = CF.resize_paste_box(height, width, tau, g)
        lam = 1.0 - box[2] * box[3] / (height * width)
        return dict(tau=tau, box=box, lam_adjusted=lam)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return self.sample_params(query_size(flat_inputs))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if inpt is params["labels"]:
            return self._mixup_label(inpt, lam=params["lam_adjusted"])
        pure_tensor = isinstance(inpt, torch.Tensor) and not isinstance(inpt, tv_tensors.TVTensor)
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Video)) or pure_tensor:
            self._check_image_or_video(inpt, batch_size=params["batch_size"])
            x = inpt.as_subclass(torch.Tensor)
            out = CF.resize_paste(x, x.roll(1, 0), params["box"], self.interpolation)
            if isinstance(inpt, (tv_tensors.Image, tv_tensors.Video)):
                out = tv_tensors.wrap(out, like=inpt)
            return out
        return inpt
