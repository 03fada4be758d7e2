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
  ``torch.Generator``, per sample, with the package's own samplers: the crop boxes with
  :func:`~ssl_cropmix.transforms.functional.sample_crop_box`, CropMix / ScaleMix /
  contrastive-preset parameters with the very ``CropMix`` objects of the worker recipe
  (:meth:`~ssl_cropmix.transforms.CropMix.sample_params`: scale ranges, Beta weights,
  CutMix boxes, fold order), and the colour parameters with the ranges and probabilities
  read off the worker recipe's torchvision transforms (:func:`colour_spec`). So the two paths
  share one definition of every distribution, and the per-sample Python loop costs a few
  µs per sample (measured in ``benchmarks/device_views.py``), not the pixels.
* :meth:`DeviceViews.apply` is deterministic given the parameters: every crop is resized by
  two batched matrix products with torch's own antialiasing filter
  (:func:`crop_resize_weights`; equal to torchvision's float antialiased ``resized_crop``),
  Mixup weights are folded into the horizontal matrices, CutMix is a per-sample box mask,
  colour jitter runs per sample in each sample's own random order of the four ops, blur is a
  grouped separable convolution with a per-sample sigma, and normalisation is last.

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

import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import PIL.Image
import torch
import torch.nn.functional as TF
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from ssl_cropmix.transforms import functional as CF
from ssl_cropmix.transforms.cropmix import CropMix

RESIZE_METHODS = ("auto", "matrix", "roi_align", "interpolate")
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


def crop_resize_weights(
    start: torch.Tensor, length: torch.Tensor, out_size: int, full: int, bicubic: bool = False
) -> torch.Tensor:
    """Matrices of the 1-D antialiased resize of segments ``[start, start + length)`` of an
    axis of ``full`` pixels to ``out_size`` pixels, zero outside the segment.

    torch's own filter (``interpolate(..., antialias=True, align_corners=False)``, the
    PIL-style kernel): output ``i`` has centre ``scale * (i + 0.5)``, support
    ``scale * s`` (``s`` 1 bilinear, 2 bicubic; ``s`` when upsampling), triangle / cubic
    (``a = -0.5``) weights over the window torch uses, normalised to sum 1. So
    ``W_h @ X @ W_w.T`` is torchvision's float ``resized_crop`` up to float rounding (tested).

    Args:
        start, length: ``(K,)`` int64 segment starts and lengths (``length >= 1``).
        out_size: output length.
        full: axis length of the (padded) source.
        bicubic: cubic instead of triangle filter.

    Shape:
        ``(K,) -> (K, out_size, full)`` float32, on ``start``'s device.
    """
    dev = start.device
    length_f = length.to(torch.float64)
    scale = (length_f / out_size)[:, None, None]  # (K,1,1)
    half = 2.0 if bicubic else 1.0
    support = torch.where(scale >= 1.0, half * scale, torch.full_like(scale, half))
    invscale = torch.where(scale >= 1.0, 1.0 / scale, torch.ones_like(scale))
    i = torch.arange(out_size, device=dev, dtype=torch.float64)[None, :, None]
    center = scale * (i + 0.5)  # (K,out,1)
    xmin = torch.floor(center - support + 0.5).clamp(min=0.0)
    xmax = torch.minimum(torch.floor(center + support + 0.5), length_f[:, None, None])
    j = torch.arange(full, device=dev, dtype=torch.float64)[None, None, :] - start.to(torch.float64)[:, None, None]
    w = _filter((j - center + 0.5) * invscale, bicubic) * ((j >= xmin) & (j < xmax))
    total = w.sum(-1, keepdim=True)
    w = w / torch.where(total == 0, torch.ones_like(total), total)
    return w.to(torch.float32)


def resized_crops(
    images: torch.Tensor,
    boxes: torch.Tensor,
    size: tuple[int, int],
    method: str = "matrix",
    bicubic: bool = False,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cut and resize ``c`` boxes of every image in one batched computation.

    Args:
        images: ``(B, C, H, W)`` float (taken as is) or uint8 (read as ``x / 255``).
        boxes: ``(B, c, 4)`` int64 ``(top, left, h, w)``, on ``images``' device.
        size: ``(oh, ow)``.
        method: ``"matrix"`` (exact antialiasing, two batched products), ``"roi_align"``
            (``torchvision.ops.roi_align``, adaptive sampling), ``"interpolate"`` (one
            antialiased resize per crop; uint8 on CPU: the worker path's own native uint8
            kernel, :func:`~ssl_cropmix.transforms.functional.resized_crop`, rounded to uint8)
            or ``"auto"``: ``"interpolate"`` for uint8 on CPU at >= 128 px, ``"matrix"``
            elsewhere (measured, see ``docs/data.md``).
        bicubic: bicubic filter (``"matrix"`` and ``"interpolate"`` only).
        weights: optional ``(B, c)`` Mixup weights: return the weighted sum over the crops
            instead (folded into the horizontal matrices for ``"matrix"``).

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
    if method == "interpolate" and u8 and images.device.type == "cpu":
        interp = InterpolationMode.BICUBIC if bicubic else InterpolationMode.BILINEAR
        rows = flat.tolist()
        out = torch.stack([CF.resized_crop(images[k // c], tuple(r), size, interp) for k, r in enumerate(rows)])
        out = out.view(b, c, ch, oh, ow).to(torch.float32).mul_(1.0 / 255.0)
        if weights is not None:
            return (out * weights.to(out.dtype)[:, :, None, None, None]).sum(1)
        return out
    x = images.to(torch.float32) if u8 else images
    if method == "matrix":
        wv = crop_resize_weights(flat[:, 0], flat[:, 2], oh, hh, bicubic).to(x.dtype).view(b, c * oh, hh)
        if u8:
            wv = wv * (1.0 / 255.0)
        wh = crop_resize_weights(flat[:, 1], flat[:, 3], ow, ww, bicubic).to(x.dtype).view(b, c, ow, ww)
        y = torch.matmul(wv[:, None], x)  # (B, C, c*oh, W)
        if weights is not None:
            whw = (wh * weights.to(x.dtype)[:, :, None, None]).permute(0, 1, 3, 2).reshape(b, 1, c * ww, ow)
            y = y.view(b, ch, c, oh, ww).permute(0, 1, 3, 2, 4).reshape(b, ch, oh, c * ww)
            return torch.matmul(y, whw)  # (B, C, oh, ow)
        y = torch.matmul(y.view(b, ch, c, oh, ww), wh[:, None].transpose(-1, -2))  # (B, C, c, oh, ow)
        return y.permute(0, 2, 1, 3, 4)
    if method == "roi_align":
        from torchvision.ops import roi_align

        idx = torch.arange(b, device=x.device).repeat_interleave(c).to(x.dtype)
        f = flat.to(x.dtype)
        rois = torch.stack([idx, f[:, 1], f[:, 0], f[:, 1] + f[:, 3], f[:, 0] + f[:, 2]], dim=1)
        out = roi_align(x, rois, (oh, ow), spatial_scale=1.0, sampling_ratio=-1, aligned=True).view(b, c, ch, oh, ow)
        if u8:
            out = out * (1.0 / 255.0)
    else:
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
    if weights is not None:
        return (out * weights.to(x.dtype)[:, :, None, None, None]).sum(1)
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
def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(-3)


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def _hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_hue`` (RGB -> HSV, ``h <- (h + shift) mod 1``, -> RGB) with one
    shift per image. Shape: ``(N, 3, H, W), (N, 1, 1, 1) -> (N, 3, H, W)``."""
    r, g, b = x.unbind(-3)
    maxc, _ = x.max(dim=-3)
    minc, _ = x.min(dim=-3)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    h = torch.remainder(h + shift[:, 0], 1.0)
    # HSV -> RGB as c_n = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, n = 5, 3, 1:
    # the same values as torchvision's sector table, without its (N, 3, 6, H, W) temporary
    v, vs = maxc, maxc * s
    h6 = h * 6.0
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6.0)
        out.append(v - vs * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0))
    return torch.stack(out, dim=-3).clamp_(0.0, 1.0)


def _jitter_op(x: torch.Tensor, op: int, f: torch.Tensor) -> torch.Tensor:
    f = f.view(-1, 1, 1, 1)
    if op == 0:
        return (x * f).clamp_(0.0, 1.0)
    if op == 1:
        return _blend(x, _gray(x).mean(dim=(-3, -2, -1), keepdim=True), f)
    if op == 2:
        return _blend(x, _gray(x), f)
    return _hue_shift(x, f)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with one ``sigma`` per image (reflect padding; kernel
    ``+-ceil(3 max_sigma)``). Shape: ``(N, C, H, W), (N,) -> (N, C, H, W)``."""
    n, c, h, w = x.shape
    r = min(int(math.ceil(3.0 * max_sigma)), h - 1, w - 1)
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None].to(x.dtype)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, 2r+1)
    y = TF.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
    y = TF.conv2d(y, k.view(n * c, 1, 2 * r + 1, 1), groups=n * c)
    y = TF.conv2d(y, k.view(n * c, 1, 1, 2 * r + 1), groups=n * c)
    return y.view(n, c, h, w)


def colour_augment(x: torch.Tensor, params: ColourParams, spec: ColourSpec) -> torch.Tensor:
    """MoCo v2's flip, colour jitter (per-sample random op order), grayscale and blur, in
    that order (the worker recipe's order), each image with its own parameters.

    Args:
        x: ``(N, 3, H, W)`` float in ``[0, 1]``.
        params: from :func:`sample_colour_params` (CPU); index sets are computed on the CPU,
            so no device synchronisation is needed.

    Shape:
        ``(N, 3, H, W) -> (N, 3, H, W)``
    """
    dev = x.device
    # torch.where returns a new tensor, so the selected rows are then written in place
    # (index_copy_) instead of copying the whole batch for each of up to 16 (position, op) groups
    x = torch.where(params.flip.to(dev).view(-1, 1, 1, 1), x.flip(-1), x)
    factors = params.factors.to(dev, x.dtype)
    for pos in range(4):
        for op in range(4):
            sel = torch.nonzero(params.jitter & (params.order[:, pos] == op)).flatten()
            if sel.numel():
                idx = sel.to(dev)
                x.index_copy_(0, idx, _jitter_op(x.index_select(0, idx), op, factors.index_select(0, idx)[:, op]))
    gray = params.gray.to(dev).view(-1, 1, 1, 1)
    x = torch.where(gray, _gray(x).expand_as(x), x)
    sel = torch.nonzero(params.blur).flatten()
    if sel.numel():
        idx = sel.to(dev)
        x.index_copy_(0, idx, _gaussian_blur(x.index_select(0, idx), params.sigma[sel].to(dev), spec.sigma[1]))
    return x


# --------------------------------------------------------------------------- recipes
class ViewParams(NamedTuple):
    """Every random number of one batch of device views (CPU tensors).

    Attributes:
        key: key-view crops (MoCo), or the MAE crops.
        key_colour: key colour parameters (MAE: flip only).
        query: query crops (MoCo), else ``None``.
        query_colour: query colour parameters, one row per crop for the per-crop presets
            (``(B * c)`` rows, sample-major) or one per sample.
    """

    key: CropSlots
    key_colour: ColourParams
    query: CropSlots | None
    query_colour: ColourParams | None


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
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU generator (parameters are drawn on the CPU), got {generator.device}")
        self.views, self.query, self.mae_view = views, query, mae_view
        self.size = V._check_size(size)
        self.small_image = self.size <= V.SMALL_IMAGE_MAX if small_image is None else bool(small_image)
        self.mean = torch.tensor(V._check_stats("mean", mean)).view(1, 3, 1, 1)
        self.std = torch.tensor(V._check_stats("std", std)).view(1, 3, 1, 1)
        self.resize, self.output_dtype = resize, output_dtype
        self.generator = generator
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
        """Draw every random number of a batch, per sample, on the CPU.

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
            return ViewParams(slots, sample_colour_params(b, self.key_spec, g), None, None)
        key = sample_rrc_slots(sizes, self.rrc_scale, self.rrc_ratio, g)
        key_colour = sample_colour_params(b, self.key_spec, g)
        if self.cropmix is None:  # plain: an independent MoCo v2 view
            query = sample_rrc_slots(sizes, self.rrc_scale, self.rrc_ratio, g)
            qc = sample_colour_params(b, self.query_spec, g)
        else:
            query = sample_cropmix_slots(self.cropmix, sizes, g)
            qc = sample_colour_params(b * query.boxes.shape[1] if self.per_crop else b, self.query_spec, g)
        return ViewParams(key, key_colour, query, qc)

    # ------------------------------------------------------------------ applying
    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(x.device, x.dtype), self.std.to(x.device, x.dtype)
        return ((x - mean) / std).to(self.output_dtype)

    def _view(self, x: torch.Tensor, slots: CropSlots, colour: ColourParams, spec: ColourSpec, per_crop: bool) -> torch.Tensor:
        dev = x.device
        s = (self.size, self.size)
        boxes = slots.boxes.to(dev)
        if slots.weights is not None and slots.boxes.shape[1] > 1 and not per_crop:
            out = resized_crops(x, boxes, s, self.resize, self.bicubic, weights=slots.weights.to(dev))
            if self.bicubic:  # the cubic filter overshoots [0, 1]
                out = out.clamp_(0.0, 1.0)
        else:
            crops = resized_crops(x, boxes, s, self.resize, self.bicubic)  # (B, c, 3, S, S)
            if self.bicubic:  # each crop clamped once; the folds below stay in [0, 1]
                crops = crops.clamp_(0.0, 1.0)
            if per_crop:
                b, c = crops.shape[:2]
                crops = colour_augment(crops.reshape(b * c, *crops.shape[2:]), colour, spec).view(crops.shape)
            if crops.shape[1] == 1:
                out = crops[:, 0]
            elif slots.weights is not None:
                out = (crops * slots.weights.to(dev, crops.dtype)[:, :, None, None, None]).sum(1)
            else:
                out = cutmix_fold(crops, slots.paste_boxes.to(dev), slots.paste_from_mix.to(dev))  # type: ignore[union-attr]
        if not per_crop:
            out = colour_augment(out, colour, spec)
        return self._normalize(out)

    def apply(self, images: torch.Tensor, params: ViewParams) -> Any:
        """Apply ``params`` (deterministic). ``images`` are the padded uint8 batch.

        Returns:
            ``(query, key)`` for MoCo, the images for MAE.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        with torch.autocast(images.device.type, enabled=False):
            x = images if images.dtype == torch.uint8 else images.float()
            key = self._view(x, params.key, params.key_colour, self.key_spec, False)
            if self.views == "mae":
                return key
            query = self._view(x, params.query, params.query_colour, self.query_spec, self.per_crop)  # type: ignore[arg-type]
        return query, key

    def __call__(self, images: torch.Tensor, sizes: torch.Tensor) -> Any:
        return self.apply(images, self.sample(sizes))

    def batch(self, raw: RawImages) -> Any:
        """:class:`RawImages` -> ``((query, key), labels)`` (MoCo) or ``(images, labels)`` (MAE),
        the batches of the worker path."""
        return self(raw.images, raw.sizes), raw.labels

    def __repr__(self) -> str:
        what = f"query={self.query!r}" if self.views == "moco" else f"mae_view={self.mae_view!r}"
        return f"DeviceViews(views={self.views!r}, {what}, size={self.size}, resize={self.resize!r})"
