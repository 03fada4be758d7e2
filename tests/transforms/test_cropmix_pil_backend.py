"""CropMix ``backend="pil"``: crops against PIL's own crop + resize, mixing against a
hand-written fold, and the routing of inputs the PIL path does not take."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from pil_images import noise_pil
from ssl_cropmix.transforms import CropMix, CropMixParams, ScaleMix
from ssl_cropmix.transforms import functional as CF


def pil_ref_crops(img: Image.Image, p: CropMixParams, size: int, resample=Image.Resampling.BILINEAR) -> list[torch.Tensor]:
    """Independent reference: PIL crop() then resize() of each box, in fold order, as float."""
    out = []
    for b in (p.boxes[i] for i in p.order):
        crop = img.crop((b.left, b.top, b.left + b.width, b.top + b.height)).resize((size, size), resample)
        a = np.asarray(crop, dtype=np.float64)
        out.append(torch.from_numpy(a if a.ndim == 3 else a[..., None]).permute(2, 0, 1))
    return out


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("seed", range(6))
def test_mixup_equals_fold_of_pil_reference_crops(mode, seed):
    img = noise_pil(mode=mode, seed=seed)
    tf = CropMix(16, num_crops=(2, 3, 4), output_dtype=None, backend="pil", skip_invisible=False)
    p = tf.sample_params((img.height, img.width), generator=torch.Generator().manual_seed(seed))
    out = tf.apply_pil(img, p)
    crops = pil_ref_crops(img, p, 16)
    m = crops[0]
    for step, v in zip(p.steps, crops[1:]):  # the paper's fold, written out
        m = step.lam * m + (1 - step.lam) * v
    assert out.dtype == torch.uint8 and out.shape == (1 if mode == "L" else 3, 16, 16)
    assert (out.double() - m).abs().max() <= 0.5 + 1e-3  # rounding of the float result only


def test_float_output_is_the_unrounded_fold():
    img = noise_pil(seed=3)
    tf = CropMix(12, num_crops=3, backend="pil")
    p = tf.sample_params((img.height, img.width), generator=torch.Generator().manual_seed(1))
    out = tf.apply_pil(img, p)
    crops = pil_ref_crops(img, p, 12)
    m = crops[0]
    for step, v in zip(p.steps, crops[1:]):
        m = step.lam * m + (1 - step.lam) * v
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), m / 255, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(4))
def test_cutmix_pixels_are_exactly_pil_reference_pixels(seed):
    img = noise_pil(seed=seed)
    tf = ScaleMix(16, output_dtype=None, backend="pil", interpolation="bicubic")
    p = tf.sample_params((img.height, img.width), generator=torch.Generator().manual_seed(seed))
    out = tf.apply_pil(img, p)
    a, b = pil_ref_crops(img, p, 16, Image.Resampling.BICUBIC)
    step = p.steps[0]
    base, donor = (a, b) if step.donor == "crop" else (b, a)
    top, left, h, w = step.box
    ref = base.clone()
    ref[:, top : top + h, left : left + w] = donor[:, top : top + h, left : left + w]
    assert torch.equal(out, ref.to(torch.uint8))


def test_forward_routes_rgb_to_pil_path_and_other_inputs_to_tensor_path():
    tf = CropMix(16, output_dtype=None, backend="pil")
    img = noise_pil(seed=5)
    torch.manual_seed(0)
    out = tf(img)
    torch.manual_seed(0)
    p = tf.sample_params((img.height, img.width))
    assert torch.equal(out, tf.apply_pil(img, p))
    rgba = noise_pil(mode="RGBA", seed=5)  # not a PIL-path mode: tensor path, same params
    torch.manual_seed(0)
    out = tf(rgba)
    torch.manual_seed(0)
    p = tf.sample_params((rgba.height, rgba.width), num_channels=4)
    assert torch.equal(out, tf.apply(CF.pil_to_uint8(rgba), p))
    x = CF.pil_to_uint8(img)
    torch.manual_seed(0)
    out = tf(x)  # tensors always take the tensor path
    torch.manual_seed(0)
    assert torch.equal(out, tf.apply(x, tf.sample_params((img.height, img.width))))


def test_view_transform_gets_uint8_tensor_crops():
    seen = []

    def record(x):
        seen.append((type(x), x.dtype, tuple(x.shape)))
        return x

    tf = CropMix(8, num_crops=2, mixing="cutmix", view_transform=record, output_dtype=None, backend="pil")
    tf(noise_pil())
    assert seen == [(torch.Tensor, torch.uint8, (3, 8, 8))] * 2


@pytest.mark.parametrize(
    "kwargs, words",
    [({"backend": "cv2"}, "backend must be one of .* 'cv2'"), ({"backend": "pil", "antialias": False}, "antialias=False")],
)
def test_bad_backend_settings_raise(kwargs, words):
    with pytest.raises(ValueError, match=words):
        CropMix(8, **kwargs)


# ------------------------------------------------------------------ keep_pil
@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize(
    "backend, mixing",
    [(b, m) for b in ("pil", "tensor") for m in ("mixup", "cutmix", "resizemix")] + [("numpy", "mixup")],
)
def test_keep_pil_returns_the_same_pixels_as_a_pil_image(backend, mode, mixing):
    img = noise_pil(mode=mode, seed=7)
    common = dict(num_crops=(2, 3, 4), mixing=mixing, output_dtype=None, backend=backend)
    keep, plain = CropMix(16, keep_pil=True, **common), CropMix(16, **common)
    for seed in range(4):
        torch.manual_seed(seed)
        out = keep(img)
        torch.manual_seed(seed)
        ref = plain(img)
        assert isinstance(out, Image.Image) and out.mode == mode and out.size == (16, 16)
        assert torch.equal(CF.pil_to_uint8(out), ref)
    x = CF.pil_to_uint8(img)
    torch.manual_seed(0)
    out = keep(x)  # tensors in still give tensors out
    torch.manual_seed(0)
    assert type(out) is torch.Tensor and torch.equal(out, plain(x))


def test_keep_pil_mixup_equals_fold_of_pil_reference_crops():
    img = noise_pil(seed=11)
    tf = CropMix(16, num_crops=4, output_dtype=None, backend="pil", keep_pil=True, skip_invisible=False)
    for seed in range(5):
        p = tf.sample_params((img.height, img.width), generator=torch.Generator().manual_seed(seed))
        out = tf.apply_pil(img, p, as_pil=True)
        crops = pil_ref_crops(img, p, 16)
        m = crops[0]
        for step, v in zip(p.steps, crops[1:]):
            m = step.lam * m + (1 - step.lam) * v
        got = torch.from_numpy(np.asarray(out, dtype=np.float64)).permute(2, 0, 1)
        assert (got - m).abs().max() <= 0.5 + 1e-3


def test_keep_pil_view_transform_gets_pil_crops_and_the_paste_is_exact():
    seen = []

    def posterize(x):  # a PIL-only op: it would fail on tensors
        seen.append(type(x))
        return x.point(lambda v: v // 64 * 64)

    img = noise_pil(seed=2)
    tf = CropMix(12, num_crops=2, mixing="cutmix", view_transform=posterize, output_dtype=None,
                 backend="pil", keep_pil=True, shuffle=False)
    p = tf.sample_params((img.height, img.width), generator=torch.Generator().manual_seed(4))
    out = tf.apply_pil(img, p, as_pil=True)
    assert seen == [Image.Image, Image.Image]
    a, b = (c.to(torch.uint8) // 64 * 64 for c in pil_ref_crops(img, p, 12))
    step = p.steps[0]
    base, donor = (a, b) if step.donor == "crop" else (b, a)
    top, left, h, w = step.box
    ref = base.clone()
    ref[:, top : top + h, left : left + w] = donor[:, top : top + h, left : left + w]
    assert torch.equal(CF.pil_to_uint8(out), ref)


def test_view_transform_may_return_pil_on_the_tensor_path():
    img = noise_pil(seed=4)
    to_pil = lambda x: CF.uint8_to_pil(x).transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # noqa: E731
    flip = lambda x: x.flip(-1)  # noqa: E731
    a = CropMix(10, mixing="cutmix", view_transform=to_pil, output_dtype=None)
    b = CropMix(10, mixing="cutmix", view_transform=flip, output_dtype=None)
    x = CF.pil_to_uint8(img)
    torch.manual_seed(3)
    out = a(x)
    torch.manual_seed(3)
    assert torch.equal(out, b(x))


@pytest.mark.parametrize(
    "kwargs, err, words",
    [
        ({"keep_pil": True}, ValueError, "keep_pil=True .* output_dtype=None, got output_dtype=torch.float32"),
        ({"keep_pil": 1, "output_dtype": None}, TypeError, "keep_pil must be a bool, got 1"),
    ],
)
def test_bad_keep_pil_settings_raise(kwargs, err, words):
    with pytest.raises(err, match=words):
        CropMix(8, **kwargs)


def test_mixup_fold_weights_unroll_the_fold():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 5):
        lams = torch.rand(n - 1, generator=g, dtype=torch.float64).tolist()
        vs = torch.eye(n, dtype=torch.float64)  # crop i = unit vector i: the fold's result is the weights
        m = vs[0]
        for lam, v in zip(lams, vs[1:]):
            m = lam * m + (1 - lam) * v
        w = CF.mixup_fold_weights(lams)
        assert min(w) >= 0 and math.isclose(sum(w), 1.0, abs_tol=1e-12)
        torch.testing.assert_close(torch.tensor(w, dtype=torch.float64), m, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_uint8_to_pil_is_exact_and_inverts_pil_to_uint8(mode):
    img = noise_pil(h=7, w=9, mode=mode, seed=1)
    x = CF.pil_to_uint8(img)
    back = CF.uint8_to_pil(x)
    assert back.mode == mode and back.size == img.size and back.tobytes() == img.tobytes()
    assert CF.uint8_to_pil(x.contiguous()).tobytes() == F.to_pil_image(x).tobytes()
    two = CF.uint8_to_pil(torch.zeros(2, 3, 4, dtype=torch.uint8))  # other channel counts: to_pil_image
    assert two.mode == "LA" and two.size == (4, 3)
