"""Pure, generator-aware maths for CropMix, ScaleMix and ResizeMix.

Sampling functions take an optional ``torch.Generator`` and draw every random number from
torch's RNG (never ``random`` / ``numpy``), so a seeded generator reproduces a call exactly.
Applying functions are deterministic given their arguments.

Boxes are ``(top, left, height, width)`` in pixels, as in ``torchvision.transforms.v2``.

References:
    Han et al., "CropMix: Sampling a Rich Input Distribution via Multi-Scale Cropping",
    2022 (Sec. 3.2, Appendix A); Yun et al., CutMix, 2019; Qin et al., ResizeMix, 2020;
    Wang et al., Asym-Siam (ScaleMix), 2022.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import PIL.Image
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

Box = tuple[int, int, int, int]


class RandomStream:
    """Uniform numbers from torch's RNG, drawn in blocks.

    One ``torch.rand(block)`` call replaces dozens of scalar draws (each costs several
    µs of Python / dispatcher overhead, which dominated CropMix at 32 px). Deterministic
    for a given generator state. ``generator=None`` uses torch's global RNG, which
    Lightning seeds per data-loader worker.

    ``next()`` returns the next ``U[0, 1)`` number. It is a C-level iterator step (blocks
    are drawn lazily by ``itertools.chain``), so hot samplers call it directly rather than
    :meth:`uniform`: per-image sampling runs in a data-loader worker between many other
    Python calls, where every extra Python frame costs about a microsecond.
    """

    def __init__(self, generator: torch.Generator | None = None, block: int = 64) -> None:
        self.generator, self.block = generator, block
        self.next: Callable[[], float] = itertools.chain.from_iterable(iter(self._draw, None)).__next__

    def _draw(self) -> list[float]:
        return torch.rand(self.block, dtype=torch.float64, generator=self.generator).tolist()

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        """A float in ``[low, high)``."""
        return low + (high - low) * self.next()

    def randint(self, low: int, high: int) -> int:
        """An int in ``[low, high)``, uniform."""
        return min(low + int(self.next() * (high - low)), high - 1)

    def normal(self) -> float:
        """A standard normal (Box-Muller)."""
        u1 = max(self.next(), 1e-300)
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * self.next())

    def permutation(self, n: int) -> list[int]:
        """A uniform random permutation of ``range(n)`` (Fisher-Yates)."""
        p = list(range(n))
        nxt = self.next
        for i in range(n - 1, 0, -1):
            j = min(int(nxt() * (i + 1)), i)
            p[i], p[j] = p[j], p[i]
        return p


Rng = torch.Generator | RandomStream | None


def as_stream(rng: Rng) -> RandomStream:
    """Wrap a generator (or ``None``: torch's global RNG) as a :class:`RandomStream`."""
    return rng if isinstance(rng, RandomStream) else RandomStream(rng)


# --------------------------------------------------------------------------- scale ranges
def split_scale_range(crop_scale: Sequence[float], n: int) -> tuple[tuple[float, float], ...]:
    """Split ``(s_min, s_max)`` evenly into ``n`` adjacent, non-overlapping ranges.

    CropMix (paper Sec. 3.2) draws crop ``i`` from the ``i``-th range, smallest first.
    The first range starts exactly at ``s_min`` and the last ends exactly at ``s_max``.

    Example:
        >>> split_scale_range((0.2, 1.0), 2)
        ((0.2, 0.6), (0.6, 1.0))
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return _split_scale_range(float(crop_scale[0]), float(crop_scale[1]), n)


@functools.lru_cache(maxsize=256)  # pure, and CropMix.sample_params asks once per image
def _split_scale_range(lo: float, hi: float, n: int) -> tuple[tuple[float, float], ...]:
    edges = [lo + (hi - lo) * k / n for k in range(n)] + [hi]
    return tuple((edges[k], edges[k + 1]) for k in range(n))


# --------------------------------------------------------------------------- crop boxes
def sample_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    log_ratio: tuple[float, float],
    generator: Rng = None,
) -> tuple[int, int, int, int, float, bool]:
    """Sample a RandomResizedCrop box, with torchvision's algorithm but a torch generator.

    The algorithm of ``v2.RandomResizedCrop.make_params``: up to 10 attempts of
    (area fraction ~ U(scale), log aspect ratio ~ U(log_ratio)), accepted when the box
    fits, then the central fallback crop, whose area fraction may lie outside ``scale``
    (as in torchvision). Numbers come from a :class:`RandomStream` (block draws) instead
    of one torch call per number.

    Args:
        height, width: source image size in pixels.
        scale: ``(lo, hi)`` range of the crop's area fraction.
        log_ratio: ``(log(r_min), log(r_max))`` of the aspect ratio w/h.
        generator: optional torch generator or :class:`RandomStream`.

    Returns:
        ``(top, left, h, w, target_scale, fallback)``: the box, the sampled target area
        fraction of the accepted attempt (``nan`` for the fallback), and whether the
        central fallback was used.
    """
    nxt = as_stream(generator).next  # inlined uniform / randint draws: same numbers, fewer frames
    area = height * width
    s0, ds = scale[0], scale[1] - scale[0]
    r0, dr = log_ratio[0], log_ratio[1] - log_ratio[0]
    for _ in range(10):
        target = s0 + ds * nxt()
        target_area = area * target
        aspect = math.exp(r0 + dr * nxt())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = min(int(nxt() * (height - h + 1)), height - h)
            j = min(int(nxt() * (width - w + 1)), width - w)
            return i, j, h, w, target, False
    in_ratio = float(width) / float(height)
    r_min, r_max = math.exp(log_ratio[0]), math.exp(log_ratio[1])
    if in_ratio < r_min:
        w, h = width, int(round(width / r_min))
    elif in_ratio > r_max:
        h, w = height, int(round(height * r_max))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w, float("nan"), True


def sample_crop_boxes(
    heights: torch.Tensor,
    widths: torch.Tensor,
    scale_lo: torch.Tensor | float,
    scale_hi: torch.Tensor | float,
    log_ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`sample_crop_box` for a whole batch of images at once, with tensor operations.

    The same algorithm and distribution (torchvision's ``RandomResizedCrop``): each image
    makes up to ``attempts`` independent tries of (area fraction ~ ``U(scale)``, log aspect
    ratio ~ ``U(log_ratio)``, uniform top-left corner), the first try that fits is kept, and
    images where none fits get the central fallback crop. Every try of every image is drawn
    in one ``torch.rand`` call and the first fitting try is picked by an ``argmax``, so the
    cost is a fixed number of tensor operations whatever the batch size. The numbers differ
    from :func:`sample_crop_box`'s, the distribution does not (tested against it and
    against the worker recipe).

    Args:
        heights, widths: ``(B,)`` int64 source sizes.
        scale_lo, scale_hi: ``(B,)`` float64 (or floats) area-fraction range of each crop.
        log_ratio: ``(log(r_min), log(r_max))``.
        generator: optional CPU ``torch.Generator``.
        attempts: tries before the fallback (torchvision: 10).

    Returns:
        ``boxes`` ``(B, 4)`` int64 ``(top, left, h, w)``, ``target`` ``(B,)`` float64 (the
        accepted try's area fraction; ``nan`` for the fallback) and ``fallback`` ``(B,)`` bool.
    """
    hh = heights.to(torch.float64)
    ww = widths.to(torch.float64)
    b = hh.shape[0]
    # every try's (area, ratio) draw, and one corner draw: only the accepted try's corner is
    # used, so drawing it once gives the same distribution with fewer numbers
    u = torch.rand((b, 2 * attempts + 2), generator=generator, dtype=torch.float64)
    lo = torch.as_tensor(scale_lo, dtype=torch.float64)
    hi = torch.as_tensor(scale_hi, dtype=torch.float64)
    lo, hi = (lo[:, None], hi[:, None]) if lo.ndim else (lo, hi)
    target = torch.lerp(lo, hi, u[:, :attempts]) if lo.ndim else lo + (hi - lo) * u[:, :attempts]  # (B, T)
    target_area = (hh * ww)[:, None] * target
    aspect = torch.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[:, attempts : 2 * attempts])
    w = torch.round(torch.sqrt(target_area * aspect))  # round half to even, as Python's round
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = torch.logical_and(torch.logical_and(w > 0, w <= ww[:, None]), torch.logical_and(h > 0, h <= hh[:, None]))
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first try that fits (0 if none)
    found = fits.any(1)
    h1, w1, t1 = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0], target.gather(1, first)[:, 0]
    top = torch.minimum(torch.floor(u[:, -2] * (hh - h1 + 1)), hh - h1)
    left = torch.minimum(torch.floor(u[:, -1] * (ww - w1 + 1)), ww - w1)
    # torchvision's central fallback: the largest box of an allowed ratio (the whole image
    # when its own ratio is allowed)
    r_min, r_max = math.exp(log_ratio[0]), math.exp(log_ratio[1])
    in_ratio = ww / hh
    fw = torch.where(in_ratio > r_max, torch.round(hh * r_max), ww)
    fh = torch.where(in_ratio < r_min, torch.round(ww / r_min), hh)
    h_out = torch.where(found, h1, fh)
    w_out = torch.where(found, w1, fw)
    top = torch.where(found, top, torch.floor((hh - fh) / 2))
    left = torch.where(found, left, torch.floor((ww - fw) / 2))
    boxes = torch.stack([top, left, h_out, w_out], 1).to(torch.int64)
    return boxes, torch.where(found, t1, torch.full_like(t1, float("nan"))), ~found


def uniform_permutations(n: torch.Tensor, c: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One uniform random permutation of ``range(n_b)`` per row, padded with ``n_b .. c - 1``.

    Shape:
        ``n`` ``(B,)`` int64 (``1 <= n_b <= c``) -> ``(B, c)`` int64; row ``b`` starts with a
        permutation of ``range(n_b)`` and keeps the unused slots, in order, at the end.
    """
    b = n.shape[0]
    keys = torch.rand((b, c), generator=generator, dtype=torch.float64)
    slot = torch.arange(c)
    keys = torch.where(slot[None, :] < n[:, None], keys, 2.0 + slot.to(torch.float64))  # unused: last, in order
    return keys.argsort(1)


def sample_beta_batch(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``lambda ~ Beta(a_i, b_i)`` for every element, the batched form of :func:`sample_beta`.

    Jöhnk's rejection method where ``a, b <= 1`` (Mixup's ``alpha / n``; acceptance >= 1/2)
    and ``sigmoid(log X - log Y)`` of Marsaglia-Tsang gammas (log space, with the ``U^(1/a)``
    boost below 1) elsewhere, both as rounds over the elements still pending: a handful of
    rounds per batch, not a loop over elements.

    Shape:
        ``(B,) float64, (B,) float64 -> (B,) float64``
    """
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    out = torch.empty_like(a)
    johnk = (a <= 1.0) & (b <= 1.0)
    idx = torch.nonzero(johnk).flatten()
    while idx.numel():  # Jöhnk: X = U^(1/a), Y = V^(1/b), accept X + Y <= 1
        u = torch.rand((idx.numel(), 2), generator=generator, dtype=torch.float64).clamp_(min=1e-300)
        lx, ly = u[:, 0].log() / a[idx], u[:, 1].log() / b[idx]
        ok = torch.logaddexp(lx, ly) <= 0.0
        out[idx[ok]] = torch.sigmoid(lx[ok] - ly[ok])  # X / (X + Y)
        idx = idx[~ok]
    idx = torch.nonzero(~johnk).flatten()
    if idx.numel():
        lx = _log_gamma_batch(a[idx], generator)
        ly = _log_gamma_batch(b[idx], generator)
        out[idx] = torch.sigmoid(lx - ly)
    return out


def _log_gamma_batch(a: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``log X``, ``X ~ Gamma(a_i, 1)``, the batched :func:`_log_gamma_sample`. Shape: ``(B,) -> (B,)``."""
    boost = torch.zeros_like(a)
    small = a < 1.0
    if bool(small.any()):
        u = torch.rand(a.shape, generator=generator, dtype=torch.float64).clamp_(min=1e-300)
        boost = torch.where(small, u.log() / a, boost)
        a = torch.where(small, a + 1.0, a)
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(a)
    idx = torch.arange(a.shape[0])
    while idx.numel():
        x = torch.randn(idx.shape, generator=generator, dtype=torch.float64)
        u = torch.rand(idx.shape, generator=generator, dtype=torch.float64).clamp_(min=1e-300)
        v = (1.0 + c[idx] * x).clamp(min=1e-300) ** 3
        ok = (1.0 + c[idx] * x > 0) & (u.log() < 0.5 * x * x + d[idx] - d[idx] * v + d[idx] * v.log())
        out[idx[ok]] = (d[idx] * v).log()[ok]
        idx = idx[~ok]
    return out + boost


def mixup_fold_weights_batch(lams: torch.Tensor) -> torch.Tensor:
    """:func:`mixup_fold_weights` for a batch: crop ``i`` gets ``(1 - lam_i) prod_{k > i} lam_k``.

    A step with ``lam = 1`` leaves the fold unchanged, so rows with fewer crops pad their
    steps with 1 and get weight 0 on the padded crops.

    Shape:
        ``(B, c - 1)`` -> ``(B, c)`` (rows >= 0, summing to 1)
    """
    b = lams.shape[0]
    ones = torch.ones((b, 1), dtype=lams.dtype)
    first = torch.cat([ones, 1.0 - lams], 1)  # 1 - lam_i, with 1 - lam_1 := 1
    # suffix products prod_{k > i} lam_k
    suffix = torch.cat([lams, ones], 1).flip(1).cumprod(1).flip(1)  # column i: prod of lams[i:]
    return first * suffix


def cutmix_boxes(height: int, width: int, lam: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`cutmix_box` for a batch of weights: side ``sqrt(1 - lam)``, uniform centre, clipped.

    Shape:
        ``lam`` ``(...)`` -> ``(..., 4)`` int64 ``(top, left, h, w)``
    """
    cut = torch.sqrt(1.0 - lam.to(torch.float64))
    cut_h, cut_w = torch.floor(height * cut), torch.floor(width * cut)
    u = torch.rand((*lam.shape, 2), generator=generator, dtype=torch.float64)
    cy = torch.clamp(torch.floor(u[..., 0] * height), max=height - 1)
    cx = torch.clamp(torch.floor(u[..., 1] * width), max=width - 1)
    hy, hx = torch.floor(cut_h / 2), torch.floor(cut_w / 2)
    y1, y2 = (cy - hy).clamp(min=0), (cy + hy).clamp(max=height)
    x1, x2 = (cx - hx).clamp(min=0), (cx + hx).clamp(max=width)
    return torch.stack([y1, x1, y2 - y1, x2 - x1], -1).to(torch.int64)


# --------------------------------------------------------------------------- Beta sampling
def _log_gamma_sample(a: float, rng: RandomStream) -> float:
    """``log X`` with ``X ~ Gamma(a, 1)`` by Marsaglia & Tsang (2000), generator-aware.

    Hand-written because ``torch.distributions.Gamma/Beta`` (``torch._standard_gamma``)
    take no generator. For ``a < 1`` uses ``X = Gamma(a+1) * U^(1/a)``, kept in log space
    so that tiny shapes (e.g. alpha/n = 0.1) never underflow to 0.
    """
    boost = 0.0
    if a < 1.0:
        u = rng.uniform()
        boost = math.log(max(u, 1e-300)) / a
        a = a + 1.0
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = rng.normal()
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = rng.uniform()
        if math.log(max(u, 1e-300)) < 0.5 * x * x + d - d * v + d * math.log(v):
            return math.log(d * v) + boost


def _beta_johnk(a: float, b: float, rng: RandomStream) -> float:
    """``lambda ~ Beta(a, b)`` for ``a, b <= 1`` by Jöhnk's (1964) rejection method.

    ``X = U^(1/a)``, ``Y = V^(1/b)``; accept when ``X + Y <= 1`` and return
    ``X / (X + Y)``. Acceptance is ``Gamma(a+1) Gamma(b+1) / Gamma(a+b+1) >= 1/2`` here
    (0.98 for Mixup's ``alpha / n = 0.1``), so a draw costs about two uniforms, against
    about eight for two Marsaglia-Tsang gammas. Kept in log space, as
    :func:`_log_gamma_sample`, so tiny shapes never underflow.
    """
    nxt, log = rng.next, math.log
    while True:
        lx = log(max(nxt(), 1e-300)) / a
        ly = log(max(nxt(), 1e-300)) / b
        if max(lx, ly) + math.log1p(math.exp(-abs(lx - ly))) <= 0.0:  # log(X + Y) <= 0
            return 1.0 / (1.0 + math.exp(min(ly - lx, 700.0)))


def sample_beta(a: float, b: float, generator: Rng = None) -> float:
    """Draw ``lambda ~ Beta(a, b)`` from torch's RNG with an optional generator.

    Hand-written because ``torch.distributions.Beta`` takes no generator. For
    ``a, b <= 1`` (Mixup's ``alpha / n``) Jöhnk's method (:func:`_beta_johnk`);
    otherwise ``Beta(a, b) = X / (X + Y)`` with independent ``X ~ Gamma(a)``,
    ``Y ~ Gamma(b)``, computed as ``sigmoid(log X - log Y)``.
    """
    rng = as_stream(generator)
    if a <= 1.0 and b <= 1.0:
        return _beta_johnk(a, b, rng)
    lx = _log_gamma_sample(a, rng)
    ly = _log_gamma_sample(b, rng)
    return 1.0 / (1.0 + math.exp(min(ly - lx, 700.0)))


# --------------------------------------------------------------------------- CutMix / ResizeMix boxes
def cutmix_box(height: int, width: int, lam: float, generator: Rng = None) -> Box:
    """CutMix box (Yun et al., 2019; as timm's ``rand_bbox``) for weight ``lam``.

    Side lengths ``sqrt(1 - lam)`` of the image, uniform centre, clipped to the image.

    Returns:
        ``(top, left, h, w)``; ``h`` or ``w`` may be 0 (nothing pasted).
    """
    rng = as_stream(generator)
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = rng.randint(0, height), rng.randint(0, width)
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y1, x1, y2 - y1, x2 - x1


def resize_paste_box(height: int, width: int, tau: float, generator: Rng = None) -> Box:
    """ResizeMix box (Qin et al., 2020): side ``round(tau * size)`` (>= 1), placed uniformly
    inside the image, so the pasted area fraction is ``tau**2`` up to rounding."""
    h = min(max(int(round(tau * height)), 1), height)
    w = min(max(int(round(tau * width)), 1), width)
    rng = as_stream(generator)
    top, left = rng.randint(0, height - h + 1), rng.randint(0, width - w + 1)
    return top, left, h, w


# --------------------------------------------------------------------------- applying
_RESIZE_SETTINGS: dict[tuple[InterpolationMode, bool], tuple[str, bool | None, bool, bool]] = {}


def _resize_settings(interpolation: InterpolationMode, antialias: bool) -> tuple[str, bool | None, bool, bool]:
    """``(mode, align_corners, antialias, native_uint8_cpu)`` for ``interpolate``, cached
    (enum comparisons cost µs per call, which matters for 32-px crops)."""
    key = (interpolation, antialias)
    settings = _RESIZE_SETTINGS.get(key)
    if settings is None:
        from torchvision.transforms.v2.functional._geometry import _do_native_uint8_resize_on_cpu

        nearest = interpolation in (InterpolationMode.NEAREST, InterpolationMode.NEAREST_EXACT)
        native = nearest or _do_native_uint8_resize_on_cpu(interpolation)
        settings = (interpolation.value, None if nearest else False, antialias and not nearest, native)
        _RESIZE_SETTINGS[key] = settings
    return settings


def resize(
    image: torch.Tensor,
    size: Sequence[int],
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
    antialias: bool = True,
) -> torch.Tensor:
    """Resize a ``(C, H, W)`` image; uint8 stays uint8.

    Where torch has a native kernel for the dtype (float; uint8 on CPU with AVX2 for
    bilinear/bicubic, or nearest) this calls ``interpolate`` directly on a channels-last
    copy of the (possibly strided) input, the layout torch's uint8 kernels run fastest on;
    elsewhere it defers to ``torchvision.transforms.v2.functional.resize_image``, which
    casts. The direct call saves torchvision's per-call checks (~50 µs, most of a 32-px
    resize); results are identical (tested).

    Shape:
        ``(C, H, W) -> (C, size[0], size[1])``
    """
    size = [int(size[0]), int(size[1])]
    mode, align_corners, aa, native_uint8 = _resize_settings(interpolation, antialias)
    dtype = image.dtype
    if dtype == torch.uint8:
        native = native_uint8 and image.device.type == "cpu"
    else:
        native = dtype == torch.float32 or dtype == torch.float64
    if not native or image.ndim != 3 or list(image.shape[-2:]) == size:
        return F.resize_image(image, size, interpolation=interpolation, antialias=antialias)
    x = image.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    return torch.nn.functional.interpolate(x, size=size, mode=mode, align_corners=align_corners, antialias=aa)[0]


# --------------------------------------------------------------------------- resize as matrices
@functools.lru_cache(maxsize=1024)
def antialias_resize_weights(in_size: int, out_size: int, bicubic: bool = False) -> np.ndarray:
    """The ``(out_size, in_size)`` matrix of a 1-D antialiased resize, row ``i`` holding the
    weights of output pixel ``i``.

    torch does not expose its resampling weights, so they are read off its own resize: each
    one-hot row of the identity, resized by ``interpolate(..., antialias=True)`` in float64,
    is one column of the matrix (a height-1 image keeps its height: the resize there is the
    identity). So ``W_h @ X @ W_w.T`` is torchvision's float ``resize(X, antialias=True)``
    up to float rounding (tested, with the weights also checked against a hand-written
    filter). Read-only and cached: a 32-px CropMix of a 32-px image needs at most 32 of them.

    Args:
        in_size, out_size: lengths of the input and output axis.
        bicubic: bicubic (``a = -0.5``, support 2) instead of bilinear (support 1).
    """
    rows = torch.eye(in_size, dtype=torch.float64).view(in_size, 1, 1, in_size)  # in one-hot images
    mode = "bicubic" if bicubic else "bilinear"
    out = torch.nn.functional.interpolate(rows, size=(1, out_size), mode=mode, antialias=True, align_corners=False)
    m = out.view(in_size, out_size).T.contiguous().numpy()
    m.flags.writeable = False
    return m


@functools.lru_cache(maxsize=8192)
def _placed_weights(in_size: int, offset: int, out_size: int, full: int, bicubic: bool) -> np.ndarray:
    """:func:`antialias_resize_weights` of the segment ``[offset, offset + in_size)`` of an
    axis of length ``full``, zero elsewhere: ``(out_size, full)`` float32, read-only."""
    m = np.zeros((out_size, full), np.float32)
    m[:, offset : offset + in_size] = antialias_resize_weights(in_size, out_size, bicubic)
    m.flags.writeable = False
    return m


def mixup_resized_crops(
    image: np.ndarray,
    boxes: Sequence[Box],
    weights: Sequence[float],
    size: Sequence[int],
    bicubic: bool = False,
) -> np.ndarray:
    """``sum_i weights[i] * resize(crop_i)`` for crops of one ``(H, W, C)`` uint8 image, as two
    float32 matrix products (the Mixup fold of CropMix's ``backend="numpy"``).

    Each antialiased resize is separable, ``W_h,i @ crop_i @ W_w,i.T``
    (:func:`antialias_resize_weights`), and the Mixup weights are linear, so one product
    with all vertical matrices stacked and one with the horizontal matrices, each scaled by
    its crop's weight, side by side give the whole fold: no per-crop images, no per-crop
    rounding, and a fixed number of NumPy calls whatever ``n`` is. Equal to the float fold of torchvision's
    float ``resized_crop`` of every box, up to float32 rounding. The cost grows with
    ``H * W * n * size``: meant for small images.

    Args:
        image: ``(H, W, C)`` uint8 (PIL's layout).
        boxes: ``n`` boxes ``(top, left, h, w)`` inside the image, in fold order.
        weights: ``n`` Mixup weights (:func:`mixup_fold_weights`).
        size: ``(oh, ow)`` output size.
        bicubic: bicubic instead of bilinear filters.

    Returns:
        ``(oh, ow, C)`` float32 on the ``[0, 255]`` scale, unrounded (bicubic may overshoot
        it slightly), possibly a strided view.
    """
    height, width, c = image.shape
    oh, ow = int(size[0]), int(size[1])
    n = len(boxes)
    if n != len(weights):
        raise ValueError(f"need one weight per box, got {n} boxes and {len(weights)} weights")
    # vertical pass first: PIL's (H, W * C) layout is already the right operand
    x = image.reshape(height, width * c).astype(np.float32)
    vertical = np.concatenate([_placed_weights(b[2], b[0], oh, height, bicubic) for b in boxes])  # (n*oh, H)
    y = (vertical @ x).reshape(n, oh, width, c).transpose(1, 3, 0, 2).reshape(oh * c, n * width)
    horizontal = np.concatenate([_placed_weights(b[3], b[1], ow, width, bicubic) for b in boxes], axis=1)
    horizontal = horizontal * np.repeat(np.asarray(weights, np.float32), width)  # (ow, n*W), crop i's weight
    return (y @ horizontal.T).reshape(oh, c, ow).transpose(0, 2, 1)


_PIL_CHANNELS = {"RGB": 3, "RGBA": 4, "L": 1}


def pil_to_uint8(image: PIL.Image.Image) -> torch.Tensor:
    """PIL image -> uint8 ``(C, H, W)`` tensor with a single copy of the pixels.

    ``v2.functional.pil_to_tensor`` copies twice (``tobytes`` inside ``np.array``, then
    ``copy=True``); here ``torch.frombuffer`` wraps the ``tobytes`` result directly, about
    2x faster on ImageNet-sized photos. The result is read-only memory (an immutable
    ``bytes``): callers must not write to it (CropMix only slices and resizes it). Modes
    other than RGB / RGBA / L go through ``pil_to_tensor``.

    Shape:
        PIL ``(W, H)`` -> ``(C, H, W)`` uint8 (channels-last strides, like ``pil_to_tensor``)
    """
    c = _PIL_CHANNELS.get(image.mode)
    if c is None or image.width == 0 or image.height == 0:
        return F.pil_to_tensor(image)
    with warnings.catch_warnings():  # "buffer is not writable": we never write to it
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(image.tobytes(), dtype=torch.uint8)
    return flat.view(image.height, image.width, c).permute(2, 0, 1)


_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def uint8_to_pil(image: torch.Tensor, mode: str | None = None) -> PIL.Image.Image:
    """uint8 ``(C, H, W)`` tensor -> PIL image with a single copy of the pixels.

    The inverse of :func:`pil_to_uint8`. ``v2.functional.to_pil_image`` goes through a
    NumPy array and ``Image.fromarray`` (about 5x slower for a 32-px image); here the
    channels-last bytes are handed to ``Image.frombytes`` directly.

    Args:
        image: ``(C, H, W)`` uint8, ``C`` in {1, 3, 4}.
        mode: PIL mode (default: ``L`` / ``RGB`` / ``RGBA`` by ``C``). Other channel counts
            or dtypes go through ``to_pil_image``.

    Shape:
        ``(C, H, W)`` -> PIL ``(W, H)``
    """
    x = image.as_subclass(torch.Tensor)
    c, h, w = x.shape
    mode = mode or _PIL_MODES.get(c)
    if x.dtype != torch.uint8 or mode is None or _PIL_CHANNELS.get(mode) != c:
        return F.to_pil_image(x, mode=mode)
    return PIL.Image.frombytes(mode, (w, h), x.permute(1, 2, 0).contiguous().numpy())


def resized_crop(
    image: torch.Tensor,
    box: Box,
    size: Sequence[int],
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
    antialias: bool = True,
) -> torch.Tensor:
    """Crop ``box`` by slicing (a view, no copy) and resize it to ``size`` (see :func:`resize`).

    Shape:
        ``(C, H, W) -> (C, size[0], size[1])``
    """
    top, left, h, w = box
    crop = image[:, top : top + h, left : left + w] if image.ndim == 3 else image[..., top : top + h, left : left + w]
    if h == size[0] and w == size[1]:
        return crop.clone()  # never hand out a view of the (possibly read-only) source
    return resize(crop, size, interpolation, antialias)


def mixup(a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    """Convex combination ``lam * a + (1 - lam) * b`` in floating point.

    Float operands are used as is; uint8 operands are read as ``x / 255`` inside the same
    fused multiply-add (no separate conversion pass), so the result is in [0, 1].

    Shape:
        ``a, b: (..., C, H, W) -> (..., C, H, W)`` float
    """
    sa = 1.0 / 255.0 if a.dtype == torch.uint8 else 1.0
    sb = 1.0 / 255.0 if b.dtype == torch.uint8 else 1.0
    if a.is_floating_point():
        out = a.mul(lam)
    else:
        dtype = b.dtype if b.is_floating_point() else torch.float32
        out = a.to(dtype).mul_(lam * sa)
    return out.add_(b, alpha=(1.0 - lam) * sb)


def mixup_fold_weights(lams: Sequence[float]) -> list[float]:
    """Per-crop weights of the Mixup fold ``m_1 = v_1; m_k = lam_k m_{k-1} + (1 - lam_k) v_k``.

    Unrolled, crop ``v_i`` gets ``(1 - lam_i) prod_{k > i} lam_k`` (with ``1 - lam_1 := 1``),
    so an ``n``-crop fold is one weighted sum. The weights are >= 0 and sum to 1.

    Args:
        lams: ``lam_2 .. lam_n`` (``n - 1`` steps).

    Example:
        >>> mixup_fold_weights([0.5, 0.25])
        [0.125, 0.125, 0.75]
    """
    weights = [1.0] * (len(lams) + 1)
    for k, lam in enumerate(lams, start=1):
        for i in range(k):
            weights[i] *= lam
        weights[k] = 1.0 - lam
    return weights


def visible_fold_weights(weights: Sequence[float], levels: float = 255.0) -> list[float]:
    """Mixup fold weights without the crops that cannot show in an output rounded to ``levels``.

    The smallest weights are set to 0 while their sum ``s`` stays below half a level
    (``s * levels < 0.5``); the others are divided by ``1 - s``, so they still sum to 1.
    For views with values in ``[0, levels]`` the weighted sum moves by
    ``s * (mean of the kept - mean of the dropped)``, less than half a level in magnitude:
    the rounded result is within one level of the full sum (and of its rounding), and an
    image whose crops agree (e.g. a flat colour) is unchanged.

    With Mixup's ``Beta(alpha / n, alpha / n)`` weights most folds have such a crop: for the
    paper's ``alpha = 0.4``, ``n`` in {2, 3, 4}, 39 % of all crops (and of their area) carry
    less than half an 8-bit level.

    Args:
        weights: fold weights (:func:`mixup_fold_weights`), >= 0, summing to 1.
        levels: the largest value of the rounded output (255 for uint8).

    Example:
        >>> visible_fold_weights([0.001, 0.999])
        [0.0, 1.0]
        >>> visible_fold_weights([0.25, 0.75])
        [0.25, 0.75]
    """
    limit = 0.5 / levels
    dropped, s = [], 0.0
    for i in sorted(range(len(weights)), key=weights.__getitem__):
        if s + weights[i] >= limit:
            break
        s += weights[i]
        dropped.append(i)
    if not dropped:
        return list(weights)
    out = [w / (1.0 - s) for w in weights]
    for i in dropped:
        out[i] = 0.0
    return out


def paste(base: torch.Tensor, donor: torch.Tensor, box: Box) -> torch.Tensor:
    """Return a copy of ``base`` whose ``box`` region is taken from ``donor`` (same place).

    Used by CutMix. Both operands must have the same dtype and shape.

    Shape:
        ``(..., C, H, W) -> (..., C, H, W)``
    """
    top, left, h, w = box
    out = base.clone()
    out[..., top : top + h, left : left + w] = donor[..., top : top + h, left : left + w]
    return out


def cutmix(a: torch.Tensor, b: torch.Tensor, box: Box) -> torch.Tensor:
    """CutMix: ``a`` with the ``box`` region replaced by the same region of ``b``."""
    return paste(a, b, box)


def resize_paste(
    base: torch.Tensor,
    donor: torch.Tensor,
    box: Box,
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
    antialias: bool = True,
) -> torch.Tensor:
    """ResizeMix: resize the whole ``donor`` to the box size and paste it at ``box``.

    Shape:
        ``base, donor: (..., C, H, W) -> (..., C, H, W)``
    """
    top, left, h, w = box
    if donor.ndim == 3:
        small = resize(donor, (h, w), interpolation, antialias)
    else:
        small = F.resize(donor, [h, w], interpolation=interpolation, antialias=antialias)
    out = base.clone()
    out[..., top : top + h, left : left + w] = small
    return out


def to_unit_float(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``[0, 255]`` -> float ``[0, 1]``; float tensors are cast to ``dtype`` only."""
    if x.is_floating_point():
        return x if x.dtype == dtype else x.to(dtype)
    return x.to(dtype).mul_(1.0 / 255.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float ``[0, 1]`` -> uint8, rounded to nearest (uint8 passes through)."""
    if x.dtype == torch.uint8:
        return x
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def channel_permute(x: torch.Tensor, perm: Sequence[int]) -> torch.Tensor:
    """Permute the channel dimension (the paper's intermediate op for classification).

    Shape:
        ``(..., C, H, W) -> (..., C, H, W)``
    """
    return x[..., list(perm), :, :]
