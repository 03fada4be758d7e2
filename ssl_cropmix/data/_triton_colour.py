"""The Triton kernels of :mod:`ssl_cropmix.data.colour_kernel` (imported on first use:
Triton is only needed where they run)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _ops(r, g, b, codes_ptr, fac_ptr, row, mean, first: tl.constexpr, last: tl.constexpr):
    """Positions ``first .. last - 1`` of one row's jitter on the pixel vectors r, g, b."""
    for k in tl.static_range(first, last):
        op = tl.load(codes_ptr + row * 6 + k)
        f = tl.load(fac_ptr + row * 4 + k)
        if op == 3:  # hue (HSV round trip, torchvision's channel priority r, g, b)
            maxc = tl.maximum(tl.maximum(r, g), b)
            cr = maxc - tl.minimum(tl.minimum(r, g), b)
            is_r = r == maxc
            is_g = (g == maxc) & (r != maxc)
            num = tl.where(is_r, g - b, tl.where(is_g, b - r, r - g))
            two_i = tl.where(is_r, 0.0, tl.where(is_g, 2.0, 4.0))
            h6 = num / tl.maximum(cr, 1e-12) + two_i
            k5 = h6 + (f + 5.0)
            k5 = k5 - 6.0 * tl.floor(k5 / 6.0)
            k3 = h6 + (f + 3.0)
            k3 = k3 - 6.0 * tl.floor(k3 / 6.0)
            k1 = h6 + (f + 1.0)
            k1 = k1 - 6.0 * tl.floor(k1 / 6.0)
            r = maxc - cr * tl.minimum(tl.maximum(tl.minimum(k5, 4.0 - k5), 0.0), 1.0)
            g = maxc - cr * tl.minimum(tl.maximum(tl.minimum(k3, 4.0 - k3), 0.0), 1.0)
            b = maxc - cr * tl.minimum(tl.maximum(tl.minimum(k1, 4.0 - k1), 0.0), 1.0)
        elif op >= 0:  # brightness (other 0), contrast (the mean luma), saturation (the luma)
            luma = 0.2989 * r + 0.587 * g + 0.114 * b
            other = tl.where(op == 2, luma, tl.where(op == 1, mean, 0.0))
            w = 1.0 - f
            r = tl.minimum(tl.maximum(r + w * (other - r), 0.0), 1.0)
            g = tl.minimum(tl.maximum(g + w * (other - g), 0.0), 1.0)
            b = tl.minimum(tl.maximum(b + w * (other - b), 0.0), 1.0)
    return r, g, b

@triton.jit
def _mean_kernel(x_ptr, codes_ptr, fac_ptr, mean_ptr, hw, width, sn, sc, sh, sw, BLOCK: tl.constexpr):
    """Grid ``(N,)``: each row's mean luma as it is at its contrast's position."""
    row = tl.program_id(0)
    cpos = tl.load(codes_ptr + row * 6 + 4)
    n = tl.where(cpos < 4, hw, 0)  # rows without a contrast read nothing
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    base = x_ptr + row.to(tl.int64) * sn
    for start in range(0, n, BLOCK):
        p = start + tl.arange(0, BLOCK)
        m = p < n
        off = (p // width) * sh + (p % width) * sw
        r = tl.load(base + off, mask=m, other=0.0)
        g = tl.load(base + sc + off, mask=m, other=0.0)
        b = tl.load(base + 2 * sc + off, mask=m, other=0.0)
        for k in tl.static_range(3):  # the (pointwise) ops before the contrast
            if k < cpos:
                r, g, b = _ops(r, g, b, codes_ptr, fac_ptr, row, 0.0, k, k + 1)
        acc += tl.where(m, 0.2989 * r + 0.587 * g + 0.114 * b, 0.0)
    tl.store(mean_ptr + row, tl.sum(acc, axis=0) / tl.maximum(n, 1).to(tl.float32))

@triton.jit
def _apply_kernel(x_ptr, codes_ptr, fac_ptr, mean_ptr, hw, width, sn, sc, sh, sw, BLOCK: tl.constexpr):
    """Grid ``(N, cdiv(hw, BLOCK))``: the jitter (positions 0-3), then grayscale, in place."""
    row = tl.program_id(0)
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    gray = tl.load(codes_ptr + row * 6 + 5)
    jit = tl.load(codes_ptr + row * 6) >= 0
    m = (p < hw) & (jit | (gray != 0))  # untouched rows: no load, no store
    off = (p // width) * sh + (p % width) * sw
    base = x_ptr + row.to(tl.int64) * sn
    r = tl.load(base + off, mask=m, other=0.0)
    g = tl.load(base + sc + off, mask=m, other=0.0)
    b = tl.load(base + 2 * sc + off, mask=m, other=0.0)
    mean = tl.load(mean_ptr + row)
    r, g, b = _ops(r, g, b, codes_ptr, fac_ptr, row, mean, 0, 4)
    if gray != 0:
        luma = 0.2989 * r + 0.587 * g + 0.114 * b
        r = luma
        g = luma
        b = luma
    tl.store(base + off, r, mask=m)
    tl.store(base + sc + off, g, mask=m)
    tl.store(base + 2 * sc + off, b, mask=m)


@triton.jit
def _blur_kernel(src_ptr, dst_ptr, idx_ptr, k_ptr, height, width, s_n, s_c, s_h, s_w, d_n, d_c, d_h, d_w,
                 SRC_INDEXED: tl.constexpr, DST_INDEXED: tl.constexpr, VERTICAL: tl.constexpr,
                 TAPS: tl.constexpr, BLOCK: tl.constexpr):
    """Grid ``(n, 3, cdiv(H * W, BLOCK))``: one 1-D Gaussian pass (reflect padding) of the
    ``n`` selected images, each with its own taps ``k[i]``; the source / destination image of
    selection ``i`` is ``idx[i]`` (``*_INDEXED``) or ``i``."""
    i = tl.program_id(0)
    c = tl.program_id(1)
    p = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    m = p < height * width
    h = p // width
    w = p % width
    row = tl.load(idx_ptr + i)
    s_row = row if SRC_INDEXED else i.to(tl.int64)
    d_row = row if DST_INDEXED else i.to(tl.int64)
    src = src_ptr + s_row * s_n + c * s_c
    length = height if VERTICAL else width
    pos = h if VERTICAL else w
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for t in tl.static_range(TAPS):
        q = pos + (t - TAPS // 2)
        q = tl.where(q < 0, -q, q)  # reflect: -1 -> 1, length -> length - 2
        q = tl.where(q >= length, 2 * (length - 1) - q, q)
        off = q * s_h + w * s_w if VERTICAL else h * s_h + q * s_w
        acc += tl.load(k_ptr + i * TAPS + t) * tl.load(src + off, mask=m, other=0.0)
    tl.store(dst_ptr + d_row * d_n + c * d_c + h * d_h + w * d_w, acc, mask=m)
