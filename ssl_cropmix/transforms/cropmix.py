"""CropMix (Han et al., 2022, Sec. 3.2 and Appendix A) as a torchvision v2 transform.

One call draws ``n`` RandomResizedCrops of the same image, crop ``i`` from the ``i``-th of
``n`` equal slices of ``crop_scale`` (so one input yields a multi-scale set of views),
shuffles them and folds them into one image: ``m = mix(v1, v2); m = mix(m, v3); ...``.

Performance (see ``benchmarks/transforms.py`` and ``benchmarks/dataloader.py``): the image
is converted to a uint8 tensor once, every crop is a slice (no copy) resized on uint8 with
torchvision's native antialiased kernels, CutMix / ResizeMix paste uint8 pixels, Mixup is
one weighted sum read from uint8, and the result is converted once at the end. For small
PIL images ``backend="pil"`` keeps everything in PIL / NumPy, ``backend="numpy"`` computes
a whole Mixup CropMix as two matrix products, and ``keep_pil=True`` returns PIL so that PIL
colour ops can follow without a round trip.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode, Transform
from torchvision.transforms.v2 import query_chw

from ssl_cropmix.transforms import functional as CF
from ssl_cropmix.validation import check_bool

MIXINGS = ("mixup", "cutmix", "resizemix")
PASTE_MODES = ("random", "into_mix", "into_crop")
BACKENDS = ("tensor", "pil", "numpy")
INTERPOLATIONS = (
    InterpolationMode.NEAREST,
    InterpolationMode.NEAREST_EXACT,
    InterpolationMode.BILINEAR,
    InterpolationMode.BICUBIC,
)
_PIL_RESAMPLE = {
    InterpolationMode.NEAREST: PIL.Image.Resampling.NEAREST,
    InterpolationMode.NEAREST_EXACT: PIL.Image.Resampling.NEAREST,
    InterpolationMode.BILINEAR: PIL.Image.Resampling.BILINEAR,
    InterpolationMode.BICUBIC: PIL.Image.Resampling.BICUBIC,
}
_PIL_BACKEND_MODES = {"RGB": 3, "L": 1}
_REJECTED_TV_TENSORS = (
    tv_tensors.BoundingBoxes,
    tv_tensors.Mask,
    tv_tensors.Video,
    tv_tensors.KeyPoints,
)


class CropBox(NamedTuple):
    """One RandomResizedCrop box in source-image pixels (immutable).

    Attributes:
        top, left, height, width: the box.
        scale_range: the ``(lo, hi)`` area-fraction range it was drawn from.
        target_scale: the sampled area fraction (``nan`` for the fallback crop); the box's
            real fraction ``height * width / (H * W)`` equals it up to rounding.
        fallback: whether torchvision's central fallback crop was used (10 failed tries).
    """

    top: int
    left: int
    height: int
    width: int
    scale_range: tuple[float, float]
    target_scale: float
    fallback: bool

    @property
    def box(self) -> CF.Box:
        return self.top, self.left, self.height, self.width


class MixStep(NamedTuple):
    """One mixing step ``m <- mix(m, v)`` of the fold (``m``: running mix, ``v``: next crop).

    Attributes:
        kind: ``"mixup"``, ``"cutmix"`` or ``"resizemix"``.
        lam: Mixup: weight of ``m`` (``v`` gets ``1 - lam``), ``~ Beta(alpha/n, alpha/n)``.
            CutMix: the sampled ``lambda ~ U(0, 1)`` (box side ``sqrt(1 - lam)``).
            ResizeMix: ``1 - tau**2``.
        donor: ``"crop"`` or ``"mix"``. CutMix / ResizeMix: the operand pasted into the
            other one. Mixup: the operand with the smaller weight. ``intermediate`` is
            applied to this operand.
        box: paste box ``(top, left, h, w)`` in output pixels (CutMix / ResizeMix).
        tau: ResizeMix's size factor (``None`` otherwise).
        perm: channel permutation for ``intermediate="channel_permute"`` (else ``None``).
    """

    kind: str
    lam: float
    donor: str
    box: CF.Box | None = None
    tau: float | None = None
    perm: tuple[int, ...] | None = None


class CropMixParams(NamedTuple):
    """Every random number of one CropMix call (immutable).

    The parameter records are named tuples (``typing.NamedTuple``), not frozen
    dataclasses: they are built once per image in a loader worker, where a tuple costs
    about half as much.

    Attributes:
        image_size: source ``(H, W)``.
        num_crops: ``n`` drawn for this call.
        scale_ranges: the ``n`` area-fraction ranges (all equal when ``shared_range``).
        boxes: ``boxes[i]`` drawn from ``scale_ranges[i]``.
        order: fold order, a permutation of ``range(n)`` (identity without shuffle).
        steps: ``n - 1`` steps; ``steps[k]`` mixes crop ``order[k + 1]`` into the mix.
    """

    image_size: tuple[int, int]
    num_crops: int
    scale_ranges: tuple[tuple[float, float], ...]
    boxes: tuple[CropBox, ...]
    order: tuple[int, ...]
    steps: tuple[MixStep, ...]


class CropMixBatch(NamedTuple):
    """Every random number of a batch of CropMix calls (:meth:`CropMix.sample_batch`), as
    tensors with one row per image and ``c = max(num_crops)`` slots (unused slots padded).

    Attributes:
        num_crops: ``(B,)`` int64, ``n_b``.
        valid: ``(B, c)`` bool, slot ``j < n_b``.
        boxes: ``(B, c, 4)`` int64 ``(top, left, h, w)``; slot ``j`` drawn from scale range
            ``j`` (as ``CropMixParams.boxes``); unused slots hold the whole image.
        target_scale: ``(B, c)`` float64 sampled area fractions (``nan``: fallback / unused).
        fallback: ``(B, c)`` bool, torchvision's central fallback crop was used.
        order: ``(B, c)`` int64 fold order (a permutation of ``range(n_b)``, then the unused slots).
        lam: ``(B, c - 1)`` float64, step ``k`` mixes crop ``order[k + 1]`` into the mix:
            Mixup's ``Beta`` weight of the mix, or CutMix's ``U(0, 1)``; 1 for unused steps.
        paste_boxes: ``(B, c - 1, 4)`` int64 CutMix boxes in output pixels (empty for unused
            steps), ``None`` for Mixup.
        donor_mix: ``(B, c - 1)`` bool, the running mix is the CutMix donor; ``None`` for Mixup.
    """

    num_crops: torch.Tensor
    valid: torch.Tensor
    boxes: torch.Tensor
    target_scale: torch.Tensor
    fallback: torch.Tensor
    order: torch.Tensor
    lam: torch.Tensor
    paste_boxes: torch.Tensor | None
    donor_mix: torch.Tensor | None


def _is_real(x: Any) -> bool:
    """A real number (Python or NumPy), not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


#: Largest ``num_crops`` accepted. Every crop is cut, resized to the output size and mixed, so
#: one view costs ~1 ms per crop at 224 px (measured: n = 2 / 4 / 16 / 64 / 256 took 2.9 / 6.6 /
#: 16.8 / 67 / 231 ms per view on one CPU thread; the issue's n = 2000 took 10.7 s). 16 keeps a
#: view within ~5x the paper's n in {2, 3, 4} (and each of the n scale ranges at >= 1/16 of
#: ``crop_scale``). Re-measure: time ``CropMix(224, num_crops=n)(photo)`` for a few n, one torch thread.
MAX_NUM_CROPS: int = 16


def _is_int(x: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _check_range(name: str, value: Any, *, low_open: float, high: float, strict: bool) -> tuple[float, float]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise TypeError(f"{name} must be a sequence (min, max), got {value!r}")
    if not all(_is_real(v) for v in value):
        raise TypeError(f"{name} must hold two numbers, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    ok = low_open < lo and hi <= high and (lo < hi if strict else lo <= hi) and math.isfinite(hi)
    if not ok:
        rel = "<" if strict else "<="
        bound = f" <= {high}" if math.isfinite(high) else " (finite)"
        raise ValueError(f"{name} must satisfy {low_open} < min {rel} max{bound}, got {tuple(value)!r}")
    return lo, hi


def _check_size(size: Any) -> tuple[int, int]:
    if _is_int(size):
        size = (size, size)
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(_is_int(s) and s > 0 for s in size)
    ):
        raise ValueError(f"size must be a positive int or a pair (h, w) of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _check_interpolation(interpolation: Any) -> InterpolationMode:
    if isinstance(interpolation, str):
        try:
            interpolation = InterpolationMode(interpolation.lower())
        except ValueError:
            raise ValueError(
                f"interpolation must be one of {[m.value for m in INTERPOLATIONS]}, got {interpolation!r}"
            ) from None
    if not isinstance(interpolation, InterpolationMode) or interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"interpolation must be one of {[m.value for m in INTERPOLATIONS]}, got {interpolation!r}"
        )
    return interpolation


#: PIL modes CropMix reads as they are; every other mode is converted first (:func:`_pil_input`).
_NATIVE_PIL_MODES = ("RGB", "L", "RGBA")
#: Target of PIL's ``convert`` for the other 8-bit modes.
_PIL_CONVERT = {"1": "L", "LA": "RGBA", "La": "RGBA", "PA": "RGBA", "RGBa": "RGBA", "RGBX": "RGB"}
#: Modes read as float in [0, 1]: value / scale, clipped.
_PIL_FLOAT_SCALE = {"F": 255.0, "I": 65535.0, "I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0}


def _pil_input(image: PIL.Image.Image) -> PIL.Image.Image | torch.Tensor:
    """A PIL image in a mode CropMix can interpolate.

    * ``RGB``, ``L``, ``RGBA``: unchanged.
    * ``P`` (palette): ``RGB`` (``RGBA`` when it has a transparent index), so colours,
      not palette indices, are interpolated; ``1`` -> ``L``; ``LA`` / ``PA`` -> ``RGBA``;
      ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` ... -> ``RGB`` (PIL's ``convert``).
    * ``F`` (32-bit float): PIL's own scale is that of ``L`` (``convert("L")`` maps 255.0 to
      white), so it becomes a float tensor ``(1, H, W)`` of ``value / 255`` clipped to [0, 1];
      16-bit ``I;16*`` and ``I`` become ``value / 65535`` (the loader's 16-bit rule).
    """
    mode = image.mode
    if mode in _NATIVE_PIL_MODES:
        return image
    scale = _PIL_FLOAT_SCALE.get(mode)
    if scale is not None:
        a = np.nan_to_num(np.asarray(image, dtype=np.float32) / np.float32(scale), nan=0.0, posinf=1.0, neginf=0.0)
        return torch.from_numpy(np.clip(a, 0.0, 1.0))[None]
    if mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    return image.convert(_PIL_CONVERT.get(mode, "RGB"))


def _pil_channels(image: PIL.Image.Image) -> int:
    """Channels of ``image`` once :func:`_pil_input` has converted it."""
    mode = image.mode
    if mode in ("RGB", "L", "RGBA"):
        return {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    if mode in _PIL_FLOAT_SCALE or mode == "1":
        return 1
    if mode == "P":
        return 4 if "transparency" in image.info else 3
    return 4 if _PIL_CONVERT.get(mode) == "RGBA" else 3


def _as_tensor(x: Any) -> Any:
    """A view_transform result as a tensor: PIL images become uint8 ``(C, H, W)``."""
    return CF.pil_to_uint8(x).contiguous() if isinstance(x, PIL.Image.Image) else x


def _covering_region(image: PIL.Image.Image, boxes: Sequence[CropBox]) -> tuple[PIL.Image.Image, int, int]:
    """The part of ``image`` that the boxes cover, with its top-left corner, when it is at
    most half of the image (a PIL crop costs about as much per pixel as reading the pixels),
    else the whole image at ``(0, 0)``."""
    top = min(b.top for b in boxes)
    left = min(b.left for b in boxes)
    bottom = max(b.top + b.height for b in boxes)
    right = max(b.left + b.width for b in boxes)
    if (bottom - top) * (right - left) * 2 <= image.height * image.width:
        return image.crop((left, top, right, bottom)), top, left
    return image, 0, 0


class CropMix(Transform):
    """CropMix: mix ``n`` crops taken from ``n`` disjoint scale ranges of one image.

    Paper: Han et al., "CropMix: Sampling a Rich Input Distribution via Multi-Scale Cropping", 2022, Sec. 3.2 (Algorithm 1);
    Appendix A for the contrastive setting; Table 5 for interpolation and ``n`` ablations.

    Args:
        size: output size, an int or ``(h, w)``.
        crop_scale: ``(s_min, s_max)`` area-fraction range, split evenly into ``n`` ranges.
        num_crops: ``n`` (int, 2 <= n <= :data:`MAX_NUM_CROPS` = 16: a view's time grows
            linearly with n) or a sequence to draw ``n`` from uniformly on every call
            (repeat a value to weight it).
        mixing: ``"mixup"`` (``lambda ~ Beta(alpha/n, alpha/n)``), ``"cutmix"``
            (``lambda ~ U(0, 1)``, box side ``sqrt(1 - lambda)``) or ``"resizemix"`` (the donor
            resized by ``tau ~ U(tau_range)`` and pasted at a random place).
        alpha: Mixup's Beta parameter (divided by ``n``).
        ratio: aspect-ratio range of each RandomResizedCrop.
        interpolation: ``bilinear`` (default), ``bicubic``, ``nearest`` or ``nearest-exact``.
        intermediate: ``None``, ``"channel_permute"`` (the paper's classification setting)
            or a callable applied, before each mixing step, to the operand with the smaller
            Mixup weight or to the CutMix / ResizeMix donor.
        view_transform: optional transform applied to each resized crop before mixing
            (contrastive setting: the full MoCo v2 colour augmentation per crop). It gets
            a uint8 tensor for PIL / uint8 input.
        shared_range: draw every crop from the whole ``crop_scale`` instead of splitting it
            (this is ScaleMix, see :class:`~ssl_cropmix.transforms.scalemix.ScaleMix`).
        tau_range: ResizeMix's ``tau`` range, ``0 < min <= max <= 1``.
        paste: CutMix / ResizeMix direction: ``"random"`` (fair coin per step),
            ``"into_mix"`` (the next crop is pasted into the running mix) or
            ``"into_crop"`` (the running mix is pasted into the next crop).
        shuffle: shuffle the crops before folding (paper: yes). Without shuffling the fold
            runs from the smallest-scale range to the largest.
        output_dtype: dtype of the output for PIL / uint8 inputs (values in [0, 1]);
            ``None`` keeps uint8 (rounded). Float inputs keep their dtype.
        antialias: antialiased resizing (bilinear / bicubic).
        generator: optional ``torch.Generator``; ``None`` uses torch's global RNG (which
            Lightning seeds per data-loader worker). A generator object is copied into each
            worker process, so pass one only for single-process reproducibility.
        backend: ``"tensor"`` (default: crops resized as uint8 tensors, pixel-identical to
            torchvision's antialiased ``resized_crop``) or ``"pil"``: for RGB / L PIL input,
            each crop is cut and resized by PIL's C ``crop`` + ``resize`` (PIL's antialiased
            filters: pixels differ from the tensor path by a few levels); Mixup (without
            ``intermediate``) is one weighted sum of the crops and CutMix a PIL paste (see
            :meth:`apply_pil`). Several times cheaper for 32-px images,
            where per-call overhead dominates; other inputs use the tensor path.
            ``view_transform`` still gets uint8 tensor crops. Requires ``antialias=True``.
            Or ``"numpy"``, for generic Mixup of small RGB / L PIL images (the fastest at
            32 px): all crops are resized and mixed by two float32 matrix products with
            torchvision's antialiasing weights and rounded once (:meth:`apply_numpy`), equal
            to the float fold of torchvision's float ``resized_crop`` up to float rounding.
            Requires ``mixing="mixup"``, no ``intermediate`` or ``view_transform``, bilinear
            or bicubic ``interpolation`` and ``antialias=True``; other inputs use the tensor
            path. Its cost grows with source size x output size: keep it for small images.
        keep_pil: return a PIL image (the input's mode) for PIL input, as torchvision's own
            PIL transforms do, so that PIL colour ops (e.g. ``v2.ColorJitter``) can follow
            without a tensor round trip. Requires ``output_dtype=None``; tensors in still give
            tensors out. With ``backend="pil"`` an RGB / L image never leaves PIL / NumPy.
        skip_invisible: Mixup (without ``intermediate`` or ``view_transform``) with a uint8
            output (``output_dtype=None``, PIL or uint8 input): crops whose fold weights
            together are below half an 8-bit level are neither cut nor resized and the other
            weights are rescaled to sum to 1
            (:func:`~ssl_cropmix.transforms.functional.visible_fold_weights`), so every output
            pixel is within one level of the rounded full fold. With the paper's
            ``alpha = 0.4`` and ``n`` in {2, 3, 4} that is 39 % of the crops. The random
            numbers drawn are the same either way. ``False``: every crop is rendered.

    Shape:
        ``(C, H, W)`` tensor, ``tv_tensors.Image`` or PIL image ``->`` ``(C, *size)`` tensor
        (``tv_tensors.Image`` in gives ``tv_tensors.Image`` out; PIL in gives PIL out with
        ``keep_pil``).

    Example:
        >>> from torchvision.transforms import v2
        >>> tf = v2.Compose([CropMix(224, mixing="cutmix"), v2.Normalize(mean, std)])
    """

    def __init__(
        self,
        size: int | Sequence[int] = 224,
        crop_scale: tuple[float, float] = (0.01, 1.0),
        num_crops: int | Sequence[int] = (2, 3, 4),
        mixing: str = "mixup",
        alpha: float = 0.4,
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        interpolation: InterpolationMode | str = InterpolationMode.BILINEAR,
        intermediate: None | str | Callable[[Any], Any] = None,
        view_transform: Callable[[Any], Any] | None = None,
        shared_range: bool = False,
        tau_range: tuple[float, float] = (0.1, 0.8),
        paste: str = "random",
        shuffle: bool = True,
        output_dtype: torch.dtype | None = torch.float32,
        antialias: bool = True,
        generator: torch.Generator | None = None,
        backend: str = "tensor",
        keep_pil: bool = False,
        skip_invisible: bool = True,
    ) -> None:
        super().__init__()
        self.size = _check_size(size)
        self.crop_scale = _check_range("crop_scale", crop_scale, low_open=0.0, high=1.0, strict=True)
        if not _is_int(num_crops) and (not isinstance(num_crops, Sequence) or isinstance(num_crops, str)):
            raise TypeError(f"num_crops must be an int or a sequence of ints, got {num_crops!r}")
        choices = (num_crops,) if _is_int(num_crops) else tuple(num_crops)
        if not choices or not all(_is_int(c) and c >= 2 for c in choices):
            raise ValueError(f"num_crops must be an int >= 2 or a non-empty sequence of them, got {num_crops!r}")
        if max(choices) > MAX_NUM_CROPS:
            raise ValueError(
                f"num_crops must be <= {MAX_NUM_CROPS} (cropmix.MAX_NUM_CROPS), got {num_crops!r}: every crop is cut, "
                "resized to the output size and mixed, so one view's time grows linearly with n (~1 ms per crop at "
                f"224 px; n={max(choices)} would take ~{max(choices)} ms per image, n=2000 took 10.7 s); the paper "
                "uses n in {2, 3, 4}"
            )
        self.num_crops = tuple(int(c) for c in choices)
        if mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {MIXINGS}, got {mixing!r}")
        self.mixing = mixing
        if not _is_real(alpha) or not 0 < alpha < math.inf:
            raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
        self.alpha = float(alpha)
        r = _check_range("ratio", ratio, low_open=0.0, high=math.inf, strict=False)
        self.ratio = r
        self._log_ratio = tuple(torch.log(torch.tensor(r)).tolist())  # as torchvision's RRC
        self.interpolation = _check_interpolation(interpolation)
        if intermediate is not None and intermediate != "channel_permute" and not callable(intermediate):
            raise ValueError(
                f"intermediate must be None, 'channel_permute' or a callable, got {intermediate!r}"
            )
        self.intermediate = intermediate
        if view_transform is not None and not callable(view_transform):
            raise TypeError(f"view_transform must be callable or None, got {view_transform!r}")
        self.view_transform = view_transform
        self.shared_range = check_bool("shared_range", shared_range)
        self.tau_range = _check_range("tau_range", tau_range, low_open=0.0, high=1.0, strict=False)
        if paste not in PASTE_MODES:
            raise ValueError(f"paste must be one of {PASTE_MODES}, got {paste!r}")
        self.paste = paste
        self.shuffle = check_bool("shuffle", shuffle)
        if output_dtype is not None and not (
            isinstance(output_dtype, torch.dtype) and output_dtype.is_floating_point
        ):
            raise ValueError(f"output_dtype must be a floating torch.dtype or None, got {output_dtype!r}")
        self.output_dtype = output_dtype
        self.antialias = check_bool("antialias", antialias)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
        self.generator = generator
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend in ("pil", "numpy") and not self.antialias:
            raise ValueError(f"backend={backend!r} always antialiases; got antialias={antialias!r}")
        if backend == "numpy":
            unsupported = {
                "mixing": (mixing, mixing != "mixup"),
                "intermediate": (intermediate, intermediate is not None),
                "view_transform": (view_transform, view_transform is not None),
                "interpolation": (
                    self.interpolation.value,
                    self.interpolation not in (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC),
                ),
            }
            for name, (value, bad) in unsupported.items():
                if bad:
                    raise ValueError(
                        f"backend='numpy' mixes resized crops as matrices: it needs mixing='mixup', "
                        "intermediate=None, view_transform=None and bilinear or bicubic interpolation; "
                        f"got {name}={value!r} (use backend='pil' or 'tensor')"
                    )
        self.backend = backend
        keep_pil = check_bool("keep_pil", keep_pil)
        if keep_pil and output_dtype is not None:
            raise ValueError(
                f"keep_pil=True returns uint8 PIL images and needs output_dtype=None, got output_dtype={output_dtype!r}"
            )
        self.keep_pil = keep_pil
        self.skip_invisible = check_bool("skip_invisible", skip_invisible)

    # ------------------------------------------------------------------ sampling
    def scale_ranges(self, n: int) -> tuple[tuple[float, float], ...]:
        """The ``n`` area-fraction ranges: ``crop_scale`` split evenly, or repeated when
        ``shared_range`` (ScaleMix)."""
        if self.shared_range:
            return (self.crop_scale,) * n
        return CF.split_scale_range(self.crop_scale, n)

    def sample_params(
        self,
        image_size: tuple[int, int],
        generator: torch.Generator | None = None,
        num_channels: int = 3,
    ) -> CropMixParams:
        """Draw every random number of one call for a source image of ``image_size``.

        Args:
            image_size: ``(H, W)`` of the source image.
            generator: overrides ``self.generator`` when given; a
                :class:`~ssl_cropmix.transforms.functional.RandomStream` is used as is (the
                device path shares one stream over a batch).
            num_channels: channels of the image (for ``intermediate="channel_permute"``).
        """
        g = CF.as_stream(generator if generator is not None else self.generator)
        height, width = int(image_size[0]), int(image_size[1])
        n = self.num_crops[g.randint(0, len(self.num_crops))]
        ranges = self.scale_ranges(n)
        boxes = []
        for r in ranges:
            top, left, h, w, target, fallback = CF.sample_crop_box(height, width, r, self._log_ratio, g)
            boxes.append(CropBox(top, left, h, w, r, target, fallback))
        order = tuple(g.permutation(n)) if self.shuffle else tuple(range(n))
        steps = tuple(self._sample_step(n, num_channels, g) for _ in range(n - 1))
        return CropMixParams((height, width), n, ranges, tuple(boxes), order, steps)

    def _sample_donor(self, g: CF.RandomStream) -> str:
        if self.paste == "into_mix":
            return "crop"
        if self.paste == "into_crop":
            return "mix"
        return "crop" if g.uniform() < 0.5 else "mix"

    def _sample_step(self, n: int, num_channels: int, g: CF.RandomStream) -> MixStep:
        oh, ow = self.size
        box = tau = None
        if self.mixing == "mixup":
            lam = CF.sample_beta(self.alpha / n, self.alpha / n, g)
            donor = "mix" if lam < 0.5 else "crop"
        elif self.mixing == "cutmix":
            lam = g.uniform()
            box = CF.cutmix_box(oh, ow, lam, g)
            donor = self._sample_donor(g)
        else:
            lo, hi = self.tau_range
            tau = g.uniform(lo, hi)
            box = CF.resize_paste_box(oh, ow, tau, g)
            lam = 1.0 - tau * tau
            donor = self._sample_donor(g)
        perm = None
        if self.intermediate == "channel_permute":
            perm = tuple(g.permutation(num_channels))
        return MixStep(self.mixing, lam, donor, box, tau, perm)

    def sample_batch(self, sizes: torch.Tensor, generator: torch.Generator | None = None) -> CropMixBatch:
        """:meth:`sample_params` for a whole batch, with tensor operations (no loop over images).

        The same distributions as :meth:`sample_params` (STYLE principle 13; tested
        statistically against it): ``n`` uniform over ``num_crops``, crop ``j`` from the
        ``j``-th scale range (:meth:`scale_ranges`) by
        :func:`~ssl_cropmix.transforms.functional.sample_crop_boxes`, a uniform fold order
        (identity without ``shuffle``), and per step Mixup's ``Beta(alpha/n, alpha/n)`` or
        CutMix's ``U(0, 1)`` with its box and paste direction. The device path
        (:mod:`ssl_cropmix.data.device_views`) draws its views with it.

        Args:
            sizes: ``(B, 2)`` int64 source ``(H, W)``.
            generator: CPU ``torch.Generator`` (default: ``self.generator``, else torch's global RNG).

        Shape:
            see :class:`CropMixBatch` (``c = max(num_crops)``).
        """
        if self.mixing not in ("mixup", "cutmix") or self.intermediate is not None:
            raise ValueError(
                "sample_batch draws Mixup or CutMix steps without an intermediate op; got "
                f"mixing={self.mixing!r}, intermediate={self.intermediate!r}"
            )
        g = generator if generator is not None else self.generator
        sizes = sizes.to(torch.int64)
        bsz, c = int(sizes.shape[0]), max(self.num_crops)
        choices = torch.tensor(self.num_crops, dtype=torch.int64)
        pick = torch.floor(torch.rand(bsz, generator=g, dtype=torch.float64) * len(choices)).to(torch.int64)
        n = choices[pick.clamp_(max=len(choices) - 1)]  # (B,)
        slot = torch.arange(c, dtype=torch.int64)
        valid = slot[None, :] < n[:, None]  # (B, c)
        lo, hi = self.crop_scale
        if self.shared_range:
            r_lo = torch.full((bsz, c), lo, dtype=torch.float64)
            r_hi = torch.full((bsz, c), hi, dtype=torch.float64)
        else:  # split_scale_range: lo + (hi - lo) * k / n, the last edge exactly hi
            nf = n[:, None].to(torch.float64)
            r_lo = lo + (hi - lo) * slot[None, :].to(torch.float64) / nf
            r_hi = torch.where(slot[None, :] + 1 >= n[:, None], hi, lo + (hi - lo) * (slot[None, :] + 1) / nf)
        hh = sizes[:, 0, None].expand(bsz, c).reshape(-1)
        ww = sizes[:, 1, None].expand(bsz, c).reshape(-1)
        boxes, target, fallback = CF.sample_crop_boxes(hh, ww, r_lo.reshape(-1), r_hi.reshape(-1), self._log_ratio, g)
        boxes, target, fallback = boxes.view(bsz, c, 4), target.view(bsz, c), fallback.view(bsz, c)
        full = torch.stack([torch.zeros_like(hh), torch.zeros_like(hh), hh, ww], 1).view(bsz, c, 4)
        boxes = torch.where(valid[..., None], boxes, full)  # unused slots: a valid dummy box
        target = torch.where(valid, target, float("nan"))
        order = CF.uniform_permutations(n, c, g) if self.shuffle else slot.expand(bsz, c).clone()
        step_valid = valid[:, 1:]  # step k mixes crop order[k + 1]
        paste_boxes = donor_mix = None
        if self.mixing == "mixup":
            a = (self.alpha / n.to(torch.float64))[:, None].expand(bsz, c - 1).reshape(-1)
            lam = CF.sample_beta_batch(a, a, g).view(bsz, c - 1)
        else:
            oh, ow = self.size
            lam = torch.rand((bsz, c - 1), generator=g, dtype=torch.float64)
            paste_boxes = CF.cutmix_boxes(oh, ow, lam, g)
            paste_boxes = torch.where(step_valid[..., None], paste_boxes, 0)
            if self.paste == "random":
                donor_mix = torch.rand((bsz, c - 1), generator=g, dtype=torch.float64) >= 0.5
            else:
                donor_mix = torch.full((bsz, c - 1), self.paste == "into_crop", dtype=torch.bool)
            donor_mix = torch.logical_and(donor_mix, step_valid)
        lam = torch.where(step_valid, lam, 1.0)  # a step with lam = 1 changes nothing
        return CropMixBatch(n, valid, boxes, target, fallback, order, lam, paste_boxes, donor_mix)

    # ------------------------------------------------------------------ v2 hooks
    def check_inputs(self, flat_inputs: list[Any]) -> None:
        found = False
        for x in flat_inputs:
            if isinstance(x, _REJECTED_TV_TENSORS):
                raise TypeError(f"{type(self).__name__} mixes crops of images only; got {type(x).__name__}")
            if isinstance(x, (PIL.Image.Image, torch.Tensor)):
                found = True
        if not found:
            names = [type(x).__name__ for x in flat_inputs]
            raise TypeError(
                f"{type(self).__name__} expects a PIL image, a (C, H, W) tensor or a "
                f"tv_tensors.Image, got {', '.join(names) or 'nothing'}"
            )

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if len(flat_inputs) == 1 and isinstance(flat_inputs[0], PIL.Image.Image):
            img = flat_inputs[0]  # query_chw's answer, without its generic checks
            return {"params": self.sample_params((img.height, img.width), num_channels=_pil_channels(img))}
        c, h, w = query_chw(flat_inputs)
        return {"params": self.sample_params((h, w), num_channels=c)}

    def forward(self, *inputs: Any) -> Any:
        """``Transform.forward``, with a shortcut for the common call: one image.

        A dataset hands the first transform a single PIL image (or tensor). For one input,
        ``Transform.forward``'s pytree flattening, ``_needs_transform_list`` and
        unflattening reduce to ``transform(x, make_params([x]))``, but cost about 50 µs per
        call, a fifth of a 32-px CropMix; the shortcut runs exactly that (same checks, same
        random numbers). Any other input structure takes ``Transform.forward``.
        """
        if len(inputs) == 1:
            x = inputs[0]
            if isinstance(x, PIL.Image.Image) or type(x) is torch.Tensor or type(x) is tv_tensors.Image:
                flat = [x]
                self.check_inputs(flat)
                return self.transform(x, self.make_params(flat))
        return super().forward(*inputs)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, PIL.Image.Image) and inpt.mode not in _NATIVE_PIL_MODES:
            inpt = _pil_input(inpt)  # palette -> RGB, F / 16-bit -> float [0, 1], ...
            if isinstance(inpt, torch.Tensor):
                out = self.apply(inpt, params["params"])
                out = out if self.output_dtype is None else out.to(self.output_dtype)
                return PIL.Image.fromarray(out[0].float().mul(255.0).numpy(), mode="F") if self.keep_pil else out
        if isinstance(inpt, PIL.Image.Image):
            if self.backend == "numpy" and inpt.mode in _PIL_BACKEND_MODES:
                return self.apply_numpy(inpt, params["params"], as_pil=self.keep_pil)
            if self.backend == "pil" and inpt.mode in _PIL_BACKEND_MODES:
                return self.apply_pil(inpt, params["params"], as_pil=self.keep_pil)
            # convert only the union of the crop boxes when it is small
            p = params["params"]
            visible = self._visible_crops(p, self.output_dtype is None)
            order = p.order if visible is None else visible[0]
            region, top, left = _covering_region(inpt, [p.boxes[i] for i in order])
            out = self._apply(CF.pil_to_uint8(region), p, (top, left), visible)
            return CF.uint8_to_pil(out) if self.keep_pil else out
        if isinstance(inpt, tv_tensors.Image):
            out = self.apply(inpt.as_subclass(torch.Tensor), params["params"])
            return tv_tensors.wrap(out, like=inpt)
        if isinstance(inpt, torch.Tensor) and type(inpt) is torch.Tensor:
            return self.apply(inpt, params["params"])
        raise TypeError(f"{type(self).__name__} cannot transform {type(inpt).__name__}")

    # ------------------------------------------------------------------ applying
    def apply(self, image: torch.Tensor, params: CropMixParams, origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """Deterministically apply ``params`` to a ``(C, H, W)`` uint8 or float tensor.

        Args:
            image: the source image, or a part of it whose top-left corner lies at
                ``origin`` in the source image (boxes are shifted by ``-origin``).
            params: from :meth:`sample_params`.
            origin: ``(top, left)`` of ``image`` in the source image.

        Shape:
            ``(C, H, W) -> (C, *size)``
        """
        if image.ndim != 3:
            raise ValueError(f"image must be a (C, H, W) tensor, got shape {tuple(image.shape)}")
        if not (image.dtype == torch.uint8 or image.is_floating_point()):
            raise TypeError(f"image must be uint8 or floating point, got dtype {image.dtype}")
        visible = self._visible_crops(params, image.dtype == torch.uint8 and self.output_dtype is None)
        return self._apply(image, params, origin, visible)

    def _apply(self, image: torch.Tensor, params: CropMixParams, origin: tuple[int, int],
               visible: tuple[list[int], list[float]] | None) -> torch.Tensor:
        """:meth:`apply` with :meth:`_visible_crops` already known (``None``: every crop)."""
        oy, ox = origin
        ih, iw = image.shape[-2:]
        crops = []
        for i in params.order if visible is None else visible[0]:  # invisible crops: not cut, not resized
            b = params.boxes[i]
            box = (b.top - oy, b.left - ox, b.height, b.width)
            if box[0] < 0 or box[1] < 0 or box[0] + box[2] > ih or box[1] + box[3] > iw:
                raise ValueError(
                    f"image of size {(ih, iw)} at origin {origin} does not contain crop box {b.box} "
                    f"(params were sampled for image_size {params.image_size})"
                )
            crops.append(CF.resized_crop(image, box, self.size, self.interpolation, self.antialias))
        if visible is not None:
            return self._mixup_sum(crops, visible[1], image.dtype)
        if self.view_transform is not None:
            crops = [_as_tensor(self.view_transform(c)) for c in crops]
        return self._fold(crops, params.steps, image.dtype)

    def _visible_crops(self, params: CropMixParams, rounded: bool) -> tuple[list[int], list[float]] | None:
        """``(box indices, weights)``, in fold order, of the Mixup crops that can show in an
        output ``rounded`` to uint8 (:func:`~ssl_cropmix.transforms.functional.visible_fold_weights`),
        when ``skip_invisible`` applies to ``params``; else ``None``: render every crop."""
        if not (rounded and self.skip_invisible and self.mixing == "mixup" and self.intermediate is None
                and self.view_transform is None and params.steps and all(s.kind == "mixup" for s in params.steps)):
            return None
        w = CF.visible_fold_weights(CF.mixup_fold_weights([s.lam for s in params.steps]))
        kept = [(i, wk) for i, wk in zip(params.order, w) if wk > 0]
        return [i for i, _ in kept], [wk for _, wk in kept]

    def _pil_path_channels(self, image: PIL.Image.Image, method: str, as_pil: bool) -> int:
        """Channels of an image that ``method`` (the PIL / NumPy paths) accepts, or raise."""
        c = _PIL_BACKEND_MODES.get(image.mode)
        if c is None:
            raise ValueError(f"{method} expects an image of mode {tuple(_PIL_BACKEND_MODES)}, got {image.mode!r}")
        if as_pil and self.output_dtype is not None:
            raise ValueError(f"as_pil=True needs output_dtype=None, got output_dtype={self.output_dtype!r}")
        return c

    def apply_pil(
        self, image: PIL.Image.Image, params: CropMixParams, as_pil: bool = False
    ) -> torch.Tensor | PIL.Image.Image:
        """The ``backend="pil"`` path: apply ``params`` to an RGB / L PIL image.

        Each crop is cut and resized by ``PIL.Image.crop(box).resize(size, resample)``.
        ``view_transform`` gets uint8 tensor crops (as in :meth:`apply`), or the PIL crops
        when ``keep_pil`` is set. When the views are PIL images of one mode and there is
        no ``intermediate``, they never become tensors:

        * Mixup is one weighted sum over the ``n`` views' bytes
          (:func:`~ssl_cropmix.transforms.functional.mixup_fold_weights`; with
          ``skip_invisible`` and a uint8 output only the visible crops are cut and resized,
          and a single visible crop is returned as is), equal to the tensor fold up to float
          rounding, computed in NumPy (a 32-px image is too small to amortise torch's per-op
          overhead);
        * CutMix pastes the box with ``PIL.Image.paste`` (exact pixels).

        Otherwise the tensor fold runs on the uint8 views.

        Args:
            image: RGB or L PIL image.
            params: from :meth:`sample_params`.
            as_pil: return a PIL image (needs ``output_dtype=None``).

        Shape:
            PIL ``(W, H)`` -> ``(C, *size)`` (uint8 or ``output_dtype``, as :meth:`apply`),
            or PIL ``(size[1], size[0])`` with ``as_pil``.
        """
        c = self._pil_path_channels(image, "apply_pil", as_pil)
        oh, ow = self.size
        resample = _PIL_RESAMPLE[self.interpolation]
        visible = self._visible_crops(params, self.output_dtype is None)
        # crop() first: resize(box=...) would let the filter read pixels outside the box
        views: list[Any] = [
            image.crop((b.left, b.top, b.left + b.width, b.top + b.height)).resize((ow, oh), resample)
            for b in (params.boxes[i] for i in (params.order if visible is None else visible[0]))
        ]
        if self.view_transform is not None:
            if self.keep_pil:
                views = [self.view_transform(v) for v in views]
            else:  # the tensor path's contract: uint8 tensor crops
                views = [self.view_transform(_as_tensor(v)) for v in views]
        pil_fold = (
            self.intermediate is None
            and self.mixing in ("mixup", "cutmix")
            and (
                self.view_transform is None  # the crops themselves: PIL, image.mode, (ow, oh)
                or all(isinstance(v, PIL.Image.Image) and v.mode == image.mode and v.size == (ow, oh) for v in views)
            )
        )
        if pil_fold and self.mixing == "mixup":
            n = len(views)
            if n == 1:  # one visible crop (uint8 output): weight 1 up to rounding, the crop itself
                return views[0] if as_pil else CF.pil_to_uint8(views[0]).contiguous()
            # float32 on both sides: a uint8 operand would send ``@`` to NumPy's generic
            # mixed-type loop instead of BLAS (about 2x slower at 32 px)
            x = np.ndarray((n, oh * ow * c), np.uint8, b"".join([v.tobytes() for v in views])).astype(np.float32)
            fold = CF.mixup_fold_weights([s.lam for s in params.steps]) if visible is None else visible[1]
            w = np.array(fold, dtype=np.float32)
            if self.output_dtype is not None:  # the unrounded fold, in [0, 1]
                y = (w * np.float32(1.0 / 255.0)) @ x
                return torch.from_numpy(y).view(oh, ow, c).permute(2, 0, 1).to(self.output_dtype).contiguous()
            # The weights are >= 0 and sum to 1, so w @ x lies in [0, 255] up to float
            # rounding: rounding alone (no clip) gives valid uint8.
            y = w @ x
            y = np.rint(y, out=y).astype(np.uint8)
            if as_pil:
                return PIL.Image.frombytes(image.mode, (ow, oh), y)
            return torch.from_numpy(y).view(oh, ow, c).permute(2, 0, 1).contiguous()
        if pil_fold:  # CutMix
            m = views[0]
            for step, v in zip(params.steps, views[1:]):
                base, donor = (m, v) if step.donor == "crop" else (v, m)
                top, left, bh, bw = step.box  # type: ignore[misc]
                if bh > 0 and bw > 0:
                    base = base.copy() if base.readonly else base  # views may share memory
                    base.paste(donor.crop((left, top, left + bw, top + bh)), (left, top))
                m = base
            return m if as_pil else self._finish(CF.pil_to_uint8(m).contiguous(), torch.uint8)
        out = self._fold([_as_tensor(v) for v in views], params.steps, torch.uint8)
        return CF.uint8_to_pil(out) if as_pil else out

    def apply_numpy(
        self, image: PIL.Image.Image, params: CropMixParams, as_pil: bool = False
    ) -> torch.Tensor | PIL.Image.Image:
        """The ``backend="numpy"`` path: generic Mixup of an RGB / L PIL image in two products.

        The pixels are read once; every crop's antialiased resize and its Mixup weight are
        folded into one horizontal and one vertical float32 matrix product
        (:func:`~ssl_cropmix.transforms.functional.mixup_resized_crops`) and the result is
        rounded once. At 32 px this replaces ``n`` PIL crops, resizes and byte copies, and
        costs a fixed number of NumPy calls whatever ``n`` is. Only the part of the image
        that the boxes cover is read when it is at most half of the image.

        Args:
            image: RGB or L PIL image.
            params: from :meth:`sample_params` (Mixup steps).
            as_pil: return a PIL image (needs ``output_dtype=None``).

        Shape:
            PIL ``(W, H)`` -> ``(C, *size)`` (uint8 or ``output_dtype``, as :meth:`apply`),
            or PIL ``(size[1], size[0])`` with ``as_pil``.
        """
        c = self._pil_path_channels(image, "apply_numpy", as_pil)
        if any(s.kind != "mixup" for s in params.steps):
            raise ValueError("apply_numpy mixes with Mixup only; params hold other mixing steps")
        bicubic = self.interpolation == InterpolationMode.BICUBIC
        # bicubic products may overshoot [0, 255] before the final clip: render every crop
        visible = self._visible_crops(params, self.output_dtype is None and not bicubic)
        order, w = (params.order, CF.mixup_fold_weights([s.lam for s in params.steps])) if visible is None else visible
        boxes = [params.boxes[i] for i in order]
        region, top, left = _covering_region(image, boxes)
        x = np.ndarray((region.height, region.width, c), np.uint8, region.tobytes())
        y = CF.mixup_resized_crops(
            x, [(b.top - top, b.left - left, b.height, b.width) for b in boxes], w, self.size, bicubic
        )
        oh, ow = self.size
        if self.output_dtype is not None:  # the unrounded fold, in [0, 1]
            y = y * np.float32(1.0 / 255.0)
            if bicubic:
                np.clip(y, 0.0, 1.0, out=y)
            return torch.from_numpy(y).permute(2, 0, 1).to(self.output_dtype).contiguous()
        if bicubic:  # bilinear weights are >= 0 and sum to 1: no overshoot
            y = np.clip(y, 0.0, 255.0)
        u8 = np.rint(y).astype(np.uint8, order="C")
        if as_pil:
            return PIL.Image.frombytes(image.mode, (ow, oh), u8)
        return torch.from_numpy(u8).permute(2, 0, 1).contiguous()

    def _fold(self, views: Sequence[torch.Tensor], steps: Sequence[MixStep], in_dtype: torch.dtype) -> torch.Tensor:
        """Fold the views in order, ``m <- mix(m, v)``, and convert as :meth:`_finish`.

        Mixup without ``intermediate`` is computed as the unrolled weighted sum
        (:func:`~ssl_cropmix.transforms.functional.mixup_fold_weights`): one pass per view
        instead of a float temporary per step, the same result up to float rounding.
        """
        if self.mixing == "mixup" and self.intermediate is None:
            return self._mixup_sum(views, CF.mixup_fold_weights([s.lam for s in steps]), in_dtype)
        m = views[0]
        for step, v in zip(steps, views[1:]):
            m = self._mix(m, v, step)
        return self._finish(m, in_dtype)

    def _mixup_sum(self, views: Sequence[torch.Tensor], w: Sequence[float], in_dtype: torch.dtype) -> torch.Tensor:
        """``sum_i w_i views_i`` (Mixup's unrolled fold), converted as :meth:`_finish`."""
        # all-uint8 in and out: sum on the [0, 255] scale and round once; otherwise uint8
        # views are read as x / 255 inside the multiply-adds
        u8 = in_dtype == torch.uint8 and self.output_dtype is None and all(v.dtype == torch.uint8 for v in views)
        if u8 and len(views) == 1:  # weight 1 (up to rounding): the view itself
            return views[0]
        dtype = next((v.dtype for v in views if v.is_floating_point()), torch.float32)
        scale = [1.0 if u8 or v.is_floating_point() else 1.0 / 255.0 for v in views]
        acc = torch.mul(views[0], w[0] * scale[0]).to(dtype)  # uint8 * float -> float32
        for wi, si, v in zip(w[1:], scale[1:], views[1:]):
            acc.add_(v, alpha=wi * si)
        # the weights are >= 0 and sum to 1: for uint8, rounding alone gives valid values
        return acc.round_().to(torch.uint8) if u8 else self._finish(acc, in_dtype)

    def _intermediate(self, x: torch.Tensor, step: MixStep) -> torch.Tensor:
        if self.intermediate is None:
            return x
        if self.intermediate == "channel_permute":
            return CF.channel_permute(x, step.perm)
        return self.intermediate(x)

    def _mix(self, m: torch.Tensor, v: torch.Tensor, step: MixStep) -> torch.Tensor:
        if step.donor == "mix":
            m = self._intermediate(m, step)
        else:
            v = self._intermediate(v, step)
        if step.kind == "mixup":
            return CF.mixup(m, v, step.lam)
        if m.dtype != v.dtype:  # e.g. a view_transform that returns float
            m, v = CF.to_unit_float(m), CF.to_unit_float(v)
        base, donor = (m, v) if step.donor == "crop" else (v, m)
        if step.kind == "cutmix":
            return CF.cutmix(base, donor, step.box)
        return CF.resize_paste(base, donor, step.box, self.interpolation, self.antialias)

    def _finish(self, out: torch.Tensor, in_dtype: torch.dtype) -> torch.Tensor:
        if in_dtype.is_floating_point:
            return out if out.dtype == in_dtype else CF.to_unit_float(out, in_dtype)
        if self.output_dtype is None:
            return CF.to_uint8(out)
        return CF.to_unit_float(out, self.output_dtype)


def contrastive_cropmix(
    size: int | Sequence[int] = 224,
    view_transform: Callable[[Any], Any] | None = None,
    **kwargs: Any,
) -> CropMix:
    """The paper's MoCo query view (Appendix A): CropMix in the contrastive setting.

    Two crops, from ``(0.2, 0.6)`` and ``(0.6, 1.0)`` (``crop_scale=(0.2, 1.0)`` split in
    two), each augmented by ``view_transform`` (the MoCo v2 colour augmentation), then
    CutMix pasting the large-scale crop into the small-scale one. Differences from the
    generic form: ``n`` is fixed to 2, crops are not shuffled (``shuffle=False``) and the
    paste direction is fixed (``paste="into_mix"``: the second, larger-scale crop is the
    donor), and every crop gets the full view augmentation before mixing.

    Args:
        size: output size.
        view_transform: per-crop augmentation (e.g. ``moco_v2_augmentation`` without
            the final crop / normalisation).
        **kwargs: any other :class:`CropMix` argument, overriding the preset.
    """
    preset: dict[str, Any] = dict(
        crop_scale=(0.2, 1.0),
        num_crops=2,
        mixing="cutmix",
        shuffle=False,
        paste="into_mix",
    )
    preset.update(kwargs)
    return CropMix(size=size, view_transform=view_transform, **preset)
