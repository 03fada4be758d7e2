"""CropMix settings refused at construction, NumPy scalars accepted, and awkward PIL modes
read as colours (issue 14, item 6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_cropmix.transforms.cropmix import CropMix


@pytest.mark.parametrize("alpha", [math.inf, float("nan"), 0.0, -1.0, True])
def test_alpha_must_be_finite_positive(alpha):
    with pytest.raises(ValueError, match=rf"alpha must be a finite number > 0, got {alpha!r}"):
        CropMix(8, alpha=alpha)


@pytest.mark.parametrize("ratio", [(1.0, math.inf), (float("nan"), 2.0), (0.0, 1.0)])
def test_ratio_must_be_finite(ratio):
    with pytest.raises(ValueError, match=r"ratio must satisfy 0.0 < min <= max \(finite\), got"):
        CropMix(8, ratio=ratio)


@pytest.mark.parametrize("name", ["shuffle", "shared_range", "antialias"])
@pytest.mark.parametrize("value", ["no", "False", 0, 1, None])
def test_flags_must_be_real_bools(name, value):
    with pytest.raises(TypeError, match=rf"{name} must be a bool, got {value!r}"):
        CropMix(8, **{name: value})


def test_numpy_scalars_are_numbers():
    tf = CropMix(np.int64(24), num_crops=np.int64(3), alpha=np.float32(0.4), crop_scale=(np.float32(0.1), 1.0),
                 shuffle=np.bool_(False), ratio=(np.float64(0.75), np.float64(4 / 3)))
    assert tf.size == (24, 24) and tf.num_crops == (3,) and tf.alpha == pytest.approx(0.4)
    assert tf.shuffle is False
    assert CropMix((np.int32(8), np.int64(12)), num_crops=[np.int16(2), 3]).num_crops == (2, 3)
    out = tf(torch.rand(3, 40, 40))
    assert out.shape == (3, 24, 24)


def _palette_image() -> Image.Image:
    """Left half index 1 = pure red, right half index 2 = pure blue; index 0 black unused.
    Interpolating *indices* would give index ~1.5 (black/garbage), not a red-blue blend."""
    p = Image.new("P", (32, 32), 1)
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    p.paste(2, (16, 0, 32, 32))
    return p


@pytest.mark.parametrize("backend", ["tensor", "pil", "numpy"])
def test_palette_is_converted_to_rgb_before_interpolation(backend):
    p = _palette_image()
    g = torch.Generator().manual_seed(0)
    tf = CropMix(16, crop_scale=(0.3, 1.0), num_crops=2, backend=backend, generator=g)
    out = tf(p)
    assert out.shape == (3, 16, 16)
    g.manual_seed(0)
    ref = tf(p.convert("RGB"))  # same random numbers on the RGB image
    assert torch.allclose(out, ref)
    assert out[1].max() <= 1e-6  # green never appears: colours were mixed, not indices
    kp = CropMix(16, output_dtype=None, keep_pil=True, backend=backend)(p)
    assert kp.mode == "RGB"


def test_float_mode_is_read_on_pil_scale():
    """PIL's F shares L's scale (``convert("L")`` keeps 255.0 as white): F / 255 in [0, 1],
    exactly what the same image as L gives."""
    a = np.tile(np.linspace(0, 255, 32, dtype=np.float32), (32, 1))
    f_img = Image.fromarray(a, mode="F")
    l_img = Image.fromarray(np.rint(a).astype(np.uint8), mode="L")
    g = torch.Generator().manual_seed(1)
    tf = CropMix(16, num_crops=2, generator=g)
    out_f = tf(f_img)
    g.manual_seed(1)
    out_l = tf(l_img)
    assert out_f.dtype == torch.float32 and 0.0 <= out_f.min() and out_f.max() <= 1.0
    assert (out_f - out_l).abs().max() < 2.5 / 255  # rounding of the L copy only
    # out of range values clip instead of leaving [0, 1]
    big = Image.fromarray(np.full((20, 20), 1000.0, np.float32), mode="F")
    assert torch.allclose(CropMix(8)(big), torch.ones(1, 8, 8), atol=1e-6)


@pytest.mark.parametrize("mode,channels", [("1", 1), ("LA", 4), ("CMYK", 3), ("YCbCr", 3), ("I;16", 1), ("I", 1)])
def test_other_modes_are_converted(mode, channels):
    img = Image.new("RGB", (20, 20), (200, 10, 10)).convert(mode)
    out = CropMix(8, intermediate="channel_permute")(img)
    assert out.shape == (channels, 8, 8) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_num_crops_has_an_upper_bound_that_says_why():
    """Issue 22, case 8: CropMix(32, num_crops=10**7) was accepted (n=2000: 10.7 s per image)."""
    from ssl_cropmix.transforms.cropmix import MAX_NUM_CROPS, CropMix

    assert MAX_NUM_CROPS == 16
    assert CropMix(32, num_crops=MAX_NUM_CROPS).num_crops == (16,)
    for bad in (10**7, 17, (2, 3, 2000)):
        with pytest.raises(ValueError, match=r"^num_crops must be <= 16 \(cropmix\.MAX_NUM_CROPS\), got .*: every "
                           r"crop is cut, resized to the output size and mixed, so one view's time grows linearly"):
            CropMix(32, num_crops=bad)
