"""Pure maths of transforms/functional.py against torchvision and closed-form references."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ssl_cropmix.transforms import functional as CF

LOG_RATIO = tuple(math.log(r) for r in (3 / 4, 4 / 3))


@pytest.mark.parametrize("scale,n", [((0.01, 1.0), 2), ((0.01, 1.0), 3), ((0.2, 1.0), 4), ((0.3, 0.35), 5)])
def test_split_scale_range_distinct_and_covering(scale, n):
    ranges = CF.split_scale_range(scale, n)
    assert len(ranges) == n
    assert ranges[0][0] == scale[0] and ranges[-1][1] == scale[1]
    for (lo, hi), (lo2, _) in zip(ranges, ranges[1:]):
        assert lo < hi and hi == lo2  # adjacent, non-overlapping, increasing
    widths = [hi - lo for lo, hi in ranges]
    assert max(widths) - min(widths) < 1e-12  # even split
    (a, b), (c, d) = CF.split_scale_range((0.2, 1.0), 2)
    assert (a, d) == (0.2, 1.0) and b == c == pytest.approx(0.6)


def _rounding_tol(h: int, w: int, area: int) -> float:
    # w = round(sqrt(A r)), h = round(sqrt(A / r)) => |h w - A| <= (h + w) / 2 + 1/4
    return ((h + w) / 2 + 0.25) / area


@pytest.mark.parametrize("size", [(480, 640), (32, 32)])
@pytest.mark.parametrize("scale", [(0.01, 0.2575), (0.505, 0.7525), (0.6, 1.0)])
def test_crop_box_area_fraction_in_range(size, scale):
    H, W = size
    g = torch.Generator().manual_seed(0)
    n_in = 0
    for _ in range(2000):
        top, left, h, w, target, fallback = CF.sample_crop_box(H, W, scale, LOG_RATIO, g)
        assert 0 <= top and top + h <= H and 0 <= left and left + w <= W
        if fallback:
            continue
        assert scale[0] <= target <= scale[1]
        frac = h * w / (H * W)
        tol = _rounding_tol(h, w, H * W)
        assert scale[0] - tol <= frac <= scale[1] + tol
        assert 3 / 4 - 0.5 <= w / h <= 4 / 3 + 0.5
        n_in += 1
    assert n_in > 1500


@pytest.mark.parametrize("size,scale", [((100, 200), (0.6, 1.0)), ((300, 100), (0.3, 1.0)), ((64, 64), (0.9, 1.0))])
def test_crop_box_fallback_and_in_range_rates_match_torchvision(size, scale):
    """Same algorithm as v2.RandomResizedCrop: the fallback rate and the rate of boxes whose
    real area fraction lies in the range agree with torchvision's over many samples."""
    H, W = size
    N = 3000
    rrc = v2.RandomResizedCrop(8, scale=scale)
    img = torch.zeros(1, H, W)

    def in_range(h, w):
        return scale[0] - _rounding_tol(h, w, H * W) <= h * w / (H * W) <= scale[1] + _rounding_tol(h, w, H * W)

    torch.manual_seed(0)
    tv = [rrc.make_params([img]) for _ in range(N)]
    tv_in = sum(in_range(p["height"], p["width"]) for p in tv) / N
    g = torch.Generator().manual_seed(1)
    ours = [CF.sample_crop_box(H, W, scale, LOG_RATIO, g) for _ in range(N)]
    ours_in = sum(in_range(b[2], b[3]) for b in ours) / N
    ours_fb = sum(b[5] for b in ours) / N
    sd = math.sqrt(0.25 / N)
    assert abs(ours_in - tv_in) < 5 * sd
    assert 0 < ours_fb < 1
    # the fallback box is torchvision's central crop (scale > 1 forces the fallback)
    fb_tv = v2.RandomResizedCrop(8, scale=(5.0, 6.0)).make_params([img])
    fb_tv = (fb_tv["top"], fb_tv["left"], fb_tv["height"], fb_tv["width"])
    assert CF.sample_crop_box(H, W, (5.0, 6.0), LOG_RATIO)[:4] == fb_tv
    assert all(b[:4] == fb_tv for b in ours if b[5])


@pytest.mark.parametrize("a,b", [(0.1, 0.1), (0.2, 0.2), (0.4 / 3, 0.9), (1.0, 1.0), (0.5, 3.0), (2.0, 5.0)])
def test_beta_sampler_matches_beta_distribution(a, b):
    g = torch.Generator().manual_seed(0)
    N = 20000
    xs = torch.tensor([CF.sample_beta(a, b, g) for _ in range(N)], dtype=torch.float64)
    assert ((xs >= 0) & (xs <= 1)).all()
    mean = a / (a + b)
    var = a * b / ((a + b) ** 2 * (a + b + 1))
    assert abs(xs.mean().item() - mean) < 5 * math.sqrt(var / N)
    assert abs(xs.var().item() - var) < 0.05 * var
    # two-sample Kolmogorov-Smirnov against torch.distributions.Beta
    torch.manual_seed(0)
    ref = torch.distributions.Beta(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)).sample((N,))
    grid = torch.linspace(0, 1, 501, dtype=torch.float64)
    cdf = lambda s: (s[None, :] <= grid[:, None]).double().mean(1)  # noqa: E731
    ks = (cdf(xs) - cdf(ref)).abs().max().item()
    assert ks < 1.63 * math.sqrt(2 / N)  # 1% critical value


def test_random_stream_is_deterministic_and_permutations_uniform():
    a = CF.RandomStream(torch.Generator().manual_seed(3))
    b = CF.RandomStream(torch.Generator().manual_seed(3))
    assert [a.uniform() for _ in range(200)] == [b.uniform() for _ in range(200)]
    g = CF.RandomStream(torch.Generator().manual_seed(0))
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(6000):
        p = tuple(g.permutation(3))
        counts[p] = counts.get(p, 0) + 1
    assert len(counts) == 6 and all(abs(c - 1000) < 5 * math.sqrt(1000) for c in counts.values())
    ints = [g.randint(2, 5) for _ in range(3000)]
    assert set(ints) == {2, 3, 4}


@pytest.mark.parametrize("interp", [InterpolationMode.BILINEAR, InterpolationMode.BICUBIC, InterpolationMode.NEAREST])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_resized_crop_equals_torchvision(interp, dtype):
    x = torch.randint(0, 256, (3, 90, 70), dtype=torch.uint8)
    x = x if dtype == torch.uint8 else x.float() / 255
    box = (5, 7, 60, 50)
    out = CF.resized_crop(x, box, (32, 40), interp)
    ref = F.resized_crop(x, *box, size=[32, 40], interpolation=interp, antialias=True)
    assert out.dtype == dtype and out.shape == (3, 32, 40)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # a crop already at the output size is a copy, not a view of the source
    same = CF.resized_crop(x, (0, 0, 32, 40), (32, 40))
    assert torch.equal(same, x[:, :32, :40]) and same.data_ptr() != x.data_ptr()


def test_pil_to_uint8_equals_pil_to_tensor(demo_photos):
    for img in demo_photos[:3] + [demo_photos[0].convert("L"), demo_photos[0].convert("RGBA"), demo_photos[0].convert("CMYK")]:
        assert torch.equal(CF.pil_to_uint8(img), F.pil_to_tensor(img))


def test_mixup_is_convex_combination_in_unit_scale():
    a = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    b = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    out = CF.mixup(a, b, 0.3)
    ref = 0.3 * a.double() / 255 + 0.7 * b.double() / 255
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-6)
    out2 = CF.mixup(out, b, 0.9)  # float running mix + uint8 crop
    torch.testing.assert_close(out2.double(), 0.9 * ref + 0.1 * b.double() / 255, rtol=0, atol=1e-6)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.75, 0.99])
def test_cutmix_box_area_and_bounds(lam):
    g = torch.Generator().manual_seed(0)
    H, W = 64, 48
    for _ in range(200):
        top, left, h, w = CF.cutmix_box(H, W, lam, g)
        assert 0 <= top and top + h <= H and 0 <= left and left + w <= W
        # clipped box is at most the unclipped sqrt(1-lam) box
        assert h <= int(H * math.sqrt(1 - lam)) and w <= int(W * math.sqrt(1 - lam))


@pytest.mark.parametrize("tau", [0.1, 0.37, 0.8, 1.0])
def test_resize_paste_box_area_is_tau_squared(tau):
    g = torch.Generator().manual_seed(0)
    for H, W in [(224, 224), (32, 32), (40, 64)]:
        top, left, h, w = CF.resize_paste_box(H, W, tau, g)
        assert 0 <= top and top + h <= H and 0 <= left and left + w <= W
        assert abs(h - tau * H) <= 0.5 and abs(w - tau * W) <= 0.5
        assert abs(h * w / (H * W) - tau**2) <= (0.5 * (H + W) + 0.25) / (H * W) + 1e-12


def test_visible_fold_weights_move_a_weighted_sum_by_less_than_half_a_level():
    g = torch.Generator().manual_seed(0)
    worst, dropped_any = 0.0, 0
    for _ in range(3000):
        n = int(torch.randint(2, 5, (1,), generator=g))
        lams = [CF.sample_beta(0.4 / n, 0.4 / n, g) for _ in range(n - 1)]
        w = CF.mixup_fold_weights(lams)
        v = CF.visible_fold_weights(w)
        assert math.isclose(sum(v), 1.0, rel_tol=0, abs_tol=1e-12)
        gone = [i for i in range(n) if v[i] == 0.0 and w[i] > 0.0]
        assert sum(w[i] for i in gone) * 255 < 0.5
        kept = [i for i in range(n) if v[i] > 0]
        assert all(w[i] <= w[k] for i in gone for k in kept)  # the smallest weights go
        assert all(math.isclose(v[k], w[k] / (1 - sum(w[i] for i in gone)), rel_tol=1e-12) for k in kept)
        dropped_any += bool(gone)
        for x in (torch.rand(n, generator=g) * 255, torch.randint(0, 2, (n,), generator=g) * 255.0):
            xs = x.tolist()
            worst = max(worst, abs(sum(a * b for a, b in zip(v, xs)) - sum(a * b for a, b in zip(w, xs))))
    assert worst < 0.5 and dropped_any > 1000
    assert CF.visible_fold_weights([0.3, 0.7]) == [0.3, 0.7]  # nothing below half a level
    assert CF.visible_fold_weights([0.001, 0.0005, 0.9985]) == [0.0, 0.0, 1.0]
    assert CF.visible_fold_weights([0.0015, 0.0015, 0.997], levels=255) == [0.0, 0.0015 / 0.9985, 0.997 / 0.9985]


def test_a_third_of_the_papers_mixup_crops_are_invisible_in_uint8():
    """The share that CropMix's docstring and the benchmarks quote: alpha 0.4, n in {2, 3, 4}."""
    from ssl_cropmix.transforms import CropMix

    t = CropMix(32, crop_scale=(0.2, 1.0), num_crops=(2, 3, 4), alpha=0.4)
    g = torch.Generator().manual_seed(1)
    crops = gone = 0
    for _ in range(6000):
        p = t.sample_params((100, 100), g)
        v = CF.visible_fold_weights(CF.mixup_fold_weights([s.lam for s in p.steps]))
        crops += len(v)
        gone += sum(x == 0.0 for x in v)
    assert 0.37 < gone / crops < 0.41
