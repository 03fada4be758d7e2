"""CropMix ``backend="numpy"``: the resize weights against a hand-written filter and
torchvision's antialiased resize, the two-product Mixup against a float fold of torchvision's ``resized_crop``, routing,
``keep_pil`` and the settings it refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from pil_images import noise_pil
from ssl_cropmix.transforms import CropMix, CropMixParams
from ssl_cropmix.transforms import functional as CF


def float_fold(img: Image.Image, p: CropMixParams, size: int, interpolation: str) -> torch.Tensor:
    """Independent reference: torchvision's float64 antialiased resized_crop of every box, in
    fold order, folded step by step as in the paper (``m <- lam m + (1 - lam) v``)."""
    x = F.pil_to_tensor(img).double()
    mode = InterpolationMode(interpolation)
    crops = [
        F.resized_crop(x, b.top, b.left, b.height, b.width, [size, size], interpolation=mode, antialias=True)
        for b in (p.boxes[i] for i in p.order)
    ]
    m = crops[0]
    for step, v in zip(p.steps, crops[1:]):
        m = step.lam * m + (1 - step.lam) * v
    return m


def hand_written_weights(in_size: int, out_size: int, bicubic: bool) -> np.ndarray:
    """Independent reference: the antialiased filter as PIL's ``precompute_coeffs`` and
    ATen's ``_compute_indices_min_size_weights_aa`` write it (triangle, or Keys cubic with
    ``a = -0.5``; stretched by the scale when downsampling; rows normalised to sum to 1)."""

    def kernel(x: float) -> float:
        x = abs(x)
        if not bicubic:
            return max(0.0, 1.0 - x)
        a = -0.5
        if x < 1.0:
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        if x < 2.0:
            return (((x - 5.0) * x + 8.0) * x - 4.0) * a
        return 0.0

    scale = in_size / out_size
    support = (2.0 if bicubic else 1.0) * max(scale, 1.0)
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    m = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        w = [kernel((j + lo - center + 0.5) * inv) for j in range(hi - lo)]
        m[i, lo:hi] = np.asarray(w) / sum(w)
    return m


@pytest.mark.parametrize("bicubic", [False, True])
@pytest.mark.parametrize("in_size, out_size", [(7, 32), (19, 32), (32, 32), (48, 32), (97, 16), (5, 3), (1, 4)])
def test_resize_weights_match_the_hand_written_filter(in_size, out_size, bicubic):
    w = CF.antialias_resize_weights(in_size, out_size, bicubic)
    assert w.shape == (out_size, in_size) and w.dtype == np.float64 and not w.flags.writeable
    np.testing.assert_allclose(w, hand_written_weights(in_size, out_size, bicubic), rtol=0, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("h, w, oh, ow", [(40, 48, 16, 24), (20, 30, 48, 32), (97, 61, 32, 32)])
def test_separable_product_is_torchvisions_antialiased_resize(interpolation, h, w, oh, ow):
    x = torch.rand(3, h, w, generator=torch.Generator().manual_seed(h), dtype=torch.float64)
    bicubic = interpolation == "bicubic"
    wh, ww = CF.antialias_resize_weights(h, oh, bicubic), CF.antialias_resize_weights(w, ow, bicubic)
    got = torch.tensor(wh) @ x @ torch.tensor(ww).T
    ref = F.resize(x, [oh, ow], interpolation=InterpolationMode(interpolation), antialias=True)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("h, w, size", [(32, 32, 32), (40, 48, 16), (20, 30, 48), (150, 120, 24)])
def test_mixup_is_the_rounded_float_fold_of_torchvision_crops(interpolation, mode, h, w, size):
    img = noise_pil(h, w, mode, seed=h + w)
    tf = CropMix(size, crop_scale=(0.05, 1.0), num_crops=(2, 3, 4), output_dtype=None, backend="numpy",
                 interpolation=interpolation, skip_invisible=False)
    for seed in range(6):
        p = tf.sample_params((h, w), generator=torch.Generator().manual_seed(seed))
        out = tf.apply_numpy(img, p)
        ref = float_fold(img, p, size, interpolation).clamp(0, 255)
        assert out.dtype == torch.uint8 and out.shape == (1 if mode == "L" else 3, size, size)
        # rounding of the float result only (float32 products: ties may go either way)
        assert (out.double() - ref).abs().max() <= 0.5 + 1e-3


def test_small_boxes_read_only_their_union_of_a_large_image():
    img = noise_pil(300, 400, seed=9)
    tf = CropMix(16, crop_scale=(0.01, 0.04), num_crops=3, output_dtype=None, backend="numpy", skip_invisible=False)
    for seed in range(4):
        p = tf.sample_params((300, 400), generator=torch.Generator().manual_seed(seed))
        boxes = p.boxes
        union = (max(b.top + b.height for b in boxes) - min(b.top for b in boxes)) * (
            max(b.left + b.width for b in boxes) - min(b.left for b in boxes))
        assert union * 2 <= 300 * 400  # the cropped branch is the one under test
        assert (tf.apply_numpy(img, p).double() - float_fold(img, p, 16, "bilinear")).abs().max() <= 0.5 + 1e-3


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_float_output_is_the_unrounded_fold(interpolation):
    img = noise_pil(seed=3)
    tf = CropMix(12, num_crops=4, backend="numpy", interpolation=interpolation)
    for seed in range(4):
        p = tf.sample_params((img.height, img.width), generator=torch.Generator().manual_seed(seed))
        out = tf.apply_numpy(img, p)
        assert out.dtype == torch.float32
        ref = (float_fold(img, p, 12, interpolation) / 255).clamp(0, 1)
        torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=0)


def test_forward_routes_rgb_and_l_to_numpy_and_other_inputs_to_the_tensor_path():
    tf = CropMix(16, output_dtype=None, backend="numpy")
    for mode in ("RGB", "L"):
        img = noise_pil(mode=mode, seed=5)
        torch.manual_seed(0)
        out = tf(img)
        torch.manual_seed(0)
        assert torch.equal(out, tf.apply_numpy(img, tf.sample_params((img.height, img.width))))
    rgba = noise_pil(mode="RGBA", seed=5)
    torch.manual_seed(0)
    out = tf(rgba)
    torch.manual_seed(0)
    p = tf.sample_params((rgba.height, rgba.width), num_channels=4)
    assert torch.equal(out, tf.apply(CF.pil_to_uint8(rgba), p))
    x = CF.pil_to_uint8(noise_pil(seed=5))
    torch.manual_seed(0)
    out = tf(x)
    torch.manual_seed(0)
    assert torch.equal(out, tf.apply(x, tf.sample_params((40, 48))))


def test_differs_from_the_pil_backend_by_resampling_rounding_only():
    # same params, two resamplers: PIL's fixed-point two-pass filter vs float products
    img = noise_pil(seed=12)
    a = CropMix(24, output_dtype=None, backend="numpy")
    b = CropMix(24, output_dtype=None, backend="pil")
    for seed in range(4):
        p = a.sample_params((img.height, img.width), generator=torch.Generator().manual_seed(seed))
        d = (a.apply_numpy(img, p).int() - b.apply_pil(img, p).int()).abs()
        assert d.max() <= 2 and d.double().mean() < 0.5


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"mixing": "cutmix"}, "got mixing='cutmix'"),
        ({"intermediate": "channel_permute"}, "got intermediate='channel_permute'"),
        ({"view_transform": torch.nn.Identity()}, "got view_transform=Identity()"),
        ({"interpolation": "nearest"}, "got interpolation='nearest'"),
        ({"antialias": False}, "backend='numpy' always antialiases; got antialias=False"),
    ],
)
def test_bad_numpy_backend_settings_raise_naming_the_parameter(kwargs, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        CropMix(8, backend="numpy", **kwargs)


def test_apply_numpy_refuses_other_modes_and_steps():
    tf = CropMix(8, output_dtype=None, backend="numpy")
    with pytest.raises(ValueError, match="mode .* got 'RGBA'"):
        tf.apply_numpy(noise_pil(mode="RGBA"), tf.sample_params((40, 48)))
    cut = CropMix(8, mixing="cutmix").sample_params((40, 48))
    with pytest.raises(ValueError, match="Mixup only"):
        tf.apply_numpy(noise_pil(), cut)
