"""CropMix / contrastive preset / ScaleMix against hand-written references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ssl_cropmix.transforms import SCALEMIX_SETTINGS, CropMix, CropMixParams, ScaleMix, contrastive_cropmix
from ssl_cropmix.transforms import functional as CF


def noise_image(h: int = 60, w: int = 80, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def ref_crops(x: torch.Tensor, p: CropMixParams, size: int) -> list[torch.Tensor]:
    """Independent reference: torchvision's resized_crop of each box, in fold order."""
    return [
        F.resized_crop(x, b.top, b.left, b.height, b.width, [size, size], antialias=True)
        for b in (p.boxes[i] for i in p.order)
    ]


# ------------------------------------------------------------------ sampling
@pytest.mark.parametrize("crop_scale", [(0.01, 1.0), (0.2, 0.9)])
def test_each_crop_area_fraction_lies_in_its_assigned_range(crop_scale):
    t = CropMix(32, crop_scale=crop_scale, num_crops=(2, 3, 4))
    H, W = 240, 320
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(1500):
        p = t.sample_params((H, W), g)
        assert p.scale_ranges == CF.split_scale_range(crop_scale, p.num_crops)
        assert sorted(p.order) == list(range(p.num_crops)) and len(p.steps) == p.num_crops - 1
        for rng, b in zip(p.scale_ranges, p.boxes):
            assert b.scale_range == rng
            if b.fallback:
                continue
            frac = b.height * b.width / (H * W)
            tol = ((b.height + b.width) / 2 + 0.25) / (H * W)
            assert rng[0] - tol <= frac <= rng[1] + tol, (rng, frac)
            seen.add((p.num_crops, rng))
    # every range of every n was actually exercised
    assert len(seen) == 2 + 3 + 4


@pytest.mark.parametrize("choices,expected", [((2, 3, 4), {2: 1 / 3, 3: 1 / 3, 4: 1 / 3}), ((2, 2, 4), {2: 2 / 3, 4: 1 / 3}), (3, {3: 1.0})])
def test_num_crops_follows_requested_distribution_per_call(choices, expected):
    t = CropMix(32, num_crops=choices)
    N = 3000
    g = torch.Generator().manual_seed(0)
    ns = [t.sample_params((40, 40), g).num_crops for _ in range(N)]
    for n, prob in expected.items():
        assert abs(ns.count(n) / N - prob) < 4 * math.sqrt(prob * (1 - prob) / N) + 1e-9
    assert set(ns) == set(expected)
    assert t.num_crops == ((choices,) if isinstance(choices, int) else choices)  # never mutated


def test_num_crops_varies_between_calls_of_the_transform():
    calls: list[int] = []

    def count(c):
        calls.append(1)
        return c

    t = CropMix(16, num_crops=(2, 4), view_transform=count)
    per_call = []
    for _ in range(40):
        before = len(calls)
        t(noise_image(32, 32))
        per_call.append(len(calls) - before)
    assert set(per_call) == {2, 4}


def test_mixup_weights_follow_beta_alpha_over_n():
    t = CropMix(32, num_crops=2, alpha=0.4)
    g = torch.Generator().manual_seed(0)
    lams = torch.tensor([t.sample_params((40, 40), g).steps[0].lam for _ in range(4000)])
    a = 0.4 / 2
    var = a * a / ((2 * a) ** 2 * (2 * a + 1))  # Beta(a, a)
    assert abs(lams.mean().item() - 0.5) < 5 * math.sqrt(var / 4000)
    assert abs(lams.var().item() - var) < 0.1 * var


# ------------------------------------------------------------------ applying
@pytest.mark.parametrize("intermediate", [None, "channel_permute"])
def test_mixup_output_is_convex_combination_with_sampled_weights(intermediate):
    x = noise_image()
    t = CropMix(24, num_crops=(2, 3, 4), intermediate=intermediate)
    for seed in range(6):
        p = t.sample_params(x.shape[-2:], torch.Generator().manual_seed(seed))
        out = t.apply(x, p)
        crops = [c.double() / 255 for c in ref_crops(x, p, 24)]
        m = crops[0]
        for step, v in zip(p.steps, crops[1:]):
            if intermediate == "channel_permute":  # applied to the smaller-weight operand
                if step.lam < 1 - step.lam:
                    m = m[list(step.perm)]
                else:
                    v = v[list(step.perm)]
            m = step.lam * m + (1 - step.lam) * v
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), m, rtol=0, atol=2e-6)


def test_uint8_mixup_output_is_the_rounded_fold():
    x = noise_image()
    t = CropMix(24, num_crops=(2, 3, 4), output_dtype=None, skip_invisible=False)
    for seed in range(6):
        p = t.sample_params(x.shape[-2:], torch.Generator().manual_seed(seed))
        out = t.apply(x, p)
        crops = [c.double() for c in ref_crops(x, p, 24)]
        m = crops[0]
        for step, v in zip(p.steps, crops[1:]):
            m = step.lam * m + (1 - step.lam) * v
        assert out.dtype == torch.uint8
        assert (out.double() - m).abs().max() <= 0.5 + 1e-3  # one rounding, at the end


def _source_map(p: CropMixParams, size: int) -> torch.Tensor:
    """Which crop (index in fold order) each output pixel must come from."""
    src = torch.zeros(size, size, dtype=torch.long)
    for k, step in enumerate(p.steps, start=1):
        top, left, h, w = step.box
        if step.donor == "crop":  # the new crop is pasted into the running mix
            src[top : top + h, left : left + w] = k
        else:  # the running mix is pasted into the new crop
            new = torch.full_like(src, k)
            new[top : top + h, left : left + w] = src[top : top + h, left : left + w]
            src = new
    return src


def test_every_cutmix_pixel_comes_from_exactly_one_crop():
    x = noise_image()
    t = CropMix(24, num_crops=(2, 3, 4), mixing="cutmix", output_dtype=None)
    for seed in range(10):
        p = t.sample_params(x.shape[-2:], torch.Generator().manual_seed(seed))
        out = t.apply(x, p)
        assert out.dtype == torch.uint8
        crops = torch.stack(ref_crops(x, p, 24))  # (n, C, S, S)
        src = _source_map(p, 24)
        expected = torch.gather(crops, 0, src.expand(1, 3, 24, 24)).squeeze(0)
        assert torch.equal(out, expected)
        # the pixel matches its own source crop and (noise image) almost never another one
        matches = (crops == out.unsqueeze(0)).all(1).sum(0)
        assert (matches >= 1).all() and (matches == 1).float().mean() > 0.95
        for step in p.steps:
            assert 0.0 <= step.lam <= 1.0 and step.donor in ("crop", "mix")


def test_cutmix_paste_directions_are_random_and_fixed_when_asked():
    g = torch.Generator().manual_seed(0)
    donors = [CropMix(24, num_crops=2, mixing="cutmix").sample_params((40, 40), g).steps[0].donor for _ in range(400)]
    assert 150 < donors.count("crop") < 250
    assert {CropMix(24, mixing="cutmix", paste="into_crop").sample_params((40, 40)).steps[0].donor} == {"mix"}


def test_resizemix_mixing_pastes_resized_donor_with_area_tau_squared():
    x = noise_image()
    t = CropMix(32, num_crops=2, mixing="resizemix", output_dtype=None, tau_range=(0.1, 0.8))
    for seed in range(10):
        p = t.sample_params(x.shape[-2:], torch.Generator().manual_seed(seed))
        (step,) = p.steps
        assert 0.1 <= step.tau <= 0.8
        top, left, h, w = step.box
        assert abs(h * w / 32**2 - step.tau**2) <= (0.5 * 64 + 0.25) / 32**2
        out = t.apply(x, p)
        a, b = ref_crops(x, p, 32)
        base, donor = (a, b) if step.donor == "crop" else (b, a)
        expected = base.clone()
        expected[:, top : top + h, left : left + w] = F.resize(donor, [h, w], antialias=True)
        assert torch.equal(out, expected)


def test_view_transform_and_user_intermediate_are_applied():
    x = noise_image()
    seen = []
    t = CropMix(24, num_crops=3, mixing="cutmix", paste="into_mix", output_dtype=None,
                view_transform=lambda c: 255 - c, intermediate=lambda c: seen.append(c.shape) or c // 2)
    p = t.sample_params(x.shape[-2:], torch.Generator().manual_seed(0))
    out = t.apply(x, p)
    crops = [255 - c for c in ref_crops(x, p, 24)]
    m = crops[0]
    for step, v in zip(p.steps, crops[1:]):
        m = CF.paste(m, v // 2, step.box)  # donor is the new crop, halved by intermediate
    assert torch.equal(out, m) and len(seen) == 2


# ------------------------------------------------------------------ types, dtypes, composition
def test_input_types_dtypes_and_shapes(demo_photos):
    pil = demo_photos[0]
    x = F.pil_to_tensor(pil)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    out_pil = CropMix(40, generator=g())(pil)
    out_u8 = CropMix(40, generator=g())(x)
    assert type(out_pil) is torch.Tensor and out_pil.dtype == torch.float32 and out_pil.shape == (3, 40, 40)
    assert torch.equal(out_pil, out_u8)  # PIL and its uint8 tensor give the same result
    assert 0.0 <= out_pil.min() and out_pil.max() <= 1.0
    keep = CropMix(40, output_dtype=None, generator=g(), skip_invisible=False)(x)
    assert keep.dtype == torch.uint8 and torch.equal(keep, CF.to_uint8(out_u8))
    skip = CropMix(40, output_dtype=None, generator=g())(x)  # invisible crops skipped: within a level
    assert skip.dtype == torch.uint8 and (skip.int() - keep.int()).abs().max() <= 1
    f64 = CropMix(40, generator=g())(x.double() / 255)
    assert f64.dtype == torch.float64 and f64.shape == (3, 40, 40)
    # float path ~ uint8 path: torchvision's uint8 resize rounds after each of its two
    # separable passes, so a pixel may differ from the float resize by up to one level
    torch.testing.assert_close(f64.float(), out_u8, atol=1 / 255 + 1e-6, rtol=0)
    assert (f64.float() - out_u8).abs().mean() < 0.5 / 255  # ... and by far less on average
    img = CropMix((20, 30), mixing="cutmix")(tv_tensors.Image(x))
    assert isinstance(img, tv_tensors.Image) and img.shape == (3, 20, 30) and img.device == x.device
    half = CropMix(16, output_dtype=torch.float16)(pil)
    assert half.dtype == torch.float16
    gray = CropMix(16)(pil.convert("L"))
    assert gray.shape == (1, 16, 16)


def test_composes_in_v2_compose_with_labels_passed_through():
    tf = v2.Compose([CropMix(32, mixing="cutmix"), v2.Normalize([0.5] * 3, [0.25] * 3)])
    out, label = tf(Image.new("RGB", (50, 40), (255, 0, 0)), 7)
    assert out.shape == (3, 32, 32) and label == 7
    torch.testing.assert_close(out[0], torch.full((32, 32), 2.0))  # (1 - 0.5) / 0.25


def test_deterministic_under_seed_and_different_across_seeds():
    x = noise_image()
    for mixing in ("mixup", "cutmix", "resizemix"):
        a = CropMix(24, mixing=mixing, generator=torch.Generator().manual_seed(1))(x)
        b = CropMix(24, mixing=mixing, generator=torch.Generator().manual_seed(1))(x)
        c = CropMix(24, mixing=mixing, generator=torch.Generator().manual_seed(2))(x)
        assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    a = CropMix(24)(x)
    torch.manual_seed(3)
    assert torch.equal(a, CropMix(24)(x))  # generator=None follows torch's global RNG
    assert not torch.equal(a, CropMix(24)(x))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mixing", ["mixup", "cutmix", "resizemix"])
def test_device_and_dtype_preserved(device, mixing):
    x = noise_image().to(device)
    out = CropMix(24, mixing=mixing)(x)
    assert out.device == x.device and out.dtype == torch.float32 and out.shape == (3, 24, 24)
    out = CropMix(24, mixing=mixing)(x.float() / 255)
    assert out.device == x.device and out.dtype == torch.float32
    out = CropMix(24, mixing=mixing, output_dtype=None)(x)
    assert out.device == x.device and out.dtype == torch.uint8


# ------------------------------------------------------------------ presets
def test_contrastive_preset_pastes_large_scale_crop_into_small_scale_crop():
    t = contrastive_cropmix(32, view_transform=v2.RandomGrayscale(p=1.0))
    assert (t.mixing, t.num_crops, t.shuffle, t.shared_range) == ("cutmix", (2,), False, False)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        p = t.sample_params((100, 100), g)
        assert p.scale_ranges[0] == pytest.approx((0.2, 0.6)) and p.scale_ranges[1] == pytest.approx((0.6, 1.0))
        assert p.order == (0, 1) and p.steps[0].donor == "crop"  # crop 1 (0.6-1.0) into crop 0
    out = t(noise_image(100, 100))
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])  # view_transform on each crop


def test_scalemix_is_cropmix_with_one_shared_range():
    s = ScaleMix(32, generator=torch.Generator().manual_seed(0))
    c = CropMix(32, crop_scale=(0.2, 1.0), **SCALEMIX_SETTINGS, generator=torch.Generator().manual_seed(0))
    assert SCALEMIX_SETTINGS == dict(shared_range=True, num_crops=2, mixing="cutmix")
    x = noise_image()
    assert torch.equal(s(x), c(x))
    p = s.sample_params((100, 100), torch.Generator().manual_seed(1))
    assert p.scale_ranges == ((0.2, 1.0), (0.2, 1.0))
    with pytest.raises(ValueError, match="mixing"):
        ScaleMix(mixing="mixup")


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "kwargs,exc,words",
    [
        (dict(crop_scale=(0.5, 0.5)), ValueError, ["crop_scale", "(0.5, 0.5)"]),
        (dict(crop_scale=(0.8, 0.2)), ValueError, ["crop_scale", "(0.8, 0.2)"]),
        (dict(crop_scale=(0.0, 1.0)), ValueError, ["crop_scale", "(0.0, 1.0)"]),
        (dict(crop_scale=(0.1, 1.5)), ValueError, ["crop_scale", "1.5"]),
        (dict(crop_scale=0.5), TypeError, ["crop_scale", "0.5"]),
        (dict(num_crops=1), ValueError, ["num_crops", "1"]),
        (dict(num_crops=(1, 2)), ValueError, ["num_crops", "(1, 2)"]),
        (dict(num_crops=()), ValueError, ["num_crops", "()"]),
        (dict(num_crops=2.5), TypeError, ["num_crops", "2.5"]),
        (dict(alpha=0), ValueError, ["alpha", "0"]),
        (dict(alpha=-1.0), ValueError, ["alpha", "-1.0"]),
        (dict(tau_range=(0.0, 0.5)), ValueError, ["tau_range", "(0.0, 0.5)"]),
        (dict(tau_range=(0.2, 1.1)), ValueError, ["tau_range", "1.1"]),
        (dict(tau_range=(0.8, 0.2)), ValueError, ["tau_range", "(0.8, 0.2)"]),
        (dict(mixing="cutout"), ValueError, ["mixing", "cutout"]),
        (dict(interpolation="lanczos"), ValueError, ["interpolation", "lanczos"]),
        (dict(interpolation="foo"), ValueError, ["interpolation", "foo"]),
        (dict(interpolation=2), ValueError, ["interpolation", "2"]),
        (dict(paste="sideways"), ValueError, ["paste", "sideways"]),
        (dict(intermediate="rotate"), ValueError, ["intermediate", "rotate"]),
        (dict(view_transform=3), TypeError, ["view_transform", "3"]),
        (dict(size=0), ValueError, ["size", "0"]),
        (dict(ratio=(2.0, 1.0)), ValueError, ["ratio", "(2.0, 1.0)"]),
        (dict(output_dtype=torch.int32), ValueError, ["output_dtype", "int32"]),
        (dict(generator=0), TypeError, ["generator", "0"]),
    ],
)
def test_bad_settings_raise_naming_parameter_and_value(kwargs, exc, words):
    with pytest.raises(exc) as e:
        CropMix(**kwargs)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize(
    "inpt,exc,word",
    [
        ("a string", TypeError, "str"),
        (np.zeros((8, 8, 3), dtype=np.uint8), TypeError, "ndarray"),
        (tv_tensors.Mask(torch.zeros(8, 8)), TypeError, "Mask"),
        (torch.zeros(2, 3, 8, 8), ValueError, "(2, 3, 8, 8)"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), TypeError, "int32"),
    ],
)
def test_non_image_input_is_rejected(inpt, exc, word):
    with pytest.raises(exc, match=None) as e:
        CropMix(8)(inpt)
    assert word in str(e.value)


@pytest.mark.parametrize("backend", ["tensor", "pil", "numpy"])
def test_single_input_shortcut_equals_transform_forward(backend):
    """CropMix.forward's one-input shortcut gives what torchvision's Transform.forward gives."""
    tf = CropMix(16, output_dtype=None, backend=backend)
    x = noise_image(40, 48, seed=4)
    pil = F.to_pil_image(x)
    for inpt in (pil, x, tv_tensors.Image(x), pil.convert("L")):
        torch.manual_seed(5)
        out = tf(inpt)
        torch.manual_seed(5)
        ref = v2.Transform.forward(tf, inpt)
        assert type(out) is type(ref) and torch.equal(out, ref)
    torch.manual_seed(5)
    out = tf({"image": pil, "label": 3})  # other structures: Transform.forward
    torch.manual_seed(5)
    assert out["label"] == 3 and torch.equal(out["image"], tf(pil))
    with pytest.raises(TypeError, match="BoundingBoxes"):
        tf(tv_tensors.BoundingBoxes(torch.zeros(1, 4), format="XYXY", canvas_size=(8, 8)))


def test_single_inputs_take_the_shortcut_and_other_structures_do_not(monkeypatch):
    def pytree_forward(self, *inputs):
        raise AssertionError("Transform.forward called")

    monkeypatch.setattr(v2.Transform, "forward", pytree_forward)
    tf = CropMix(16, output_dtype=None, backend="numpy")
    x = noise_image(40, 48, seed=4)
    for inpt in (F.to_pil_image(x), x, tv_tensors.Image(x)):
        assert tf(inpt).shape == (3, 16, 16)
    with pytest.raises(AssertionError, match="Transform.forward called"):
        tf({"image": x})


# ------------------------------------------------------------------ invisible crops (skip_invisible)
def _fold_weights_by_hand(p: CropMixParams) -> list[float]:
    """Independent reference: the paper's fold ``m <- lam m + (1 - lam) v`` run on unit
    vectors, i.e. each crop's weight in the mixed image, in fold order."""
    n = len(p.order)
    m = torch.zeros(n, dtype=torch.float64)
    m[0] = 1.0
    for k, step in enumerate(p.steps, start=1):
        m = step.lam * m + (1 - step.lam) * torch.eye(n, dtype=torch.float64)[k]
    return m.tolist()


def test_invisible_crops_are_not_resized_and_the_output_stays_within_a_level(monkeypatch):
    """uint8 Mixup: a crop whose weight (with the other skipped ones) is below half a level
    is not resized; the output is the rounded fold of the other crops with their weights
    rescaled to sum to 1, within one level of the full fold; the random numbers are the
    same as without skipping."""
    x = noise_image(64, 72, seed=4)
    calls = []
    real = CF.resized_crop
    monkeypatch.setattr(CF, "resized_crop", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    skip, full = (CropMix(24, crop_scale=(0.2, 1.0), num_crops=(2, 3, 4), output_dtype=None, skip_invisible=s)
                  for s in (True, False))
    skipped = 0
    for seed in range(40):
        p = skip.sample_params((64, 72), torch.Generator().manual_seed(seed))
        assert p == full.sample_params((64, 72), torch.Generator().manual_seed(seed))
        w = _fold_weights_by_hand(p)
        ranked = sorted(range(len(w)), key=w.__getitem__)
        drop = [i for j, i in enumerate(ranked) if sum(w[r] for r in ranked[: j + 1]) < 0.5 / 255]
        calls.clear()
        out = skip.apply(x, p)
        assert len(calls) == len(w) - len(drop)  # the invisible crops were neither cut nor resized
        skipped += len(drop)
        crops = [c.double() for c in ref_crops(x, p, 24)]
        full_fold = sum(wi * c for wi, c in zip(w, crops))
        s = sum(w[i] for i in drop)
        kept_fold = sum(w[i] / (1 - s) * crops[i] for i in range(len(w)) if i not in drop)
        assert out.dtype == torch.uint8
        assert (out.double() - kept_fold).abs().max() <= 0.5 + 1e-3  # one rounding of the kept fold
        assert (out.double() - full_fold).abs().max() <= 1.0 + 1e-3  # within a level of the full fold
        if not drop:
            assert torch.equal(out, full.apply(x, p))
    assert skipped >= 10  # the case under test happened (39 % of crops with these settings)


def test_skipping_leaves_flat_images_float_outputs_and_other_mixings_unchanged():
    flat = torch.full((3, 50, 60), 173, dtype=torch.uint8)
    x = noise_image(50, 60, seed=2)
    for seed in range(12):
        g = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
        # a flat image: the rescaled weights still sum to 1, so every pixel keeps its value
        assert torch.equal(CropMix(16, output_dtype=None, generator=g())(flat), flat[:, :16, :16])
        # float output (nothing rounded) and CutMix / channel_permute / view_transform: every crop
        for kw in (dict(), dict(mixing="cutmix", output_dtype=None),
                   dict(intermediate="channel_permute", output_dtype=None),
                   dict(view_transform=lambda v: v, output_dtype=None)):
            a = CropMix(16, generator=g(), **kw)(x)
            b = CropMix(16, generator=g(), skip_invisible=False, **kw)(x)
            assert torch.equal(a, b), kw


def test_every_backend_skips_within_a_level_of_its_full_fold(monkeypatch):
    """PIL input through each backend: only the visible crops are resized (PIL ``resize``
    calls, the NumPy products' boxes, the tensor path's ``resized_crop`` calls, counted), and
    the output is within one level of the same backend's full fold."""
    from pil_images import noise_pil

    resized = []
    real_pil, real_numpy, real_tensor = Image.Image.resize, CF.mixup_resized_crops, CF.resized_crop
    monkeypatch.setattr(Image.Image, "resize", lambda self, *a, **k: resized.append(1) or real_pil(self, *a, **k))
    monkeypatch.setattr(CF, "mixup_resized_crops", lambda x, boxes, *a: resized.extend([1] * len(boxes)) or
                        real_numpy(x, boxes, *a))
    monkeypatch.setattr(CF, "resized_crop", lambda *a, **k: resized.append(1) or real_tensor(*a, **k))
    img = noise_pil(56, 64, seed=6)
    for backend in ("pil", "numpy", "tensor"):
        skip, full = (CropMix(16, num_crops=(2, 3, 4), output_dtype=None, backend=backend, skip_invisible=s)
                      for s in (True, False))
        skipped = 0
        for seed in range(10):
            p = skip.sample_params((56, 64), torch.Generator().manual_seed(seed))
            visible = sum(w > 0 for w in CF.visible_fold_weights(_fold_weights_by_hand(p)))
            resized.clear()
            a = skip.transform(img, {"params": p})
            assert len(resized) == visible, (backend, seed)
            resized.clear()
            b = full.transform(img, {"params": p})
            assert len(resized) == p.num_crops, (backend, seed)
            skipped += p.num_crops - visible
            assert a.dtype == b.dtype == torch.uint8
            assert (a.int() - b.int()).abs().max() <= 1, (backend, seed)
        assert skipped >= 3, backend  # the case under test happened
    with pytest.raises(TypeError, match="skip_invisible must be a bool, got 'yes'"):
        CropMix(16, skip_invisible="yes")
