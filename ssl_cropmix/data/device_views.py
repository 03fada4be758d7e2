"""Device-side views: MoCo / CropMix / MAE augmentation batched on the training device.

With ``CropMixDataModule(augment_on="device")`` the loader workers only read and decode:
each image becomes a uint8 ``(3, h, w)`` tensor (downscaled, aspect kept, only when its
longer side exceeds ``max_size``), and :func:`pad_collate` zero-pads a batch to its largest
``(H, W)`` and keeps every image's true size (:class:`RawImages`). Images of any size
therefore share a batch, and no view is resized or squashed before its crops are drawn.
Everything else runs batched in the DataModule's ``on_after_batch_transfer``
(:class:`DeviceViews`), on CPU tensors or CUDA alike.

Sampling is split from applying (STYLE principles 1 and 13):

* :meth:`DeviceViews.sample` draws every random number on the CPU from one
  ``torch.Generator`` with tensor operations over the whole batch (no loop over samples):
  the crop boxes with :func:`~ssl_cropmix.transforms.functional.sample_crop_boxes`
  (torchvision's RRC tries, vectorised), CropMix / ScaleMix / contrastive-preset parameters
  with the worker recipe's own ``CropMix`` objects
  (:meth:`~ssl_cropmix.transforms.CropMix.sample_batch`, the batched form of
  ``sample_params``: scale ranges, Beta weights, CutMix boxes, fold order), and the colour
  parameters with the ranges and probabilities read off the worker recipe's torchvision
  transforms (:func:`colour_spec`). Both paths draw from the same distributions (KS tests).
  It then packs everything :meth:`~DeviceViews.apply` reads into one (pinned) buffer with
  the host integers of the plan (:meth:`DeviceViews.pack`).
* :meth:`DeviceViews.apply` is deterministic given the parameters and device-only: one
  ``non_blocking`` copy of the buffer, no value read back. All crops of a batch are resized
  by two batched matrix products with torch's own antialiasing filter (banded weights,
  :func:`crop_resize_weights`; equal to torchvision's float antialiased ``resized_crop``),
  flips folded into the matrices, Mixup a product over the crops, CutMix a per-sample box
  mask, colour jitter on the jittered rows gathered once into a contiguous buffer sorted by
  the position of their hue op (every (position, op) group a slice of it; brightness /
  contrast / saturation one in-place blend, hue in a fixed few ops), grayscale a batched
  product, blur a grouped separable convolution with host-computed taps, and normalisation
  one multiply-add (the generic CropMix query: key and mixed query in one colour pass).
  On CUDA (``colour_kernel="auto"``, checked once against those eager ops) jitter,
  grayscale and blur run instead as the fused Triton kernels of
  :mod:`ssl_cropmix.data.colour_kernel` (one read and one write per image for the colour,
  two 1-D passes for the blur). :class:`DeviceOpCounter` costs it (kernels, bytes, copies, syncs) on the ``meta`` device.

Choice of the crop + resize kernel (measured, see ``docs/data.md``): ``"matrix"`` (the
default off CPU, exact antialiasing), ``"roi_align"`` (``torchvision.ops.roi_align`` with
adaptive sampling: one call, an average of bilinear samples per output pixel, close to but
not torchvision's filter) and ``"interpolate"`` (one antialiased resize per crop; ``"auto"``
picks it for uint8 on CPU at >= 128 px).

The parameters are drawn by :meth:`DeviceViews.sample` before the batch goes to the device
(``CropMixDataModule.on_before_batch_transfer``), so reading image sizes never waits for the
GPU.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import PIL.Image
import torch
import torch.nn.functional as TF
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from ssl_cropmix.data.colour_kernel import blur_cost, colour_cost, fused_plan, triton_available
from ssl_cropmix.transforms import functional as CF
from ssl_cropmix.transforms.cropmix import CropMix
from ssl_cropmix.validation import check_bool

RESIZE_METHODS = ("auto", "matrix", "roi_align", "interpolate")
COLOUR_KERNELS = ("auto", "eager", "fused")
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


# --------------------------------------------------------------------------- worker side
class RawImages(NamedTuple):
    """A training batch as the workers hand it over (``augment_on="device"``).

    Attributes:
        images: ``(B, 3, H, W)`` uint8, image ``b`` in ``images[b, :, :h_b, :w_b]``, zeros
            elsewhere (``H, W``: the largest sizes in the batch).
        sizes: ``(B, 2)`` int64, the true ``(h_b, w_b)``.
        labels: ``(B,)`` int64.
    """

    images: torch.Tensor
    sizes: torch.Tensor
    labels: torch.Tensor


class DecodeToUint8:
    """Worker transform of the device path: PIL RGB image -> uint8 ``(3, h, w)`` tensor.

    Images whose longer side exceeds ``max_size`` are downscaled (PIL antialiased bilinear,
    aspect ratio kept) so that a padded batch stays bounded; smaller ones keep their pixels.

    Args:
        max_size: longest side kept, or ``None`` (never resize).

    Shape:
        PIL ``(w, h)`` -> ``(3, h', w')`` uint8 with ``max(h', w') <= max_size``.
    """

    def __init__(self, max_size: int | None = None) -> None:
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1):
            raise ValueError(f"max_size must be a positive int or None, got {max_size!r}")
        self.max_size = max_size

    def __call__(self, image: PIL.Image.Image) -> torch.Tensor:
        if not isinstance(image, PIL.Image.Image):
            raise TypeError(f"DecodeToUint8 expects a PIL image, got {type(image).__name__}")
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        m = self.max_size
        if m is not None and max(h, w) > m:
            s = m / max(h, w)
            image = image.resize((max(1, round(w * s)), max(1, round(h * s))), PIL.Image.Resampling.BILINEAR)
        return CF.pil_to_uint8(image).contiguous()

    def __repr__(self) -> str:
        return f"DecodeToUint8(max_size={self.max_size})"


def pad_collate(samples: Sequence[tuple[torch.Tensor, int]]) -> RawImages:
    """Collate ``(uint8 (3, h, w), label)`` samples of any sizes into :class:`RawImages`,
    zero-padding to the batch's largest height and width (bottom / right)."""
    if not samples:
        raise ValueError("pad_collate needs at least one sample, got none")
    hs = [int(x.shape[-2]) for x, _ in samples]
    ws = [int(x.shape[-1]) for x, _ in samples]
    out = torch.zeros((len(samples), 3, max(hs), max(ws)), dtype=torch.uint8)
    for b, (x, _) in enumerate(samples):
        out[b, :, : hs[b], : ws[b]] = x
    sizes = torch.tensor(list(zip(hs, ws)), dtype=torch.int64)
    labels = torch.tensor([int(y) for _, y in samples], dtype=torch.int64)
    return RawImages(out, sizes, labels)


# --------------------------------------------------------------------------- distributions
class ColourSpec(NamedTuple):
    """The MoCo v2 colour distribution as read off a worker recipe (:func:`colour_spec`)."""

    p_flip: float
    p_jitter: float
    brightness: tuple[float, float]
    contrast: tuple[float, float]
    saturation: tuple[float, float]
    hue: tuple[float, float]
    p_gray: float
    p_blur: float
    sigma: tuple[float, float]


def colour_spec(recipe: Any) -> ColourSpec:
    """Read flip / jitter / grayscale / blur settings off a worker transform (a
    ``v2.Compose`` from :mod:`ssl_cropmix.data.views`), so the device path draws from the
    same distributions. Ops that the recipe lacks get probability 0 (e.g. no blur for
    small images)."""
    from ssl_cropmix.data.views import RandomGaussianBlurPIL

    found: dict[str, Any] = {}

    def walk(t: Any, p_outer: float = 1.0) -> None:
        if isinstance(t, v2.Compose):
            for s in t.transforms:
                walk(s, p_outer)
        elif isinstance(t, v2.RandomApply):
            for s in t.transforms:
                walk(s, p_outer * float(t.p))
        elif isinstance(t, CropMix) and t.view_transform is not None:
            walk(t.view_transform, p_outer)
        elif isinstance(t, v2.ColorJitter):
            found["jitter"] = (p_outer, t)
        elif isinstance(t, v2.RandomGrayscale):
            found["gray"] = float(t.p)
        elif isinstance(t, v2.RandomHorizontalFlip):
            found["flip"] = float(t.p)
        elif isinstance(t, RandomGaussianBlurPIL):
            found["blur"] = (t.p, t.sigma)

    walk(recipe)
    p_j, cj = found.get("jitter", (0.0, None))
    ident = (1.0, 1.0)

    def rng(x: Any, default: tuple[float, float]) -> tuple[float, float]:
        return default if x is None else (float(x[0]), float(x[1]))

    p_blur, sigma = found.get("blur", (0.0, (0.1, 2.0)))
    return ColourSpec(
        p_flip=found.get("flip", 0.0),
        p_jitter=p_j,
        brightness=rng(getattr(cj, "brightness", None), ident),
        contrast=rng(getattr(cj, "contrast", None), ident),
        saturation=rng(getattr(cj, "saturation", None), ident),
        hue=rng(getattr(cj, "hue", None), (0.0, 0.0)),
        p_gray=found.get("gray", 0.0),
        p_blur=float(p_blur),
        sigma=(float(sigma[0]), float(sigma[1])),
    )


class ColourParams(NamedTuple):
    """Per-view colour parameters (CPU tensors, one row per view).

    Attributes:
        flip, jitter, gray, blur: ``(N,)`` bool, whether each op is applied.
        factors: ``(N, 4)`` float, brightness, contrast, saturation, hue factors
            (``v2.ColorJitter``'s ``U(range)`` draws).
        order: ``(N, 4)`` int64, each row a uniform permutation of the four ops (op ``order[i, k]``
            runs at position ``k``; 0 brightness, 1 contrast, 2 saturation, 3 hue), as
            ``v2.ColorJitter``'s ``randperm(4)``.
        sigma: ``(N,)`` float, blur standard deviation ``U(sigma)``.
    """

    flip: torch.Tensor
    jitter: torch.Tensor
    gray: torch.Tensor
    blur: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    sigma: torch.Tensor


def sample_colour_params(n: int, spec: ColourSpec, generator: torch.Generator | None = None) -> ColourParams:
    """Draw :class:`ColourParams` for ``n`` views, each independent, from torch's RNG.

    The same distributions as the worker recipe's ``RandomHorizontalFlip``,
    ``RandomApply([ColorJitter], p)``, ``RandomGrayscale`` and ``RandomGaussianBlurPIL``.
    """
    u = torch.rand((n, 9), generator=generator, dtype=torch.float64)
    lo = torch.tensor([spec.brightness[0], spec.contrast[0], spec.saturation[0], spec.hue[0]], dtype=torch.float64)
    hi = torch.tensor([spec.brightness[1], spec.contrast[1], spec.saturation[1], spec.hue[1]], dtype=torch.float64)
    factors = (lo + (hi - lo) * u[:, 4:8]).float()
    order = torch.rand((n, 4), generator=generator).argsort(dim=1)
    s0, s1 = spec.sigma
    return ColourParams(
        flip=u[:, 0] < spec.p_flip,
        jitter=u[:, 1] < spec.p_jitter,
        gray=u[:, 2] < spec.p_gray,
        blur=u[:, 3] < spec.p_blur,
        factors=factors,
        order=order,
        sigma=(s0 + (s1 - s0) * u[:, 8]).float(),
    )


class CropSlots(NamedTuple):
    """Per-sample crops of one view, in fold order, padded to ``c`` slots (CPU tensors).

    Attributes:
        boxes: ``(B, c, 4)`` int64 ``(top, left, h, w)`` in source pixels; unused slots
            hold a valid dummy box.
        valid: ``(B, c)`` bool, which slots are real crops (``n_b`` of them).
        scale_index: ``(B, c)`` int64, the scale range each crop was drawn from (its index
            in ``CropMixParams.boxes``; ScaleMix's crops share one range), -1 unused.
        target_scale: ``(B, c)`` float64, the sampled area fraction (nan: fallback / unused).
        weights: ``(B, c)`` float64, Mixup fold weights (:func:`~ssl_cropmix.transforms.functional.mixup_fold_weights`),
            ``1`` for a single crop, ``0`` for unused slots; ``None`` for CutMix.
        paste_boxes: ``(B, c - 1, 4)`` int64 CutMix boxes in output pixels (step ``k`` mixes
            slot ``k + 1`` into the running mix); ``None`` for Mixup / one crop.
        paste_from_mix: ``(B, c - 1)`` bool, the running mix is the donor (``donor="mix"``).
    """

    boxes: torch.Tensor
    valid: torch.Tensor
    scale_index: torch.Tensor
    target_scale: torch.Tensor
    weights: torch.Tensor | None
    paste_boxes: torch.Tensor | None
    paste_from_mix: torch.Tensor | None


def sample_rrc_slots(
    sizes: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> CropSlots:
    """One RandomResizedCrop box per image, all drawn at once by
    :func:`~ssl_cropmix.transforms.functional.sample_crop_boxes` (torchvision's algorithm,
    batched: no loop over images).

    Args:
        sizes: ``(B, 2)`` true image sizes.
        scale, ratio: as ``v2.RandomResizedCrop``.
    """
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    boxes, target, _ = CF.sample_crop_boxes(sizes[:, 0], sizes[:, 1], scale[0], scale[1], log_ratio, generator)
    b = int(sizes.shape[0])
    return CropSlots(
        boxes=boxes.view(b, 1, 4),
        valid=torch.ones((b, 1), dtype=torch.bool),
        scale_index=torch.zeros((b, 1), dtype=torch.int64),
        target_scale=target.view(b, 1),
        weights=torch.ones((b, 1), dtype=torch.float64),
        paste_boxes=None,
        paste_from_mix=None,
    )


def sample_cropmix_slots(
    cropmix: CropMix, sizes: torch.Tensor, generator: torch.Generator | None = None
) -> CropSlots:
    """CropMix parameters of a batch drawn by ``cropmix.sample_batch`` (the batched form of
    the worker path's ``sample_params``: scale ranges, boxes, fold order, Beta / CutMix
    steps), laid out as slots in fold order.

    Supports ``mixing="mixup"`` and ``"cutmix"`` without ``intermediate``.
    """
    if cropmix.mixing not in ("mixup", "cutmix") or cropmix.intermediate is not None:
        raise ValueError(
            "the device path mixes with Mixup or CutMix and no intermediate op; got "
            f"mixing={cropmix.mixing!r}, intermediate={cropmix.intermediate!r}"
        )
    p = cropmix.sample_batch(sizes, generator)
    boxes = p.boxes.gather(1, p.order[..., None].expand_as(p.boxes))  # fold order
    index = torch.where(p.valid, p.order, -1)  # crop j of the ranges is from range j
    target = p.target_scale.gather(1, p.order)
    mixup = cropmix.mixing == "mixup"
    return CropSlots(
        boxes=boxes,
        valid=p.valid,
        scale_index=index,
        target_scale=target,
        weights=CF.mixup_fold_weights_batch(p.lam) if mixup else None,
        paste_boxes=p.paste_boxes,
        paste_from_mix=p.donor_mix,
    )


# --------------------------------------------------------------------------- applying: resize
def _filter(x: torch.Tensor, bicubic: bool) -> torch.Tensor:
    x = x.abs()
    if not bicubic:
        return (1.0 - x).clamp_(min=0.0)
    a = -0.5  # torch's antialiased bicubic
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def filter_taps(max_length: int, out_size: int, bicubic: bool = False) -> int:
    """Width of the widest filter window of a 1-D antialiased resize of segments of at most
    ``max_length`` pixels to ``out_size`` (the band of :func:`crop_resize_weights`): a host
    integer, computed from the CPU boxes before the transfer."""
    half = 2.0 if bicubic else 1.0
    return int(math.ceil(2.0 * half * max(1.0, max_length / out_size))) + 1


def resize_rows(
    start: torch.Tensor,
    length: torch.Tensor,
    out_size: int,
    bicubic: bool = False,
    flip: torch.Tensor | None = None,
    scale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Per-segment constants of :func:`banded_weights` (a few numbers per crop, cheap on the
    CPU before the transfer): output ``i`` has centre ``a + b (i + 0.5)`` (``a = 0``,
    ``b = length / out_size``; mirrored for ``flip``: ``a = length``, ``b = -length / out_size``)
    and support ``s = b' max(1, b')`` (``b' = |b|``, ``s`` scaled by 2 for bicubic).

    Shape:
        ``(K,) -> (K, 9)`` float32: ``a, b, s - 0.5, s + 0.5, length, 1 / max(1, |b|), scale,
        length - 1, start``.
    """
    length_f = length.to(torch.float32)
    ratio = length_f / out_size
    up = ratio.clamp(min=1.0)
    support = up * (2.0 if bicubic else 1.0)
    f = torch.zeros_like(ratio) if flip is None else flip.to(torch.float32)
    scale_t = torch.as_tensor(scale, dtype=torch.float32, device=ratio.device).expand_as(ratio)
    return torch.stack([
        f * length_f, ratio * (1.0 - 2.0 * f), support - 0.5, support + 0.5, length_f, up.reciprocal(),
        scale_t, length_f - 1.0, start.to(torch.float32),
    ], 1)


def banded_weights(rows: torch.Tensor, out_size: int, full: int, taps: int, bicubic: bool = False) -> torch.Tensor:
    """Dense resize matrices from :func:`resize_rows`, computed only over each output
    pixel's filter window (``taps`` columns) in float32 and scattered into place.

    Shape:
        ``(K, 9) -> (K, out_size, full)`` float32.
    """
    r = rows[:, :, None, None].unbind(1)  # each (K, 1, 1)
    a, b, s_lo, s_hi, length, inv, scale, last, start = r
    i = torch.arange(0.5, out_size, device=rows.device, dtype=torch.float32).view(1, out_size, 1)
    center = torch.addcmul(a, b, i)  # (K, O, 1)
    xmin = torch.floor(center - s_lo).clamp_(min=0.0)
    xmax = torch.minimum(torch.floor(center + s_hi), length)
    j = xmin + torch.arange(taps, device=rows.device, dtype=torch.float32)  # (K, O, T)
    w = _filter((j - center + 0.5) * inv, bicubic) * (j < xmax)
    w = w / (w.sum(-1, keepdim=True) / scale)
    cols = (torch.minimum(j, last) + start).to(torch.int64)
    dense = torch.zeros((rows.shape[0], out_size, full), device=rows.device, dtype=torch.float32)
    return dense.scatter_add_(2, cols, w)


def crop_resize_weights(
    start: torch.Tensor,
    length: torch.Tensor,
    out_size: int,
    full: int,
    bicubic: bool = False,
    taps: int | None = None,
    flip: torch.Tensor | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """Matrices of the 1-D antialiased resize of segments ``[start, start + length)`` of an
    axis of ``full`` pixels to ``out_size`` pixels, zero outside the segment.

    torch's own filter (``interpolate(..., antialias=True, align_corners=False)``, the
    PIL-style kernel): output ``i`` has centre ``scale * (i + 0.5)``, support
    ``scale * s`` (``s`` 1 bilinear, 2 bicubic; ``s`` when upsampling), triangle / cubic
    (``a = -0.5``) weights over the window torch uses, normalised to sum 1. So
    ``W_h @ X @ W_w.T`` is torchvision's float ``resize_crop`` up to float rounding (tested).

    Banded: the weights are computed in float32 only over each output pixel's filter window
    (``taps`` columns, :func:`filter_taps`), then scattered into the dense matrix
    (:func:`resize_rows`, :func:`banded_weights`), so no ``(K, out_size, full)``
    intermediate is built but the result.

    Args:
        start, length: ``(K,)`` segment starts and lengths (``length >= 1``; int or float).
        out_size: output length.
        full: axis length of the (padded) source.
        bicubic: cubic instead of triangle filter.
        taps: window width, a host int (default: :func:`filter_taps` of ``length.max()``,
            which reads ``length`` on the host).
        flip: optional ``(K,)`` bool / 0-1, reverse the output pixels of that segment
            (a horizontal flip folded into the matrix).
        scale: multiplies every weight (e.g. ``1 / 255`` for uint8 sources).

    Shape:
        ``(K,) -> (K, out_size, full)`` float32, on ``start``'s device.
    """
    if taps is None:
        taps = filter_taps(int(length.max()), out_size, bicubic)
    return banded_weights(resize_rows(start, length, out_size, bicubic, flip, scale), out_size, full, taps, bicubic)


def crop_rows(
    boxes: torch.Tensor, size: tuple[int, int], bicubic: bool, flip: torch.Tensor | None = None, u8: bool = True
) -> torch.Tensor:
    """:func:`resize_rows` of every box: the ``K = B * c`` vertical rows (scaled by ``1 / 255``
    for uint8 sources), then the ``K`` horizontal rows (mirrored where ``flip``).

    Shape:
        ``(B, c, 4)`` -> ``(2 K, 9)`` float32.
    """
    flat = boxes.reshape(-1, 4)
    v = resize_rows(flat[:, 0], flat[:, 2], size[0], bicubic, scale=1.0 / 255.0 if u8 else 1.0)
    h = resize_rows(flat[:, 1], flat[:, 3], size[1], bicubic, flip=flip)
    return torch.cat([v, h])


def _matrix_crops(
    images: torch.Tensor,
    rows: torch.Tensor,
    size: tuple[int, int],
    bicubic: bool,
    taps: tuple[int, int],
) -> torch.Tensor:
    """Every box of every image resized by two batched matrix products (banded weights).

    The source is read once, as ``(B, H, C * W)``, the vertical product gives
    ``(B, c * oh, C * W)`` and the horizontal one ``(B * c, oh * C, ow)``: no broadcast
    copies of the source or of the matrices.

    Args:
        images: ``(B, C, H, W)`` uint8 or float (the rows' scale reads uint8 as ``x / 255``).
        rows: ``(2 K, 9)`` from :func:`crop_rows`, on ``images``' device, ``K = B * c``.
        taps: ``(vertical, horizontal)`` window widths (:func:`filter_taps`), host ints.

    Returns:
        ``(B * c, C, oh, ow)`` float32, a view of ``(B * c, oh, C, ow)`` storage.
    """
    b, ch, hh, ww = images.shape
    k = rows.shape[0] // 2
    c = k // b
    oh, ow = size
    if oh == ow:  # one set of banded weights for both axes
        w = banded_weights(rows, oh, max(hh, ww), max(taps), bicubic)
        wv, wh = w[:k, :, :hh], w[k:, :, :ww]
    else:
        wv = banded_weights(rows[:k], oh, hh, taps[0], bicubic)
        wh = banded_weights(rows[k:], ow, ww, taps[1], bicubic)
    xp = torch.empty((b, hh, ch, ww), device=images.device, dtype=torch.float32)
    xp.copy_(images.permute(0, 2, 1, 3))  # one pass: layout and dtype
    y = torch.bmm(wv.reshape(b, c * oh, hh), xp.view(b, hh, ch * ww))  # (B, c*oh, C*W)
    y = torch.bmm(y.view(b * c, oh * ch, ww), wh.transpose(1, 2))  # (B*c, oh*C, ow)
    return y.view(b * c, oh, ch, ow).permute(0, 2, 1, 3)


def resized_crops(
    images: torch.Tensor,
    boxes: torch.Tensor,
    size: tuple[int, int],
    method: str = "matrix",
    bicubic: bool = False,
    weights: torch.Tensor | None = None,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cut and resize ``c`` boxes of every image in one batched computation.

    Args:
        images: ``(B, C, H, W)`` float (taken as is) or uint8 (read as ``x / 255``).
        boxes: ``(B, c, 4)`` int64 ``(top, left, h, w)``, on ``images``' device.
        size: ``(oh, ow)``.
        method: ``"matrix"`` (exact antialiasing, two batched products with banded weights,
            :func:`crop_resize_weights`), ``"roi_align"``
            (``torchvision.ops.roi_align``, adaptive sampling), ``"interpolate"`` (one
            antialiased resize per crop; uint8 on CPU: the worker path's own native uint8
            kernel, :func:`~ssl_cropmix.transforms.functional.resized_crop`, rounded to uint8)
            or ``"auto"``: ``"interpolate"`` for uint8 on CPU at >= 128 px, ``"matrix"``
            elsewhere (measured, see ``docs/data.md``). ``"interpolate"`` reads the boxes on
            the host.
        bicubic: bicubic filter (``"matrix"`` and ``"interpolate"`` only).
        weights: optional ``(B, c)`` Mixup weights: return the weighted sum over the crops.
        flip: optional ``(B, c)`` bool, mirror those crops left-right (``"matrix"``: folded
            into the weights; ``"interpolate"`` on uint8 CPU: each flipped uint8 crop, read
            on the host).

    Shape:
        ``(B, C, H, W), (B, c, 4) -> (B, c, C, oh, ow)``, or ``(B, C, oh, ow)`` with ``weights``.
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"method must be one of {RESIZE_METHODS}, got {method!r}")
    if method == "auto":  # measured (docs/data.md): per-call overhead dominates small crops on CPU
        method = "interpolate" if images.device.type == "cpu" and min(size) >= 128 else "matrix"
    u8 = images.dtype == torch.uint8
    b, ch, hh, ww = images.shape
    c = boxes.shape[1]
    oh, ow = size
    flat = boxes.reshape(b * c, 4)
    if method == "matrix":
        # the band read on the host here; DeviceViews.apply passes it from the CPU parameters
        taps = (filter_taps(int(flat[:, 2].max()), oh, bicubic), filter_taps(int(flat[:, 3].max()), ow, bicubic))
        rows = crop_rows(boxes, size, bicubic, None if flip is None else flip.reshape(-1), u8=u8)
        out = _matrix_crops(images if u8 else images.float(), rows, size, bicubic, taps).unflatten(0, (b, c))
    elif method == "interpolate" and u8 and images.device.type == "cpu":
        interp = InterpolationMode.BICUBIC if bicubic else InterpolationMode.BILINEAR
        rows = flat.tolist()
        flips = [False] * (b * c) if flip is None else flip.reshape(-1).tolist()
        out = torch.stack([
            (lambda y, f: y.flip(-1) if f else y)(CF.resized_crop(images[k // c], tuple(r), size, interp), flips[k])
            for k, r in enumerate(rows)
        ])
        out = out.view(b, c, ch, oh, ow).to(torch.float32).mul_(1.0 / 255.0)
        flip = None  # done
    elif method == "roi_align":
        from torchvision.ops import roi_align

        x = images.to(torch.float32) if u8 else images
        idx = torch.arange(b, device=x.device).repeat_interleave(c).to(x.dtype)
        f = flat.to(x.dtype)
        rois = torch.stack([idx, f[:, 1], f[:, 0], f[:, 1] + f[:, 3], f[:, 0] + f[:, 2]], dim=1)
        out = roi_align(x, rois, (oh, ow), spatial_scale=1.0, sampling_ratio=-1, aligned=True).view(b, c, ch, oh, ow)
        if u8:
            out = out * (1.0 / 255.0)
    else:
        x = images.to(torch.float32) if u8 else images
        mode = "bicubic" if bicubic else "bilinear"
        rows = flat.tolist()
        crops = [
            TF.interpolate(
                x[k // c : k // c + 1, :, t : t + h, l : l + w], size=(oh, ow), mode=mode,
                align_corners=False, antialias=True,
            )
            for k, (t, l, h, w) in enumerate(rows)
        ]
        out = torch.cat(crops).view(b, c, ch, oh, ow)
        if u8:
            out = out * (1.0 / 255.0)
    if flip is not None and method != "matrix":
        out = torch.where(flip.view(b, c, 1, 1, 1), out.flip(-1), out)
    if weights is not None:
        return (out * weights.to(out.dtype)[:, :, None, None, None]).sum(1)
    return out


# --------------------------------------------------------------------------- applying: mixing
def box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Boolean masks of ``(top, left, h, w)`` boxes.

    Shape:
        ``(..., 4) -> (..., 1, oh, ow)`` bool
    """
    oh, ow = size
    ys = torch.arange(oh, device=boxes.device)
    xs = torch.arange(ow, device=boxes.device)
    t, l, h, w = (boxes[..., k, None] for k in range(4))
    my = (ys >= t) & (ys < t + h)  # (..., oh)
    mx = (xs >= l) & (xs < l + w)  # (..., ow)
    return (my[..., :, None] & mx[..., None, :]).unsqueeze(-3)


def cutmix_fold(views: torch.Tensor, paste_boxes: torch.Tensor, from_mix: torch.Tensor) -> torch.Tensor:
    """CropMix's CutMix fold ``m <- cutmix(m, v_k)`` per sample: the box of the running mix
    is replaced by the next view's (``donor="crop"``) or the next view keeps all but the box,
    which comes from the mix (``donor="mix"``). Steps with an empty box leave ``m`` unchanged.

    Shape:
        views ``(B, c, C, h, w)``, paste_boxes ``(B, c - 1, 4)``, from_mix ``(B, c - 1)`` -> ``(B, C, h, w)``
    """
    m = views[:, 0]
    masks = box_masks(paste_boxes, tuple(views.shape[-2:]))  # (B, c-1, 1, h, w)
    for k in range(views.shape[1] - 1):
        take_v = masks[:, k] ^ from_mix[:, k, None, None, None]
        m = torch.where(take_v, views[:, k + 1], m)
    return m


# --------------------------------------------------------------------------- applying: colour
def _gray(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Luma of ``(N, 3, H, W)`` with torchvision's weights ``weight`` ``(1, 3, 1, 1)``: one
    batched ``(1, 3) @ (3, H * W)`` product per image, which reads ``x`` once (a 1x1
    ``conv2d`` costs the same bytes on a GPU but is ~30x slower on CPU: measured, 230 vs 7 ms
    for 60 images at 224 px). Shape: ``(N, 3, H, W) -> (N, 1, H, W)``."""
    n, c, h, w = x.shape
    return torch.matmul(weight.view(1, c), x.reshape(n, c, h * w)).view(n, 1, h, w)


def _hue_shift(
    x: torch.Tensor, base: torch.Tensor, diff: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """torchvision's ``adjust_hue`` (RGB -> HSV, ``h <- (h + shift) mod 1``, -> RGB) with one
    shift per image, in a fixed small number of whole-tensor operations.

    HSV keeps ``v = max`` and ``c = max - min``; the hue on the ``[0, 6)`` scale is
    ``(x_{i+1} - x_{i+2}) / c + 2 i`` for the (first) largest channel ``i`` (torchvision's
    r, g, b priority), and channel ``n`` of the result is
    ``v - c clamp(min(k, 4 - k), 0, 1)`` with ``k = (6 h + 6 shift + n) mod 6``,
    ``n = 5, 3, 1``: torchvision's sector table without its ``(N, 3, 6, H, W)`` temporary.
    Gray pixels (``c = 0``) keep their value.

    Args:
        x: ``(N, 3, H, W)`` in ``[0, 1]`` (any strides).
        base: ``(N, 3, 1, 1)``, ``6 shift + (5, 3, 1)`` (:func:`hue_base`).
        diff: ``(3, 3)`` :data:`HUE_DIFF` (on ``x``'s device): row ``n`` takes
            ``x_{n+1} - x_{n+2}``, so the hue numerator of every channel is one batched
            product, of which the largest channel's is gathered.
        out: optional ``(N, 3, H, W)`` result tensor; may be ``x`` itself (only the last
            operation writes, after every read of ``x``).

    Shape: ``(N, 3, H, W) -> (N, 3, H, W)``.
    """
    maxc, imax = x.max(dim=-3, keepdim=True)  # first maximum: torchvision's priority
    cr = maxc - x.amin(dim=-3, keepdim=True)
    n, c, h, w = x.shape
    d = torch.matmul(diff, x.reshape(n, c, h * w)).view(n, c, h, w)  # exact: weights 0, +-1
    h6 = d.gather(-3, imax)  # x_{i+1} - x_{i+2} of the largest channel i
    # a chroma below 1e-12 changes the output by less than that, whatever the hue
    h6.div_(cr.clamp(min=1e-12)).add_(imax, alpha=2)  # in [-1, 5)
    k = torch.add(h6, base).remainder_(6.0)
    t = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    if out is None:
        return torch.addcmul(maxc, cr, t, value=-1.0)  # in [min, max]: no clamp needed
    return torch.addcmul(maxc, cr, t, value=-1.0, out=out)


#: The hue numerators of :func:`_hue_shift`: row ``n`` of ``HUE_DIFF @ rgb`` is ``x_{n+1} - x_{n+2}``.
HUE_DIFF = torch.tensor([[0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, -1.0, 0.0]])


def hue_base(shift: torch.Tensor) -> torch.Tensor:
    """``6 shift + (5, 3, 1)`` per image, the host constants of :func:`_hue_shift`. Shape: ``(N,) -> (N, 3)``."""
    return torch.addcmul(_HUE_N, shift.to(torch.float32)[:, None], _SIX)


_HUE_N = torch.tensor([5.0, 3.0, 1.0])
_SIX = torch.tensor(6.0)


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian taps ``-radius .. radius``, one row per ``sigma`` (host
    constants of :func:`_gaussian_blur`). Shape: ``(N,) -> (N, 2 radius + 1)`` float32."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t[None, :] / sigma.to(torch.float32)[:, None]) ** 2)
    return k / k.sum(1, keepdim=True)


def blur_radius(max_sigma: float, size: tuple[int, int]) -> int:
    """``ceil(3 max_sigma)``, at most ``size - 1`` (reflect padding)."""
    return min(int(math.ceil(3.0 * max_sigma)), size[0] - 1, size[1] - 1)


def _gaussian_blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one kernel per image (reflect padding), two grouped
    convolutions. Shape: ``(N, C, H, W), (N, 2r+1) -> (N, C, H, W)``."""
    n, c, h, w = x.shape
    taps = kernels.shape[1]
    r = taps // 2
    k = kernels.repeat_interleave(c, dim=0) if c > 1 else kernels
    y = TF.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
    y = TF.conv2d(y, k.view(n * c, 1, taps, 1), groups=n * c)
    y = TF.conv2d(y, k.view(n * c, 1, 1, taps), groups=n * c)
    return y.view(n, c, h, w)


class _Packer:
    """Lays CPU tensors out in one byte buffer (int64 part, then float32 part), pinned when
    CUDA is available, and keeps the layout as host integers (no device reads to unpack)."""

    def __init__(self) -> None:
        self.ints: list[torch.Tensor] = []
        self.floats: list[torch.Tensor] = []
        self.layout: dict[str, tuple[bool, int, tuple[int, ...]]] = {}
        self.ni = self.nf = 0
        self.host: dict[str, Any] = {}  # host-side integers of the plan (counts, taps)

    def int(self, name: str, t: torch.Tensor) -> None:
        self.layout[name] = (True, self.ni, tuple(t.shape))
        self.ints.append(t.reshape(-1).to(torch.int64))
        self.ni += t.numel()

    def float(self, name: str, t: torch.Tensor) -> None:
        self.layout[name] = (False, self.nf, tuple(t.shape))
        self.floats.append(t.reshape(-1).to(torch.float32))
        self.nf += t.numel()

    def finish(self) -> PackedParams:
        nbytes = 8 * self.ni + 4 * self.nf
        buf = torch.empty(max(nbytes, 8), dtype=torch.uint8, pin_memory=torch.cuda.is_available())
        if self.ni:
            torch.cat(self.ints, out=buf[: 8 * self.ni].view(torch.int64))
        if self.nf:
            torch.cat(self.floats, out=buf[8 * self.ni : nbytes].view(torch.float32))
        return PackedParams(buf, self.ni, self.layout, self.host)


class PackedParams(NamedTuple):
    """Every number :meth:`DeviceViews.apply` reads, in one CPU buffer sent with a single
    ``non_blocking`` copy (pinned when CUDA is available).

    Attributes:
        buffer: ``(bytes,)`` uint8: ``n_int`` int64 values, then float32 values.
        n_int: number of int64 values.
        layout: name -> ``(is_int, offset, shape)`` (host integers).
        host: the plan's host integers (selection counts, filter widths), so that no shape
            depends on a device value.
    """

    buffer: torch.Tensor
    n_int: int
    layout: dict[str, tuple[bool, int, tuple[int, ...]]]
    host: dict[str, Any]

    def to(self, device: torch.device) -> dict[str, torch.Tensor]:
        """One copy of the buffer to ``device`` (``non_blocking``), then views by name."""
        buf = self.buffer.to(device, non_blocking=True)
        ints = buf[: 8 * self.n_int].view(torch.int64)
        floats = buf[8 * self.n_int :]
        floats = floats[: (floats.numel() // 4) * 4].view(torch.float32)
        out = {}
        for name, (is_int, off, shape) in self.layout.items():
            src = ints if is_int else floats
            n = math.prod(shape)
            out[name] = src[off : off + n].view(shape)
        return out


def _pack_colour(pk: _Packer, name: str, p: ColourParams, max_sigma: float, size: tuple[int, int],
                 fused: bool = False, eager: bool = True) -> None:
    """Host plan of the jitter / grayscale / blur of ``p``'s rows (flip is folded into the
    resize).

    ``eager``: the plan of the eager ops. Jitter: the jittered rows, sorted by the position
    of their hue op (stable), so that :func:`_apply_colour` gathers them once into a
    contiguous buffer in which, at every position ``k``, the rows running hue are one slice
    (block ``k``) and the rows running a linear op (brightness, contrast, saturation:
    ``x <- lerp(x, other, 1 - f)``) the one or two slices around it. Per (position, row)
    constants ``(4, n, 3)``: linear ``(1 - f, saturation?, contrast?)``, hue
    :func:`hue_base`. Then the grayscale rows. ``fused``: the plan of the fused kernel
    (:func:`~ssl_cropmix.data.colour_kernel.fused_plan`) instead or as well. Always: the
    blur rows and kernels. Block sizes and counts are host integers. Each plan is packed
    only where it may run (:meth:`DeviceViews.pack`): building one costs ~0.4-0.8 µs a
    sample."""
    if not (eager or fused):
        raise ValueError("_pack_colour needs eager=True or fused=True")
    if eager:
        if "gray_w" not in pk.layout:
            pk.float("gray_w", torch.tensor(_GRAY).view(1, 3, 1, 1))
            pk.float("hue_diff", HUE_DIFF)
        hue_pos = (p.order == 3).to(torch.int64).argmax(1)  # (N,): the position of hue
        key = torch.where(p.jitter, hue_pos, 4)
        rows = key.argsort(stable=True)
        counts = torch.bincount(key, minlength=5)[:4].tolist()
        rows = rows[: sum(counts)]
        op = p.order[rows].t()  # (4, n): the op at each position
        f = p.factors[rows].gather(1, op.t()).t()  # (4, n): the factor of the op at each position
        lin = torch.stack([1.0 - f, (op == 2).float(), (op == 1).float()], -1)
        consts = torch.where((op == 3)[..., None], hue_base(f.reshape(-1)).view(4, -1, 3), lin)
        pk.int(f"{name}.jit", rows)
        pk.float(f"{name}.jit.f", consts)
        pk.host[f"{name}.jit"] = counts
        gidx = torch.nonzero(p.gray).view(-1)
        pk.int(f"{name}.gray", gidx)
        pk.host[f"{name}.gray"] = int(gidx.numel())
    bidx = torch.nonzero(p.blur).view(-1)
    pk.int(f"{name}.blur", bidx)
    pk.float(f"{name}.blur.k", gaussian_kernels(p.sigma[bidx], blur_radius(max_sigma, size)))
    pk.host[f"{name}.blur"] = int(bidx.numel())
    if fused:  # the same jitter + grayscale as one per-row plan for the fused kernel (colour_kernel.py)
        codes, fz = fused_plan(p.order, p.factors, p.jitter, p.gray)
        pk.int(f"{name}.fz", codes)
        pk.float(f"{name}.fz.f", fz)
        pk.host[f"{name}.fz"] = (int((p.jitter | p.gray).sum()), int(p.jitter.sum()))


def _linear_(y: torch.Tensor, coef: torch.Tensor, gw: torch.Tensor) -> None:
    """Brightness / contrast / saturation, one per row, in place on contiguous ``y``
    ``(n, 3, H, W)``: ``y <- clamp(lerp(y, other, 1 - f), 0, 1)`` with ``other`` 0, the
    gray image's mean or the gray image (``coef`` ``(n, 3)``: ``1 - f``, saturation?,
    contrast?), torchvision's ``_blend``."""
    coef = coef.view(-1, 3, 1, 1, 1)
    g = _gray(y, gw)
    mean = g.mean(dim=(-3, -2, -1), keepdim=True)
    other = torch.addcmul(mean * coef[:, 2], g, coef[:, 1])  # (n, 1, H, W)
    y.lerp_(other, coef[:, 0]).clamp_(0.0, 1.0)


def _apply_colour(x: torch.Tensor, t: dict[str, torch.Tensor], host: dict[str, Any], name: str, fused: bool = False) -> None:
    """Jitter (each row in its own op order), grayscale and blur of :func:`_pack_colour`,
    in place on ``x`` ``(N, 3, H, W)`` float32 (any strides), touching only the selected rows.

    Eager (``fused=False``): the jittered rows are gathered once into a contiguous buffer,
    run through the four positions on slices of it (in place) and copied back once;
    grayscale gathers, computes and copies back its own rows. ``fused=True``: jitter and
    grayscale in the two passes of :func:`~ssl_cropmix.data.colour_kernel.colour_` (Triton).
    Blur (a stencil) gathers, convolves and copies back its rows either way."""
    n = 0 if fused else sum(host[f"{name}.jit"])
    if fused:
        touched, contrast = host[f"{name}.fz"]
        torch.ops.ssl_cropmix.colour_(x, t[f"{name}.fz"], t[f"{name}.fz.f"], touched, contrast)
    if n:
        gw, counts = t["gray_w"], host[f"{name}.jit"]
        idx = t[f"{name}.jit"]
        consts = t[f"{name}.jit.f"].view(4, n, 3)
        y = x.index_select(0, idx)  # contiguous, blocks by hue position
        ends = [sum(counts[: k + 1]) for k in range(4)]
        for k in range(4):
            lo, hi = ends[k] - counts[k], ends[k]
            for a, b in ((0, lo), (hi, n)):
                if b > a:
                    _linear_(y[a:b], consts[k, a:b], gw)
            if hi > lo:
                _hue_shift(y[lo:hi], consts[k, lo:hi].view(-1, 3, 1, 1), t["hue_diff"], out=y[lo:hi])
        x.index_copy_(0, idx, y)
    if not fused and host[f"{name}.gray"]:
        idx = t[f"{name}.gray"]
        x.index_copy_(0, idx, _gray(x.index_select(0, idx), t["gray_w"]).expand(-1, 3, -1, -1))
    if host[f"{name}.blur"] and fused:
        torch.ops.ssl_cropmix.blur_(x, t[f"{name}.blur"], t[f"{name}.blur.k"])
    elif host[f"{name}.blur"]:
        idx = t[f"{name}.blur"]
        x.index_copy_(0, idx, _gaussian_blur(x.index_select(0, idx), t[f"{name}.blur.k"]))


def colour_augment(x: torch.Tensor, params: ColourParams, spec: ColourSpec) -> torch.Tensor:
    """MoCo v2's flip, colour jitter (per-sample random op order), grayscale and blur, in
    that order (the worker recipe's order), each image with its own parameters.

    Each op runs on its selected rows only (row sets fixed on the CPU, so no device
    synchronisation). :meth:`DeviceViews.apply` runs the same code with the flip folded
    into the resize.

    Args:
        x: ``(N, 3, H, W)`` float in ``[0, 1]`` (left unchanged).
        params: from :func:`sample_colour_params` (CPU).

    Shape:
        ``(N, 3, H, W) -> (N, 3, H, W)``
    """
    pk = _Packer()
    pk.int("flip", torch.arange(x.shape[0])[params.flip])
    _pack_colour(pk, "c", params, spec.sigma[1], tuple(x.shape[-2:]))
    packed = pk.finish()
    t = packed.to(x.device)
    out = x.clone()
    if int(params.flip.sum()):
        out.index_copy_(0, t["flip"], out.index_select(0, t["flip"]).flip(-1))
    _apply_colour(out, t, packed.host, "c")
    return out


# --------------------------------------------------------------------------- recipes
class ViewParams(NamedTuple):
    """Every random number of one batch of device views (CPU tensors).

    Attributes:
        key: key-view crops (MoCo), or the MAE crops.
        key_colour: key colour parameters (MAE: flip only).
        query: query crops (MoCo), else ``None``.
        query_colour: query colour parameters, one row per crop for the per-crop presets
            (``(B * c)`` rows, sample-major) or one per sample.
        packed: the same numbers laid out for :meth:`DeviceViews.apply` in one (pinned)
            buffer (:meth:`DeviceViews.pack`), made by :meth:`DeviceViews.sample` on the
            CPU; ``None``: ``apply`` packs the fields above. Derived data: a copy whose other
            fields are changed (``_replace``) must set ``packed=None``.
    """

    key: CropSlots
    key_colour: ColourParams
    query: CropSlots | None
    query_colour: ColourParams | None
    packed: PackedParams | None = None


def _cat_colour(a: ColourParams, b: ColourParams, b_per: int) -> ColourParams:
    """Rows ``[a_0, b_0 .. b_{per-1}, a_1, ...]``: sample ``i``'s key row, then its query rows."""
    n = a.flip.shape[0]
    return ColourParams(*(
        torch.cat([x.reshape(n, 1, *x.shape[1:]), y.reshape(n, b_per, *y.shape[1:])], 1).flatten(0, 1)
        for x, y in zip(a, b)
    ))


def _mirror(boxes: torch.Tensor, flip: torch.Tensor, width: int) -> torch.Tensor:
    """Paste boxes ``(B, k, 4)`` of flipped samples mirrored left-right in a ``width``-wide image."""
    mirrored = boxes.clone()
    mirrored[..., 1] = width - boxes[..., 1] - boxes[..., 3]
    return torch.where(flip[:, None, None], mirrored, boxes)


def _find(t: Any, cls: type) -> Any:
    if isinstance(t, cls):
        return t
    for s in getattr(t, "transforms", []):
        hit = _find(s, cls)
        if hit is not None:
            return hit
    return None


class DeviceViews:
    """Batched MoCo / CropMix / MAE views on the training device (CPU or CUDA tensors).

    The distributions are read off the worker recipes of :mod:`ssl_cropmix.data.views`
    (same ``CropMix`` objects, same RRC, colour and blur settings), so ``augment_on="device"``
    and ``"workers"`` draw the same views (tested statistically in
    ``tests/data/test_device_views.py``).

    * ``views="moco"``: ``(query, key)``; key = MoCo v2 (RRC (0.2, 1), flip, jitter 0.4/0.4/0.4/0.1
      p=0.8 in a random order per sample, grayscale p=0.2, blur sigma in [0.1, 2] p=0.5 unless
      ``small_image``, normalise). Queries: ``"plain"`` (an independent key view),
      ``"cropmix"`` (generic CropMix Mixup, then the colour ops), ``"contrastive"`` (per-crop
      colour ops, then CutMix of the large-scale crop into the small-scale one) and
      ``"scalemix"`` (Asym-Siam: two crops of one shared range, each colour-augmented, CutMix).
    * ``views="mae"``: RRC (bicubic) or CropMix (Mixup / CutMix, bilinear) without
      intermediate augmentation, flip, normalise; the interpolation is the worker recipe's.

    Args:
        views: ``"moco"`` or ``"mae"``.
        query: MoCo query (see above).
        mae_view: ``"rrc"``, ``"cropmix_mixup"`` or ``"cropmix_cutmix"``.
        size: output side.
        small_image: no blur (default: ``size <= 64``), as the worker recipes.
        mean, std: normalisation statistics.
        resize: crop + resize kernel, one of :data:`RESIZE_METHODS`.
        output_dtype: floating dtype of the outputs (e.g. ``torch.bfloat16`` for
            ``bf16-true`` training); the maths runs in float32 outside autocast.
        generator: CPU ``torch.Generator`` for every draw; ``None``: one seeded on first use
            from torch's global RNG and :attr:`rank` (:meth:`seed_for_rank`), so DDP ranks
            draw different augmentations and a seeded run repeats.
        colour_kernel: how the colour jitter and grayscale run, one of :data:`COLOUR_KERNELS`:
            ``"eager"`` (whole-tensor torch ops on the selected rows), ``"fused"`` (one
            Triton pass, :mod:`ssl_cropmix.data.colour_kernel`; on CPU tensors its
            reference, or the kernels under ``TRITON_INTERPRET=1``) or ``"auto"``: fused on
            CUDA when Triton is installed, checked once against the eager ops on the first
            batch (a mismatch or an error warns and stays eager), eager elsewhere.

    Shape:
        ``images (B, 3, H, W)`` uint8 (padded), ``sizes (B, 2)`` -> ``(query, key)`` each
        ``(B, 3, size, size)``, or ``(B, 3, size, size)`` for MAE.
    """

    def __init__(
        self,
        views: Literal["moco", "mae"] = "moco",
        query: str = "cropmix",
        mae_view: str = "rrc",
        size: int = 224,
        small_image: bool | None = None,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        resize: str = "auto",
        output_dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
        colour_kernel: str = "auto",
    ) -> None:
        from ssl_cropmix.data import views as V

        if views not in ("moco", "mae"):
            raise ValueError(f"views must be 'moco' or 'mae' on the device path, got {views!r}")
        if views == "moco" and query not in V.QUERIES:
            raise ValueError(f"query must be one of {V.QUERIES} on the device path, got {query!r}")
        if views == "mae" and mae_view not in V.MAE_VIEWS:
            raise ValueError(f"mae_view must be one of {V.MAE_VIEWS}, got {mae_view!r}")
        if resize not in RESIZE_METHODS:
            raise ValueError(f"resize must be one of {RESIZE_METHODS}, got {resize!r}")
        if not (isinstance(output_dtype, torch.dtype) and output_dtype.is_floating_point):
            raise ValueError(f"output_dtype must be a floating torch.dtype, got {output_dtype!r}")
        if colour_kernel not in COLOUR_KERNELS:
            raise ValueError(f"colour_kernel must be one of {COLOUR_KERNELS}, got {colour_kernel!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU generator (parameters are drawn on the CPU), got {generator.device}")
        self.views, self.query, self.mae_view = views, query, mae_view
        self.size = V._check_size(size)
        self.small_image = self.size <= V.SMALL_IMAGE_MAX if small_image is None else check_bool("small_image", small_image)
        self.mean = torch.tensor(V._check_stats("mean", mean)).view(1, 3, 1, 1)
        self.std = torch.tensor(V._check_stats("std", std)).view(1, 3, 1, 1)
        self.resize, self.output_dtype = resize, output_dtype
        self.generator = generator
        self.colour_kernel = colour_kernel
        self._fused_checked: dict[str, bool] = {}  # device type -> the fused kernel passed its check
        self.rank = 0
        if views == "moco":
            worker = V.moco_views(query, self.size, self.small_image)
            rrc = _find(worker.key, v2.RandomResizedCrop)
            self.key_spec = colour_spec(worker.key)
            self.cropmix: CropMix | None = _find(worker.query, CropMix)
            self.query_spec = colour_spec(worker.query)
            # contrastive and ScaleMix (Asym-Siam) augment every crop before mixing
            self.per_crop = query in ("contrastive", "scalemix")
        else:
            worker = V.mae_view(mae_view, self.size)
            rrc = _find(worker, v2.RandomResizedCrop)
            self.cropmix = _find(worker, CropMix)
            self.key_spec = colour_spec(worker)  # flip only
            self.query_spec = self.key_spec
            self.per_crop = False
        self.rrc_scale: tuple[float, float] = tuple(rrc.scale) if rrc is not None else (0.2, 1.0)  # type: ignore[assignment]
        self.rrc_ratio: tuple[float, float] = tuple(rrc.ratio) if rrc is not None else (3 / 4, 4 / 3)  # type: ignore[assignment]
        # the worker recipe's interpolation: MAE's RRC is bicubic, its CropMix inputs bilinear
        # (as the official MAE + CropMix code for n = 2), the MoCo views bilinear
        resizer = self.cropmix if self.cropmix is not None else rrc
        self.bicubic = getattr(resizer, "interpolation", InterpolationMode.BILINEAR) == InterpolationMode.BICUBIC

    # ------------------------------------------------------------------ RNG
    def seed_for_rank(self, rank: int, seed: int | None = None) -> torch.Generator:
        """(Re)seed :attr:`generator` for process ``rank``: ``seed`` (default: drawn from
        torch's global RNG, which ``seed_everything`` fixes) mixed with the rank, so that
        every DDP rank augments differently and the same seed repeats a run."""
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.rank = int(rank)
        mixed = (int(seed) + 0x9E3779B97F4A7C15 * (self.rank + 1)) % (2**63 - 1)
        self.generator = torch.Generator().manual_seed(mixed)
        return self.generator

    def _gen(self) -> torch.Generator:
        if self.generator is None:
            self.seed_for_rank(self.rank)
        return self.generator  # type: ignore[return-value]

    # ------------------------------------------------------------------ sampling
    def sample(self, sizes: torch.Tensor) -> ViewParams:
        """Draw every random number of a batch on the CPU, with tensor operations over the
        batch (no loop over samples), and pack them for :meth:`apply` (:meth:`pack`).

        Args:
            sizes: ``(B, 2)`` true image sizes (any device).
        """
        g = self._gen()
        sizes = sizes.detach().to("cpu", torch.int64)
        b = int(sizes.shape[0])
        if self.views == "mae":
            slots = (
                sample_rrc_slots(sizes, self.rrc_scale, self.rrc_ratio, g)
                if self.cropmix is None
                else sample_cropmix_slots(self.cropmix, sizes, g)
            )
            params = ViewParams(slots, sample_colour_params(b, self.key_spec, g), None, None)
            return params._replace(packed=self.pack(params))
        key = sample_rrc_slots(sizes, self.rrc_scale, self.rrc_ratio, g)
        key_colour = sample_colour_params(b, self.key_spec, g)
        if self.cropmix is None:  # plain: an independent MoCo v2 view
            query = sample_rrc_slots(sizes, self.rrc_scale, self.rrc_ratio, g)
            qc = sample_colour_params(b, self.query_spec, g)
        else:
            query = sample_cropmix_slots(self.cropmix, sizes, g)
            qc = sample_colour_params(b * query.boxes.shape[1] if self.per_crop else b, self.query_spec, g)
        params = ViewParams(key, key_colour, query, qc)
        return params._replace(packed=self.pack(params))

    # ------------------------------------------------------------------ packing
    def pack(self, params: ViewParams) -> PackedParams:
        """Lay every number :meth:`apply` needs out in one CPU buffer (pinned when CUDA is
        available), with the host integers of the plan (selected-row counts, filter
        widths): the boxes of all crops of a sample side by side (MoCo: the key's, then the
        query's), each crop's flip folded into its resize, the Mixup weights / CutMix boxes,
        the colour plan (:func:`_pack_colour`) and the normalisation constants.
        """
        key, kc, query, qc = params.key, params.key_colour, params.query, params.query_colour
        pk = _Packer()
        # which plans apply() may need: the eager one unless only the fused kernels can run
        fused = self._may_fuse()
        eager = self.colour_kernel == "eager" or (
            self.colour_kernel == "auto" and not (fused and self._fused_checked.get("cuda") is True))
        b = int(key.boxes.shape[0])
        ow = self.size
        pk.float("norm", torch.stack([1.0 / self.std.view(3), -self.mean.view(3) / self.std.view(3)]))
        sigma, size2 = max(self.key_spec.sigma[1], self.query_spec.sigma[1]), (self.size, self.size)
        groups: list[tuple[str, CropSlots, torch.Tensor]] = []  # (name, slots, per-sample flip of a mix)
        if self.views == "mae":
            boxes, flip = key.boxes, kc.flip[:, None].expand(key.boxes.shape[:2])
            groups.append(("key", key, kc.flip))
            _pack_colour(pk, "key", kc, sigma, size2, fused, eager)  # MAE's recipe: flip only, so no rows
            pre = False
        else:
            assert query is not None and qc is not None
            c = int(query.boxes.shape[1])
            boxes = torch.cat([key.boxes, query.boxes], 1)
            pre = self.per_crop or self.cropmix is None  # plain: one crop per view, colour per crop
            if pre:
                colour = _cat_colour(kc, qc, c)
                flip = colour.flip.view(b, 1 + c)
                _pack_colour(pk, "crops", colour, sigma, size2, fused, eager)
                groups.append(("query", query, torch.zeros(b, dtype=torch.bool)))
            else:
                flip = torch.cat([kc.flip[:, None], qc.flip[:, None].expand(b, c)], 1)
                # key and mixed query run one colour pass over their concatenation (2 B rows)
                _pack_colour(pk, "pair", ColourParams(*(torch.cat([k, q]) for k, q in zip(kc, qc))), sigma, size2,
                             fused, eager)
                groups.append(("query", query, qc.flip))
        m = int(boxes.shape[1])
        pk.host["crops"] = m
        pk.host["pre"] = pre
        pk.float("boxes", boxes)
        pk.float("flip", flip.reshape(-1))
        pk.float("rows", crop_rows(boxes, (self.size, self.size), self.bicubic, flip.reshape(-1)))
        pk.host["taps"] = (
            filter_taps(int(boxes[..., 2].max()), self.size, self.bicubic),
            filter_taps(int(boxes[..., 3].max()), self.size, self.bicubic),
        )
        for name, slots, mix_flip in groups:
            n = int(slots.boxes.shape[1])
            if n == 1 or slots.weights is not None:
                pk.host[f"{name}.fold"] = "one" if n == 1 else "mixup"
                if n > 1:
                    pk.float(f"{name}.weights", slots.weights.view(b, 1, n))  # type: ignore[union-attr]
            else:
                pk.host[f"{name}.fold"] = "cutmix"
                pk.float(f"{name}.paste", _mirror(slots.paste_boxes, mix_flip, ow))  # type: ignore[arg-type]
                pk.int(f"{name}.from_mix", slots.paste_from_mix)  # type: ignore[arg-type]
        return pk.finish()

    # ------------------------------------------------------------------ applying
    def _fold(self, y: torch.Tensor, store: torch.Tensor, s: slice, name: str, t: dict[str, torch.Tensor], host: dict[str, Any]) -> torch.Tensor:
        """Fold crops ``s`` of every sample: one crop, Mixup (one batched product over the
        crops' storage ``store`` ``(B, m, oh * C * ow)``) or the CutMix fold."""
        fold = host[f"{name}.fold"]
        if fold == "one":
            return y[:, s.start]
        if fold == "mixup":
            b, _, ch, oh, ow = y.shape
            out = torch.bmm(t[f"{name}.weights"], store[:, s])  # (B, 1, storage of one crop)
            if y.is_contiguous():  # (C, S, S) storage
                return out.view(b, ch, oh, ow)
            return out.view(b, oh, ch, ow).permute(0, 2, 1, 3)  # the matrix path's (S, C, S)
        return cutmix_fold(y[:, s], t[f"{name}.paste"], t[f"{name}.from_mix"] != 0)

    def _may_fuse(self) -> bool:
        """Whether :meth:`pack` adds the fused kernels' plan: ``"fused"``, or ``"auto"`` where
        CUDA and Triton are there and the kernels have not failed their check."""
        if self.colour_kernel != "auto":
            return self.colour_kernel == "fused"
        return torch.cuda.is_available() and triton_available() and self._fused_checked.get("cuda") is not False

    def _colour(self, x: torch.Tensor, t: dict[str, torch.Tensor], host: dict[str, Any], name: str) -> None:
        """:func:`_apply_colour` with the kernel :attr:`colour_kernel` picks. ``"auto"`` on
        CUDA checks the fused kernel once against the eager ops on this batch (one host
        read, the only one of a run) and keeps whichever is right."""
        kind = self.colour_kernel
        dev = x.device.type
        if f"{name}.fz" not in host:  # packed without the fused plan (where it could not run)
            kind = "eager"
        elif f"{name}.jit" not in host:  # packed for the fused kernels only (on CPU: their reference)
            kind = "fused"
        if kind == "auto":
            if dev != "cuda" or not triton_available() or self._fused_checked.get(dev) is False:
                kind = "eager"
            elif self._fused_checked.get(dev):
                kind = "fused"
            else:
                self._fused_checked[dev] = self._check_fused(x, t, host, name)
                return
        _apply_colour(x, t, host, name, fused=kind == "fused")

    def _check_fused(self, x: torch.Tensor, t: dict[str, torch.Tensor], host: dict[str, Any], name: str) -> bool:
        """Run the fused and the eager colour ops on copies of ``x``; keep the fused result if
        they agree to 1e-4 (float rounding: measured <= 1e-6), else warn and keep eager's."""
        ref = x.clone()
        _apply_colour(ref, t, host, name, fused=False)
        try:
            _apply_colour(x, t, host, name, fused=True)
            err = float((x - ref).abs().max()) if x.numel() else 0.0
            problem = None if err <= 1e-4 else f"differs from the eager colour ops by up to {err:.3g}"
        except Exception as e:  # an unexpected Triton / driver failure: never stop the fit for it
            problem = f"failed ({type(e).__name__}: {e})"
        if problem is None:
            return True
        x.copy_(ref)
        warnings.warn(f"DeviceViews: the fused colour kernel {problem} on this {x.device.type} device; using "
                      "the eager colour ops (colour_kernel='eager' silences this)", RuntimeWarning, stacklevel=3)
        return False

    def _normalize(self, x: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(x - mean) / std`` as one multiply-add into a contiguous ``output_dtype`` tensor."""
        norm = t["norm"].view(2, 1, 3, 1, 1)
        out = torch.empty(x.shape, device=x.device, dtype=torch.float32)
        torch.addcmul(norm[1], x, norm[0], out=out)
        return out if self.output_dtype == torch.float32 else out.to(self.output_dtype)

    def apply(self, images: torch.Tensor, params: ViewParams) -> Any:
        """Apply ``params`` (deterministic). ``images`` are the padded uint8 batch.

        Device work only: the parameters arrive in one ``non_blocking`` copy
        (:meth:`pack`), every shape is a host integer, and nothing is read back, so the
        views queue behind the previous step without a synchronisation (tested on the
        ``meta`` device). With ``resize="matrix"`` (the default off CPU) all crops of the
        batch are resized by two batched products with the flips folded in, the per-crop
        colour ops run on their selected rows, and the folds and normalisation follow.

        Returns:
            ``(query, key)`` for MoCo, the images for MAE.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        packed = params.packed if params.packed is not None else self.pack(params)
        dev = images.device
        ctx = torch.autocast(dev.type, enabled=False) if dev.type in ("cpu", "cuda") else contextlib.nullcontext()
        with ctx:
            t = packed.to(dev)
            host = packed.host
            # the packed resize rows read uint8 as x / 255: float images in [0, 1] are scaled up
            x = images if images.dtype == torch.uint8 else images.float() * 255.0
            b, m = int(x.shape[0]), host["crops"]
            s = (self.size, self.size)
            method = self.resize
            if method == "auto":
                method = "interpolate" if dev.type == "cpu" and self.size >= 128 else "matrix"
            boxes = t["boxes"].view(b, m, 4)
            if method == "matrix":
                y = _matrix_crops(x, t["rows"], s, self.bicubic, host["taps"])  # (B*m, C, S, S)
                store = y.permute(0, 2, 1, 3).reshape(b, m, -1)  # its (B, m, S*C*S) storage, a view
            else:  # host-driven kernels (CPU), contiguous (B*m, C, S, S)
                flip = t["flip"].view(b, m) > 0.5
                y = resized_crops(x, boxes.to(torch.int64), s, method, self.bicubic, flip=flip).flatten(0, 1)
                store = y.view(b, m, -1)
            if self.bicubic:  # the cubic filter overshoots [0, 1]; each crop clamped once
                y.clamp_(0.0, 1.0)
            if host["pre"]:
                self._colour(y, t, host, "crops")
            y5 = y.unflatten(0, (b, m))
            if self.views == "mae":
                out = self._fold(y5, store, slice(0, m), "key", t, host)
                self._colour(out, t, host, "key")
                return self._normalize(out, t)
            key = y5[:, 0]
            query = self._fold(y5, store, slice(1, m), "query", t, host)
            if host["pre"]:
                return self._normalize(query, t), self._normalize(key, t)
            pair = torch.cat([key, query])  # (2 B, 3, S, S): one colour pass, one normalisation
            self._colour(pair, t, host, "pair")
            out = self._normalize(pair, t)
            return out[b:], out[:b]

    def __call__(self, images: torch.Tensor, sizes: torch.Tensor) -> Any:
        return self.apply(images, self.sample(sizes))

    def batch(self, raw: RawImages) -> Any:
        """:class:`RawImages` -> ``((query, key), labels)`` (MoCo) or ``(images, labels)`` (MAE),
        the batches of the worker path."""
        return self(raw.images, raw.sizes), raw.labels

    def __repr__(self) -> str:
        what = f"query={self.query!r}" if self.views == "moco" else f"mae_view={self.mae_view!r}"
        return (f"DeviceViews(views={self.views!r}, {what}, size={self.size}, resize={self.resize!r}, "
                f"colour_kernel={self.colour_kernel!r})")


# --------------------------------------------------------------------------- cost model
class DeviceOpCounter(TorchDispatchMode):
    """Counts what a piece of device code costs, from the operators torch dispatches (the
    cost model of ``benchmarks/device_views.py`` and of the transfer tests).

    Every aten operator with a tensor on ``device`` counts as one kernel launch, except
    views and allocations (``empty``, ``view``, ``permute``, ``expand``, ...), which launch
    none; its memory traffic is the bytes of its tensor inputs and outputs (an in-place op
    reads and writes its first argument; ``index_copy_`` / ``scatter_*`` / ``copy_`` read
    their source and write as much; ``index_select`` / ``gather`` read the selected entries
    and the index and write as much). Copies from the CPU to ``device`` are counted apart
    (``h2d``), and so are host synchronisations (``syncs``: ``item`` / ``tolist``
    / ``nonzero`` on the device, copies back to the CPU). Run it on the ``meta`` device to
    cost a full-size batch without memory or time: a meta tensor has no values, so any
    read of one would raise.

    Example:
        >>> with DeviceOpCounter("meta") as cost:
        ...     views.apply(images_on_meta, params)
        >>> cost.kernels, cost.bytes, cost.h2d, cost.syncs
    """

    _FREE = frozenset({
        "empty", "empty_strided", "empty_like", "detach", "alias", "lift_fresh", "_unsafe_view",
        "_reshape_alias", "set_", "resize_",
    })
    _SYNCS = frozenset({"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "item"})
    #: ``(kernels, bytes)`` of the package's own operators, from their arguments
    _CUSTOM_COSTS = {"ssl_cropmix::colour_": colour_cost, "ssl_cropmix::blur_": blur_cost}

    def __init__(self, device: str | torch.device) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.kernels = 0
        self.bytes = 0
        self.h2d = 0
        self.syncs = 0
        self.by_op: dict[str, list[int]] = {}

    def _on(self, t: torch.Tensor) -> bool:
        return t.device.type == self.device.type

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if name in self._SYNCS and any(self._on(t) for t in ins):
            self.syncs += 1
        out = func(*args, **kwargs)
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if name in ("_to_copy", "copy_") and ins and outs:
            src = ins[1] if name == "copy_" else ins[0]
            if src.device.type == "cpu" and self._on(outs[0]) and self.device.type != "cpu":
                self.h2d += 1
                return out
            if self._on(src) and outs[0].device.type == "cpu" and self.device.type != "cpu":
                self.syncs += 1
                return out
        if func.is_view or name in self._FREE or not any(self._on(t) for t in ins + outs):
            return out

        def nbytes(ts: list[torch.Tensor]) -> int:
            return sum(t.numel() * t.element_size() for t in ts)

        custom = self._CUSTOM_COSTS.get(f"{func.namespace}::{name}")
        if custom is not None:  # an operator of ours with kernels inside: what they move
            k, b = custom(args)
            self.kernels += k
            self.bytes += b
            entry = self.by_op.setdefault(name, [0, 0])
            entry[0] += k
            entry[1] += b
            return out
        if name in ("index_copy_", "index_put_", "index_add_", "scatter_", "scatter_add_"):
            b = 2 * nbytes(ins[1:])
        elif name in ("index_select", "gather"):  # reads the selected entries only
            b = 2 * nbytes(outs) + nbytes(ins[1:])
        elif name == "copy_":
            b = nbytes(ins[:2])
        elif name.endswith("_"):
            b = 2 * nbytes(ins[:1]) + nbytes(ins[1:])
        else:
            b = nbytes(ins) + nbytes(outs)
        self.kernels += 1
        self.bytes += b
        entry = self.by_op.setdefault(name, [0, 0])
        entry[0] += 1
        entry[1] += b
        return out
