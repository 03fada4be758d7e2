"""Fused passes for MoCo v2's colour jitter + grayscale and its blur on the device (Triton).

The eager colour path of :mod:`ssl_cropmix.data.device_views` runs each jitter op as a few
whole-tensor torch operations (a blend, a clamp, a luma product, the hue's dozen steps),
every one of which reads and writes the selected rows again: about 19 passes over a
jittered image. Here the four ops, in each row's own order, and the grayscale run in
registers, pixel by pixel, in one kernel that reads every touched image once and writes it
once, plus one read of the rows whose contrast needs the mean luma of the image as it is at
the contrast's position (the only op that is not per pixel). torch has no such kernel and
``torch.compile`` cannot fuse across the per-row op order without recompiling for each
plan, so it is written here, by hand, in Triton.

The maths is the eager path's, op for op (which is tested against torchvision per sample):

* brightness / contrast / saturation: ``clamp(f x + (1 - f) other, 0, 1)`` with ``other``
  0, the mean luma or the luma (torchvision's ``_blend``);
* hue: RGB -> HSV with torchvision's channel priority, ``h <- (h + shift) mod 1``, -> RGB
  (:func:`~ssl_cropmix.data.device_views._hue_shift`'s closed form);
* grayscale: the luma (torchvision's weights) in all three channels.

Plan layout (one row per image, built on the CPU by :func:`fused_plan`): ``codes`` int64
``(N, 6)``: the op at each of the four positions (-1: none, 0 brightness, 1 contrast, 2
saturation, 3 hue), the contrast's position (4: none) and the grayscale flag; ``factors``
float32 ``(N, 4)``: the factor of the op at each position (the hue's: ``6 * shift``).

Rows that neither jitter nor turn gray are masked out: their pixels are neither read nor
written. The blur (:func:`blur_`) is two 1-D passes with each image's own taps and reflect
padding, vertical into a buffer and horizontal back. The kernels run as compiled Triton on
CUDA and, with ``TRITON_INTERPRET=1``, under Triton's interpreter on CPU tensors (the tests'
way to check them without a GPU); on CPU otherwise the operators run eager torch code.
:func:`colour_` and :func:`blur_` are registered torch operators (``ssl_cropmix::colour_``,
``ssl_cropmix::blur_``), so a ``meta`` batch costs them without running them
(:class:`~ssl_cropmix.data.device_views.DeviceOpCounter`, :func:`colour_cost`, :func:`blur_cost`).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import torch

BLOCK = 1024  # pixels per program
_HUE_SCALE = np.array([1.0, 1.0, 1.0, 6.0], np.float32)  # hue's factor on HSV's [0, 6) scale


def fused_plan(order: torch.Tensor, factors: torch.Tensor, jitter: torch.Tensor, gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-row plan of the fused kernels from :class:`ColourParams` fields (CPU).

    Args:
        order: ``(N, 4)`` int64, the op at each position.
        factors: ``(N, 4)`` float32, the factor of each op (brightness, contrast,
            saturation, hue shift).
        jitter, gray: ``(N,)`` bool.

    Returns:
        ``codes`` ``(N, 6)`` int64 and ``factors`` ``(N, 4)`` float32 (see the module docstring).
    """
    # NumPy: a handful of operations on (N, 4) host arrays, where each torch call's overhead
    # (~5-10 µs) would be most of the cost (36 vs ~60-100 µs for 512 rows, measured)
    o = order.numpy()
    jit = jitter.numpy()
    codes = np.empty((o.shape[0], 6), np.int64)
    codes[:, :4] = np.where(jit[:, None], o, -1)
    codes[:, 4] = np.where(jit, (o == 1).argmax(1), 4)
    codes[:, 5] = gray.numpy()
    f = np.take_along_axis(factors.numpy().astype(np.float32, copy=False), o, 1) * _HUE_SCALE[o]
    return torch.from_numpy(codes), torch.from_numpy(f)


@functools.cache
def triton_available() -> bool:
    """Whether Triton is installed (it ships with torch's CUDA wheels on Linux)."""
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``): then the
    kernels take CPU tensors, which is how the tests run them on a machine without a GPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") and triton_available()


def colour_reference(x: torch.Tensor, codes: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """The plan applied row by row with the eager path's own primitives (``_linear_``,
    ``_hue_shift``, ``_gray`` of :mod:`~ssl_cropmix.data.device_views`): the CPU
    implementation of :func:`colour_` outside Triton's interpreter, so that a plan packed
    for the fused kernels only still runs on CPU tensors. Shape: ``(N, 3, H, W)`` float32,
    in place."""
    from ssl_cropmix.data.device_views import _GRAY, HUE_DIFF, _gray, _hue_shift, _linear_

    gw = torch.tensor(_GRAY, device=x.device).view(1, 3, 1, 1)
    diff = HUE_DIFF.to(x.device)
    plan = codes.tolist()
    fac = factors.tolist()
    for i, (row, f) in enumerate(zip(plan, fac)):
        y = x[i : i + 1]
        for op, fk in zip(row[:4], f):
            if op == 3:  # fk = 6 * shift: hue_base's 6 shift + (5, 3, 1)
                _hue_shift(y, torch.tensor([fk + 5.0, fk + 3.0, fk + 1.0], device=x.device).view(1, 3, 1, 1), diff, out=y)
            elif op >= 0:  # _linear_'s (1 - f, saturation?, contrast?)
                coef = torch.tensor([[1.0 - fk, float(op == 2), float(op == 1)]], device=x.device)
                buf = y.contiguous()
                _linear_(buf, coef, gw)
                y.copy_(buf)
        if row[5]:
            y.copy_(_gray(y, gw).expand_as(y))
    return x


def run_kernels(x: torch.Tensor, codes: torch.Tensor, factors: torch.Tensor) -> None:
    """Launch the two kernels on ``x`` ``(N, 3, H, W)`` float32 (any strides), in place
    (CUDA tensors, or CPU tensors under Triton's interpreter)."""
    if not triton_available():
        raise RuntimeError("the fused colour kernel needs Triton (pip install triton)")
    import triton

    from ssl_cropmix.data._triton_colour import _apply_kernel, _mean_kernel

    n, c, h, w = x.shape
    if c != 3 or x.dtype != torch.float32:
        raise ValueError(f"the fused colour kernel takes (N, 3, H, W) float32, got {tuple(x.shape)} {x.dtype}")
    if n == 0 or h * w == 0:
        return
    codes = codes.contiguous()
    factors = factors.contiguous()
    mean = torch.empty(n, device=x.device, dtype=torch.float32)
    sn, sc, sh, sw = x.stride()
    with _on(x.device):  # Triton launches on the current CUDA device: make it x's
        _mean_kernel[(n,)](x, codes, factors, mean, h * w, w, sn, sc, sh, sw, BLOCK=BLOCK)
        _apply_kernel[(n, triton.cdiv(h * w, BLOCK))](x, codes, factors, mean, h * w, w, sn, sc, sh, sw, BLOCK=BLOCK)


def _on(device: torch.device) -> Any:
    """``torch.cuda.device(device)`` for a CUDA tensor's device, else a no-op context."""
    import contextlib

    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@torch.library.custom_op("ssl_cropmix::colour_", mutates_args=("x",))
def colour_(x: torch.Tensor, codes: torch.Tensor, factors: torch.Tensor, n_touched: int, n_contrast: int) -> None:
    """MoCo v2's jitter (each row's own op order) and grayscale of a :func:`fused_plan`, in
    place on ``x`` ``(N, 3, H, W)`` float32 in ``[0, 1]``: the Triton kernels on CUDA (and
    on CPU under Triton's interpreter), :func:`colour_reference` on CPU otherwise.
    ``n_touched`` / ``n_contrast`` are the plan's host counts (rows jittered or gray / with
    a contrast): nothing runs when no row is touched, and :func:`colour_cost` reads them."""
    if n_touched == 0:
        return
    if x.device.type == "cuda" or (x.device.type == "cpu" and interpreting()):
        run_kernels(x, codes, factors)
    else:
        colour_reference(x, codes, factors)


@colour_.register_fake
def _(x: torch.Tensor, codes: torch.Tensor, factors: torch.Tensor, n_touched: int, n_contrast: int) -> None:
    return None


def colour_cost(args: tuple[Any, ...]) -> tuple[int, int]:
    """``(kernels, bytes)`` of one :func:`colour_` call from its arguments: the mean pass
    reads the rows with a contrast once, the apply pass reads and writes the touched rows
    once (masked-out rows move nothing), each pass reads the plan."""
    x, codes, factors, n_touched, n_contrast = args[:5]
    if not n_touched:
        return 0, 0
    per_row = x[0].numel() * x.element_size()
    plan = codes.numel() * codes.element_size() + factors.numel() * factors.element_size()
    return 2, per_row * (n_contrast + 2 * n_touched) + 2 * plan + 2 * 4 * x.shape[0]


def run_blur(x: torch.Tensor, idx: torch.Tensor, kernels: torch.Tensor) -> None:
    """Blur the rows ``idx`` of ``x`` ``(N, 3, H, W)`` float32 in place, row ``idx[i]`` with
    the 1-D taps ``kernels[i]`` ``(n, 2 r + 1)``: a vertical pass into a contiguous
    ``(n, 3, H, W)`` buffer, then a horizontal one back (CUDA, or CPU under the interpreter)."""
    if not triton_available():
        raise RuntimeError("the fused blur needs Triton (pip install triton)")
    import triton

    from ssl_cropmix.data._triton_colour import _blur_kernel

    n, taps = int(kernels.shape[0]), int(kernels.shape[1])
    _, c, h, w = x.shape
    if n == 0 or h * w == 0:
        return
    idx, kernels = idx.contiguous(), kernels.contiguous()
    tmp = torch.empty((n, c, h, w), device=x.device, dtype=x.dtype)
    grid = (n, c, triton.cdiv(h * w, BLOCK))
    with _on(x.device):
        _blur_kernel[grid](x, tmp, idx, kernels, h, w, *x.stride(), *tmp.stride(),
                           SRC_INDEXED=True, DST_INDEXED=False, VERTICAL=True, TAPS=taps, BLOCK=BLOCK)
        _blur_kernel[grid](tmp, x, idx, kernels, h, w, *tmp.stride(), *x.stride(),
                           SRC_INDEXED=False, DST_INDEXED=True, VERTICAL=False, TAPS=taps, BLOCK=BLOCK)


@torch.library.custom_op("ssl_cropmix::blur_", mutates_args=("x",))
def blur_(x: torch.Tensor, idx: torch.Tensor, kernels: torch.Tensor) -> None:
    """Gaussian blur of the rows ``idx`` of ``x`` ``(N, 3, H, W)`` float32, each with its
    own taps ``kernels`` ``(n, 2 r + 1)``, reflect padding, in place: :func:`run_blur` on
    CUDA (and on CPU under Triton's interpreter), the eager grouped convolutions otherwise."""
    if idx.numel() == 0:
        return
    if x.device.type == "cuda" or (x.device.type == "cpu" and interpreting()):
        run_blur(x, idx, kernels)
    else:
        from ssl_cropmix.data.device_views import _gaussian_blur

        x.index_copy_(0, idx, _gaussian_blur(x.index_select(0, idx), kernels))


@blur_.register_fake
def _(x: torch.Tensor, idx: torch.Tensor, kernels: torch.Tensor) -> None:
    return None


def blur_cost(args: tuple[Any, ...]) -> tuple[int, int]:
    """``(kernels, bytes)`` of one :func:`blur_` call: each pass reads and writes the
    selected images once (the taps of a pass are re-read from cache), plus the table."""
    x, idx, kernels = args[:3]
    n = int(idx.shape[0])
    if not n:
        return 0, 0
    per_row = x[0].numel() * x.element_size()
    table = idx.numel() * idx.element_size() + kernels.numel() * kernels.element_size()
    return 2, 4 * n * per_row + 2 * table
