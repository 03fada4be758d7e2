"""Device-side views (``augment_on="device"``): kernels against torchvision, statistical
equivalence with the worker path on the same images (KS tests, fixed seed, >= 2,000 draws
each; p-values printed, run with ``-s``), per-sample independence, seeding, ranks, and a
full short fit with the online probe."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ssl_cropmix.data import views as V
from ssl_cropmix.data.device_views import (
    ColourParams,
    DecodeToUint8,
    DeviceViews,
    RawImages,
    box_masks,
    colour_augment,
    colour_spec,
    crop_resize_weights,
    cutmix_fold,
    pad_collate,
    resized_crops,
    sample_colour_params,
)
from ssl_cropmix.transforms.functional import mixup_fold_weights, pil_to_uint8

N = 2000  # draws per path in every statistical test
P_MIN = 1e-3  # fixed seeds: deterministic, so a pass never flakes


# --------------------------------------------------------------------------- statistics
def ks_2samp(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and asymptotic p-value (Stephens' small-sample
    correction), written here so the tests need no scipy. Discrete samples (box areas) must
    share a dtype, or float32 / float64 roundings of one value split its ties."""
    a, b = a.double().flatten().sort().values, b.double().flatten().sort().values
    allv = torch.cat([a, b])
    fa = torch.searchsorted(a, allv, right=True).double() / len(a)
    fb = torch.searchsorted(b, allv, right=True).double() / len(b)
    d = float((fa - fb).abs().max())
    ne = len(a) * len(b) / (len(a) + len(b))
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    if lam < 0.2:  # Q(0.2) = 1 to 15 digits; the series converges slowly there
        return d, 1.0
    p = 2.0 * sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 101))
    return d, min(max(p, 0.0), 1.0)


def proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of the two-proportion z-test (rates of a binary op)."""
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(max(p * (1 - p) * (1 / n1 + 1 / n2), 1e-300))
    z = abs(k1 / n1 - k2 / n2) / se
    return math.erfc(z / math.sqrt(2))


def check_ks(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    d, p = ks_2samp(a, b)
    print(f"KS {name}: D={d:.4f} p={p:.3g} (n={a.numel()}, {b.numel()})")
    assert a.numel() >= N and b.numel() >= N
    assert p > P_MIN, f"{name}: worker and device distributions differ (D={d:.4f}, p={p:.3g})"


def check_rate(name: str, k1: int, n1: int, k2: int, n2: int) -> None:
    p = proportion_p(k1, n1, k2, n2)
    print(f"rate {name}: worker {k1 / n1:.4f} device {k2 / n2:.4f} p={p:.3g}")
    assert p > P_MIN, f"{name}: rates differ ({k1 / n1:.4f} vs {k2 / n2:.4f}, p={p:.3g})"


def test_ks_helper_matches_a_reference():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(700, generator=g), torch.randn(900, generator=g) + 0.1
    d, p = ks_2samp(a, b)
    ref = scipy_stats.ks_2samp(a.numpy(), b.numpy(), method="asymp")
    assert d == pytest.approx(ref.statistic, abs=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=0.05, abs=1e-4)


# --------------------------------------------------------------------------- images
def photos(sizes=((48, 64), (64, 40), (56, 56), (40, 72))) -> list[Image.Image]:
    """Real photos (scikit-image demo set) at a few different sizes."""
    from ssl_cropmix.data.demo import demo_images

    ims = demo_images()
    return [ims[i % len(ims)].resize((w, h), Image.Resampling.BILINEAR) for i, (h, w) in enumerate(sizes)]


def raw_batch(images: list[Image.Image], reps: int) -> RawImages:
    samples = [(pil_to_uint8(im).contiguous(), i) for _ in range(reps) for i, im in enumerate(images)]
    return pad_collate(samples)


def device_outputs(dv: DeviceViews, images: list[Image.Image], n: int, chunk: int = 500):
    """``n`` device views of ``images`` (cycled), as ``(query, key)`` or images."""
    reps = max(1, chunk // len(images))
    raw = raw_batch(images, reps)
    outs = []
    while sum(len(o[0] if isinstance(o, tuple) else o) for o in outs) < n:
        outs.append(dv(raw.images, raw.sizes))
    if isinstance(outs[0], tuple):
        return tuple(torch.cat([o[i] for o in outs])[:n] for i in range(2))
    return torch.cat(outs)[:n]


def worker_outputs(tf, images: list[Image.Image], n: int) -> list:
    return [tf(images[i % len(images)]) for i in range(n)]


def mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.float().flatten(1)
    return x.mean(1), x.std(1)


# --------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("bicubic", [False, True])
def test_matrix_resize_equals_torchvision_resized_crop(bicubic):
    """Up- and downsampling crops of a padded batch equal torchvision's float antialiased
    resized_crop of the unpadded image (independent reference)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8, generator=g)
    boxes = torch.tensor([[[3, 5, 30, 40], [0, 0, 50, 70]], [[10, 20, 12, 9], [1, 2, 40, 61]]])
    out = resized_crops(x.float(), boxes, (24, 32), "matrix", bicubic)
    mode = InterpolationMode.BICUBIC if bicubic else InterpolationMode.BILINEAR
    for b in range(2):
        for c in range(2):
            ref = F.resized_crop(x[b].float(), *boxes[b, c].tolist(), [24, 32], interpolation=mode, antialias=True)
            torch.testing.assert_close(out[b, c], ref, atol=1e-3, rtol=0)
    w = crop_resize_weights(torch.tensor([3]), torch.tensor([30]), 24, 50)
    assert (w[0, :, :3] == 0).all() and (w[0, :, 33:] == 0).all()  # nothing read outside the crop
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 24))


def test_other_resize_kernels_and_mixup_fold():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 40, 48), dtype=torch.uint8, generator=g)
    boxes = torch.tensor([[[0, 0, 40, 48], [5, 6, 20, 30]], [[2, 3, 33, 40], [0, 10, 16, 16]]])
    exact = resized_crops(x, boxes, (16, 16), "matrix")
    torch.testing.assert_close(resized_crops(x.float() / 255, boxes, (16, 16), "interpolate"), exact, atol=1e-5, rtol=0)
    u8 = resized_crops(x, boxes, (16, 16), "interpolate")  # native uint8 kernel, rounded
    assert (u8 - exact).abs().max() <= 1.0 / 255 + 1e-6
    roi = resized_crops(x, boxes, (16, 16), "roi_align")
    # an approximation of the same filter: 0.021 here; aligned=False gives 0.094, a fixed
    # sampling_ratio=2 0.055, a box one row off 0.084
    assert (roi - exact).abs().mean() < 0.03
    w = torch.tensor([[0.3, 0.7], [1.0, 0.0]])
    torch.testing.assert_close(resized_crops(x, boxes, (16, 16), "matrix", weights=w),
                               (exact * w[:, :, None, None, None]).sum(1), atol=1e-5, rtol=0)


def test_cutmix_fold_takes_every_pixel_from_exactly_one_source():
    a, b = torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)
    views = torch.stack([a, b], 1)
    boxes = torch.tensor([[[1, 2, 3, 4]], [[0, 0, 8, 8]]])
    from_mix = torch.tensor([[False], [True]])
    out = cutmix_fold(views, boxes, from_mix)
    mask = box_masks(boxes[:, 0], (8, 8)).expand(2, 3, 8, 8)
    assert torch.equal(out[0], mask[0].float())  # the box comes from the crop (donor="crop")
    assert torch.equal(out[1], 1 - mask[1].float())  # donor="mix": the box keeps the mix
    assert int(mask[0, 0].sum()) == 12


def test_colour_ops_equal_torchvision_per_sample():
    """Flip, jitter in each sample's own order, grayscale and blur equal torchvision's
    functional ops applied one sample at a time."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 3, 20, 20, generator=g)
    spec = colour_spec(V.moco_v2_augmentation(20, blur_prob=0.5))
    p = sample_colour_params(6, spec, g)
    p = p._replace(jitter=torch.tensor([True, True, True, True, False, True]),
                   blur=torch.tensor([True, False, True, False, True, False]),
                   gray=torch.tensor([False, True, False, False, False, False]))
    x_before = x.clone()
    out = colour_augment(x, p, spec)
    assert torch.equal(x, x_before)  # the input batch is left as it was
    ops = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
    for i in range(6):
        y = x[i].flip(-1) if p.flip[i] else x[i]
        if p.jitter[i]:
            for op in p.order[i].tolist():
                y = ops[op](y, float(p.factors[i, op]))
        if p.gray[i]:
            y = F.rgb_to_grayscale(y, num_output_channels=3)
        if p.blur[i]:
            y = F.gaussian_blur(y, [13, 13], [float(p.sigma[i])] * 2)
        torch.testing.assert_close(out[i], y, atol=2e-5, rtol=0)


# --------------------------------------------------------------------------- worker spies
def spy_colour(recipe) -> dict[str, list]:
    """Record every colour decision a worker recipe makes (wraps its own transforms)."""
    rec: dict[str, list] = {"jitter": [], "gray": [], "flip": [], "blur": []}

    def walk(t):
        for s in getattr(t, "transforms", []):
            walk(s)
        if getattr(t, "view_transform", None) is not None:
            walk(t.view_transform)
        if isinstance(t, v2.ColorJitter):
            orig = t.make_params
            t.make_params = lambda fi, o=orig: rec["jitter"].append(o(fi)) or rec["jitter"][-1]
        elif isinstance(t, (v2.RandomGrayscale, v2.RandomHorizontalFlip)):
            key = "gray" if isinstance(t, v2.RandomGrayscale) else "flip"
            orig_fwd = t.forward

            def fwd(*inputs, o=orig_fwd, k=key, tr=t):
                calls = []
                orig_tf = tr.transform
                tr.transform = lambda inpt, params: calls.append(1) or orig_tf(inpt, params)
                try:
                    return o(*inputs)
                finally:
                    tr.transform = orig_tf
                    rec[k].append(bool(calls))

            t.forward = fwd
        elif isinstance(t, V.RandomGaussianBlurPIL):
            orig_b = t.make_params
            t.make_params = lambda fi, o=orig_b: rec["blur"].append(o(fi)) or rec["blur"][-1]

    walk(recipe)
    return rec


def sample_device_colour(n: int, spec, seed: int = 0) -> ColourParams:
    return sample_colour_params(n, spec, torch.Generator().manual_seed(seed))


def test_colour_op_rates_and_parameters_match_the_worker_path():
    """Rates of flip / jitter / grayscale / blur, the jitter factors, the op order and the
    blur sigma: the worker recipe (spied) vs the device sampler, >= 2,000 draws each."""
    img = photos()[0]
    key = V.moco_v2_augmentation(32, blur_prob=0.5)
    rec = spy_colour(key)
    m = int(N / 0.8) + 200  # jitter applies with p = 0.8: >= N recorded jitter draws
    for _ in range(m):
        key(img)
    dev = sample_device_colour(m, colour_spec(key))
    for name in ("flip", "gray"):
        check_rate(name, sum(rec[name]), len(rec[name]), int(getattr(dev, name).sum()), m)
    check_rate("jitter", len(rec["jitter"]), m, int(dev.jitter.sum()), m)
    check_rate("blur", sum(b["apply"] for b in rec["blur"]), m, int(dev.blur.sum()), m)
    names = ["brightness_factor", "contrast_factor", "saturation_factor", "hue_factor"]
    for j, name in enumerate(names):
        check_ks(name, torch.tensor([r[name] for r in rec["jitter"]]), dev.factors[:, j])
    order = torch.stack([r["fn_idx"] for r in rec["jitter"]])
    for pos in (0, 3):  # each op equally often first / last
        for op in range(4):
            check_rate(f"op {op} at position {pos}", int((order[:, pos] == op).sum()), len(order),
                       int((dev.order[:, pos] == op).sum()), m)
    check_ks("blur sigma", torch.tensor([b["sigma"] for b in rec["blur"]]), dev.sigma)


# --------------------------------------------------------------------------- crop statistics
def test_rrc_area_fraction_matches_worker_path_from_outputs():
    """Area fraction of the RRC crop measured from the outputs: row / column ramps make each
    output pixel tell where it was read from. MAE's RRC view (no colour ops), same images."""
    h, w = 60, 56
    ys = torch.arange(h).view(h, 1).expand(h, w) * 4
    xs = torch.arange(w).view(1, w).expand(h, w) * 4
    ramp = torch.stack([ys, xs, torch.zeros_like(ys)]).to(torch.uint8)
    img = F.to_pil_image(ramp)
    mean, std = torch.tensor(V.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(V.IMAGENET_STD).view(3, 1, 1)

    def area(out: torch.Tensor) -> torch.Tensor:
        x = (out.float() * std + mean) * 255 / 4  # back to source pixel indices
        rows = x[..., 0, :, :].flatten(-2)
        cols = x[..., 1, :, :].flatten(-2)
        return (rows.amax(-1) - rows.amin(-1) + 1) * (cols.amax(-1) - cols.amin(-1) + 1) / (h * w)

    worker = torch.stack(worker_outputs(V.mae_view("rrc", 24), [img], N))
    dv = DeviceViews("mae", mae_view="rrc", size=24, generator=torch.Generator().manual_seed(0))
    device = device_outputs(dv, [img], N)
    check_ks("RRC area fraction (outputs)", area(worker), area(device))


def _worker_cropmix_params(query: str, images, n: int):
    from ssl_cropmix.data.device_views import _find
    from ssl_cropmix.transforms import CropMix

    cm = _find(V.moco_query(query, 32), CropMix)
    g = torch.Generator().manual_seed(123)
    return [cm.sample_params((im.height, im.width), generator=g) for im in (images[i % len(images)] for i in range(n))]


@pytest.mark.parametrize("query", ["cropmix", "contrastive", "scalemix"])
def test_cropmix_parameters_match_worker_path(query):
    """Per scale range crop-area fractions, Mixup weights and CutMix pasted area: the worker
    recipe's own CropMix (sampled per image) vs the device slots, same image sizes."""
    images = photos()
    draws = 3 * N + 400 if query == "cropmix" else N  # n in {2, 3, 4}: >= N draws per (n, range)
    wp = _worker_cropmix_params(query, images, draws)
    dv = DeviceViews("moco", query, size=32, generator=torch.Generator().manual_seed(7))
    sizes = torch.tensor([[im.height, im.width] for im in images] * (draws // len(images)))
    slots = dv.sample(sizes).query
    hw = (sizes[:, 0] * sizes[:, 1]).double()[:, None]
    frac = slots.boxes[..., 2] * slots.boxes[..., 3] / hw
    w_frac: dict[tuple[int, int], list[float]] = {}
    for p in wp:
        for r, b in enumerate(p.boxes):
            w_frac.setdefault((p.num_crops, r), []).append(b.height * b.width / (p.image_size[0] * p.image_size[1]))
    n_dev = slots.valid.sum(1)
    for (n, r), vals in sorted(w_frac.items()):
        sel = (n_dev == n)[:, None] & (slots.scale_index == r)
        d = frac[sel]
        check_ks(f"{query} area fraction n={n} range {r}", torch.tensor(vals, dtype=torch.float64), d)
        lo, hi = (0.2, 1.0) if query == "scalemix" else (0.2 + 0.8 * r / n, 0.2 + 0.8 * (r + 1) / n)
        drawn = d[~slots.target_scale[sel].isnan()]  # torchvision's central fallback may leave the range
        assert drawn.numel() > d.numel() // 2
        assert (drawn >= lo - 0.05).all() and (drawn <= hi + 0.05).all()  # box rounding only
    all_w = torch.tensor([len(p.boxes) for p in wp], dtype=torch.float64)
    check_ks(f"{query} crop count", all_w, n_dev.double())
    if query == "cropmix":
        ww = torch.tensor([max(mixup_fold_weights([s.lam for s in p.steps])) for p in wp], dtype=torch.float64)
        wf = torch.tensor([mixup_fold_weights([s.lam for s in p.steps])[0] for p in wp], dtype=torch.float64)
        check_ks("Mixup max weight", ww, slots.weights.max(1).values)
        check_ks("Mixup first-crop weight", wf, slots.weights[:, 0])
        torch.testing.assert_close(slots.weights.sum(1), torch.ones(len(sizes), dtype=torch.float64))
    else:
        wa = torch.tensor([s.box[2] * s.box[3] / 32**2 for p in wp for s in p.steps], dtype=torch.float64)
        masks = box_masks(slots.paste_boxes, (32, 32))  # the masks the device path applies
        check_ks(f"{query} CutMix pasted area", wa, masks.flatten(2).double().mean(-1).flatten())
        if query == "scalemix":
            check_rate("ScaleMix donor=mix", sum(s.donor == "mix" for p in wp for s in p.steps), len(wp),
                       int(slots.paste_from_mix.sum()), len(sizes))
        else:
            assert not slots.paste_from_mix.any()  # the large-scale crop is pasted into the small one


# --------------------------------------------------------------------------- outputs
OUTPUT_CASES = [
    ("key", None),
    ("plain", None),
    ("cropmix", None),
    ("contrastive", None),
    ("scalemix", None),
    ("mae", "rrc"),
    ("mae", "cropmix_mixup"),
    ("mae", "cropmix_cutmix"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", OUTPUT_CASES, ids=[c[1] or c[0] for c in OUTPUT_CASES])
def test_output_mean_and_std_per_image_match_worker_path(case):
    """Per-image mean and std of the final (normalised) views: worker path vs device path
    on the same real photos (various sizes), >= 2,000 views each."""
    what, mae = case
    images = photos(((24, 32), (32, 20), (28, 28), (20, 36)))
    size = 16
    if what == "mae":
        worker_tf = V.mae_view(mae, size)
        dv = DeviceViews("mae", mae_view=mae, size=size, generator=torch.Generator().manual_seed(1))
        w_out = torch.stack(worker_outputs(worker_tf, images, N))
        d_out = device_outputs(dv, images, N)
    else:
        query = "plain" if what == "key" else what
        pair = V.moco_views(query, size)
        worker_tf = pair.key if what == "key" else pair.query  # the recipe of augment_on="workers"
        dv = DeviceViews("moco", query, size=size, generator=torch.Generator().manual_seed(1))
        w_out = torch.stack(worker_outputs(worker_tf, images, N))
        q, k = device_outputs(dv, images, N)
        d_out = k if what == "key" else q
    assert w_out.shape == d_out.shape == (N, 3, size, size)
    (wm, ws), (dm, ds) = mean_std(w_out), mean_std(d_out)
    check_ks(f"{mae or what} per-image mean", wm, dm)
    check_ks(f"{mae or what} per-image std", ws, ds)


@pytest.mark.slow
def test_key_view_with_blur_matches_worker_path():
    """Large-image recipe (blur p=0.5, PIL's box-approximated Gaussian on the workers, a true
    Gaussian on the device): per-image mean and std of the key view."""
    images = photos()
    key = V.moco_v2_augmentation(40, blur_prob=0.5)
    dv = DeviceViews("moco", "plain", size=40, small_image=False, generator=torch.Generator().manual_seed(2))
    w_out = torch.stack(worker_outputs(key, images, N))
    _, d_out = device_outputs(dv, images, N, chunk=250)
    (wm, ws), (dm, ds) = mean_std(w_out), mean_std(d_out)
    check_ks("key (blur) per-image mean", wm, dm)
    check_ks("key (blur) per-image std", ws, ds)


# --------------------------------------------------------------------------- independence, seeds, ranks
def test_every_sample_in_a_batch_has_its_own_parameters():
    """One image repeated 64 times: no two samples share a box, colour parameters or output."""
    raw = raw_batch(photos()[:1], 64)
    dv = DeviceViews("moco", "contrastive", size=32, small_image=False, generator=torch.Generator().manual_seed(0))
    p = dv.sample(raw.sizes)
    rows = torch.cat([p.key.boxes.flatten(1).double(), p.key_colour.factors.double(), p.key_colour.sigma[:, None].double(),
                      p.query.boxes.flatten(1).double(), p.query.paste_boxes.flatten(1).double()], 1)
    assert len({tuple(r.tolist()) for r in rows}) == 64
    assert len({tuple(r.tolist()) for r in p.query_colour.factors}) == 128  # one per crop
    q, k = dv.apply(raw.images, p)
    for out in (q, k):
        flat = out.flatten(1)
        dist = torch.cdist(flat, flat) + torch.eye(64) * 1e9
        assert dist.min() > 1e-3


def test_seeded_determinism_and_different_ranks():
    raw = raw_batch(photos(), 8)
    a = DeviceViews("moco", "cropmix", size=32, generator=torch.Generator().manual_seed(5))
    b = DeviceViews("moco", "cropmix", size=32, generator=torch.Generator().manual_seed(5))
    qa, ka = a(raw.images, raw.sizes)
    qb, kb = b(raw.images, raw.sizes)
    assert torch.equal(qa, qb) and torch.equal(ka, kb)
    qa2, _ = a(raw.images, raw.sizes)
    assert not torch.equal(qa, qa2)  # the generator moves on
    # ranks: the same global seed, rank mixed in
    r0, r0b, r1 = (DeviceViews("moco", "cropmix", size=32) for _ in range(3))
    r0.seed_for_rank(0, seed=11)
    r0b.seed_for_rank(0, seed=11)
    r1.seed_for_rank(1, seed=11)
    s0, s0b, s1 = (r.sample(raw.sizes) for r in (r0, r0b, r1))
    assert torch.equal(s0.key.boxes, s0b.key.boxes) and torch.equal(s0.query.boxes, s0b.query.boxes)
    assert not torch.equal(s0.key.boxes, s1.key.boxes)
    assert not torch.equal(s0.key_colour.factors, s1.key_colour.factors)
    # generator=None: seeded from torch's global RNG (seed_everything) on first use
    torch.manual_seed(3)
    g1 = DeviceViews("moco", "plain", size=32).sample(raw.sizes)
    torch.manual_seed(3)
    g2 = DeviceViews("moco", "plain", size=32).sample(raw.sizes)
    assert torch.equal(g1.key.boxes, g2.key.boxes)


def test_output_dtype_and_autocast_safety():
    raw = raw_batch(photos(), 2)
    dv = DeviceViews("moco", "contrastive", size=32, generator=torch.Generator().manual_seed(0))
    p = dv.sample(raw.sizes)
    q, k = dv.apply(raw.images, p)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q2, k2 = dv.apply(raw.images, p)
    assert q2.dtype == torch.float32 and torch.equal(q, q2) and torch.equal(k, k2)
    half = DeviceViews("moco", "contrastive", size=32, output_dtype=torch.bfloat16,
                       generator=torch.Generator().manual_seed(0))
    qh, kh = half.apply(raw.images, p)
    assert qh.dtype == kh.dtype == torch.bfloat16
    torch.testing.assert_close(qh.float(), q, atol=0.03, rtol=0.01)


def test_validation_errors_name_the_argument():
    with pytest.raises(ValueError, match="query"):
        DeviceViews("moco", "nope")
    with pytest.raises(ValueError, match="resize"):
        DeviceViews(resize="bilinear")
    with pytest.raises(ValueError, match="output_dtype"):
        DeviceViews(output_dtype=torch.uint8)
    with pytest.raises(ValueError, match="max_size"):
        DecodeToUint8(0)


# --------------------------------------------------------------------------- worker side + DataModule
def test_decode_and_pad_collate_keep_true_sizes():
    big = Image.new("RGB", (300, 100), (10, 20, 30))
    x = DecodeToUint8(120)(big)
    assert x.shape == (3, 40, 120) and x.dtype == torch.uint8  # aspect kept
    small = DecodeToUint8(120)(Image.new("RGB", (30, 50), (1, 2, 3)))
    raw = pad_collate([(x, 3), (small, 4)])
    assert raw.images.shape == (2, 3, 50, 120)
    assert raw.sizes.tolist() == [[40, 120], [50, 30]] and raw.labels.tolist() == [3, 4]
    assert (raw.images[1, :, :, 30:] == 0).all() and (raw.images[1, 0, :, :30] == 1).all()


def test_datamodule_device_path_batches(tree):
    from ssl_cropmix.data.datamodule import CropMixDataModule
    from ssl_cropmix.data.recipes import MoCoViews, SupervisedViews
    from ssl_cropmix.data.sources import ImageFolderSource

    with pytest.raises(ValueError, match="augment_on must be one of"):
        MoCoViews(augment_on="gpu")
    with pytest.raises(TypeError, match="augment_on"):  # the supervised recipe has no device path
        SupervisedViews(augment_on="device")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="device_max_size is for augment_on='device'"):
        MoCoViews(device_max_size=64)
    dm = CropMixDataModule(ImageFolderSource(str(tree.parent), val_split="train"), MoCoViews("scalemix", "device"),
                           image_size=24, batch_size=5, num_workers=0, persistent_workers=False)
    raw = next(iter(dm.train_dataloader()))
    assert isinstance(raw, RawImages) and raw.images.dtype == torch.uint8
    assert raw.sizes.unique(dim=0).shape[0] > 1  # the tree's images have different sizes
    before = dm.on_before_batch_transfer(raw, 0)
    assert before is raw and dm._device_params is not None  # drawn on the CPU before the transfer
    params = dm._device_params
    (q, k), y = dm.on_after_batch_transfer(raw, 0)
    assert dm._device_params is None
    q_ref, k_ref = dm.device_views.apply(raw.images, params)  # exactly the pre-drawn parameters
    assert torch.equal(q, q_ref) and torch.equal(k, k_ref)
    assert q.shape == k.shape == (5, 3, 24, 24) and q.dtype == torch.float32 and torch.equal(y, raw.labels)
    (q2, k2), _ = dm.on_after_batch_transfer(raw, 0)  # without the "before" hook: drawn here, fresh
    assert q2.shape == k2.shape == q.shape and not torch.equal(q2, q) and dm._device_params is None
    val = next(iter(dm.val_dataloader()))  # evaluation batches: normalised by the workers, passed through
    assert dm.on_after_batch_transfer(val, 0) is val and val[0].dtype == torch.float32
    assert dm.train_transform() is not None  # the worker recipe is still there (show-views)


@pytest.mark.slow
def test_short_fit_on_device_views_with_online_probe(tmp_path, monkeypatch):
    import pytorch_lightning as pl
    from torch import nn

    from ssl_cropmix.callbacks.online_probe import OnlineLinearProbe
    from ssl_cropmix.data.datamodule import CropMixDataModule
    from ssl_cropmix.data.recipes import MoCoViews
    from ssl_cropmix.data.sources import DemoSource
    from ssl_cropmix.methods.moco import MoCoCropMix

    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    pl.seed_everything(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())
    dm = CropMixDataModule(DemoSource(), MoCoViews("contrastive", augment_on="device"), image_size=32, batch_size=8,
                           num_workers=0, persistent_workers=False)
    seen = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch)

    model = MoCoCropMix(backbone=backbone, queue_size=64, base_lr=0.03)
    probe = OnlineLinearProbe()
    trainer = pl.Trainer(max_steps=3, limit_val_batches=2, val_check_interval=3, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[probe, Spy()])
    trainer.fit(model, dm)
    assert trainer.global_step == 3
    (q, k), y = seen[0]  # the training step saw device-built, normalised views
    assert q.shape == k.shape == (8, 3, 32, 32) and y.shape == (8,)
    assert abs(float(q.mean())) < 3 and not torch.equal(q, k)
    m = trainer.callback_metrics
    assert "online_probe/train_loss" in m and torch.isfinite(m["online_probe/train_loss"])
    assert "online_probe/val_top1" in m
    assert dm.device_views.generator is not None  # seeded for this rank on first use


def test_datamodule_hook_seeds_per_global_rank(tree):
    """Simulated DDP: the same global seed on every rank, the hook mixes in the trainer's
    global rank, so ranks draw different views and a rank repeats itself."""
    from types import SimpleNamespace

    from ssl_cropmix.data.datamodule import CropMixDataModule
    from ssl_cropmix.data.recipes import MoCoViews
    from ssl_cropmix.data.sources import ImageFolderSource

    def params(rank: int):
        torch.manual_seed(42)  # seed_everything: the same on every rank
        dm = CropMixDataModule(ImageFolderSource(str(tree.parent), val_split=None), MoCoViews("contrastive", "device"),
                               image_size=24, batch_size=5, num_workers=0, persistent_workers=False)
        dm.trainer = SimpleNamespace(global_rank=rank)
        raw = pad_collate([(pil_to_uint8(im).contiguous(), 0) for im in photos()])
        dm.on_before_batch_transfer(raw, 0)
        return dm._device_params

    r0, r0_again, r1 = params(0), params(0), params(1)
    assert torch.equal(r0.key.boxes, r0_again.key.boxes) and torch.equal(r0.query.boxes, r0_again.query.boxes)
    assert not torch.equal(r0.key.boxes, r1.key.boxes)
    assert not torch.equal(r0.query_colour.factors, r1.query_colour.factors)


# --------------------------------------------------------------------------- batched sampling
def test_batched_crop_boxes_match_the_per_image_sampler():
    """``sample_crop_boxes`` (all tries of a batch at once) vs ``sample_crop_box`` (torchvision's
    loop, one image at a time): area fraction, aspect ratio, corner and fallback rate, on a
    normal image and on a thin one where the central fallback is frequent."""
    from ssl_cropmix.transforms import functional as CF

    lr = (math.log(3 / 4), math.log(4 / 3))
    for (h, w), scale in (((60, 80), (0.2, 1.0)), ((24, 90), (0.3, 1.0))):
        stream = CF.RandomStream(torch.Generator().manual_seed(0))
        ref = torch.tensor([CF.sample_crop_box(h, w, scale, lr, stream)[:4] for _ in range(N)], dtype=torch.float64)
        stream = CF.RandomStream(torch.Generator().manual_seed(1))
        ref_fb = [CF.sample_crop_box(h, w, scale, lr, stream)[5] for _ in range(N)]
        boxes, target, fallback = CF.sample_crop_boxes(torch.full((N,), h), torch.full((N,), w), *scale, lr,
                                                        torch.Generator().manual_seed(2))
        dev = boxes.double()
        check_ks(f"{h}x{w} area", ref[:, 2] * ref[:, 3], dev[:, 2] * dev[:, 3])
        check_ks(f"{h}x{w} aspect", ref[:, 3] / ref[:, 2], dev[:, 3] / dev[:, 2])
        check_ks(f"{h}x{w} top", ref[:, 0], dev[:, 0])
        check_ks(f"{h}x{w} left", ref[:, 1], dev[:, 1])
        check_rate(f"{h}x{w} fallback", sum(ref_fb), N, int(fallback.sum()), N)
        assert (boxes[:, 0] + boxes[:, 2] <= h).all() and (boxes[:, 1] + boxes[:, 3] <= w).all()
        assert (boxes[:, 2:] > 0).all() and torch.equal(target.isnan(), fallback)
    assert N // 10 < sum(ref_fb) < N - N // 10  # the thin image mixes accepted tries and the fallback


@pytest.mark.parametrize("ab", [(0.1, 0.1), (0.4, 0.2), (2.0, 3.0), (0.5, 4.0)])
def test_batched_beta_matches_the_scalar_sampler(ab):
    """Jöhnk (a, b <= 1) and Marsaglia-Tsang gammas (otherwise), batched vs one at a time."""
    from ssl_cropmix.transforms.functional import RandomStream, sample_beta, sample_beta_batch

    a, b = ab
    stream = RandomStream(torch.Generator().manual_seed(0))
    ref = torch.tensor([sample_beta(a, b, stream) for _ in range(N)], dtype=torch.float64)
    got = sample_beta_batch(torch.full((N,), a), torch.full((N,), b), torch.Generator().manual_seed(1))
    assert ((got >= 0) & (got <= 1)).all()
    check_ks(f"Beta{ab}", ref, got)


def test_sampling_draws_the_batch_without_a_per_image_loop(monkeypatch):
    """The device sampler never calls the per-image samplers (the batch is drawn with tensor
    operations), and it still yields one crop set per image."""
    from ssl_cropmix.transforms import CropMix
    from ssl_cropmix.transforms import functional as CF

    def boom(*a, **k):
        raise AssertionError("per-image sampler called")

    monkeypatch.setattr(CropMix, "sample_params", boom)
    monkeypatch.setattr(CF, "sample_crop_box", boom)
    sizes = torch.tensor([[48, 64], [300, 20], [64, 40]] * 20)
    for query in V.QUERIES:
        p = DeviceViews("moco", query, size=32, generator=torch.Generator().manual_seed(0)).sample(sizes)
        assert p.key.boxes.shape == (60, 1, 4) and p.query.boxes.shape[0] == 60
        inside = (p.query.boxes[..., 0] + p.query.boxes[..., 2] <= sizes[:, None, 0]) & (
            p.query.boxes[..., 1] + p.query.boxes[..., 3] <= sizes[:, None, 1])
        assert inside.all()


def test_generic_cropmix_fold_order_is_a_uniform_permutation():
    """``CropMix.sample_batch`` with ``shuffle``: each slot holds each crop equally often
    (uniform permutations of range(n_b)), unused slots last."""
    from ssl_cropmix.transforms import CropMix

    cm = CropMix(32, num_crops=(2, 3, 4))
    p = cm.sample_batch(torch.full((3 * N, 2), 64), torch.Generator().manual_seed(0))
    for n in (3, 4):
        rows = p.order[p.num_crops == n][:, :n]
        assert torch.equal(rows.sort(1).values, torch.arange(n).expand_as(rows))
        for slot in range(n):
            for crop in range(n):
                k = int((rows[:, slot] == crop).sum())
                check_rate(f"n={n} slot {slot} crop {crop}", k, len(rows), len(rows) // n, len(rows))
    four = p.order[p.num_crops == 2]
    assert torch.equal(four[:, 2:], torch.tensor([2, 3]).expand(len(four), 2))


# --------------------------------------------------------------------------- transfer and cost
@pytest.mark.parametrize("case", OUTPUT_CASES[1:], ids=[c[1] or c[0] for c in OUTPUT_CASES[1:]])
def test_apply_makes_one_host_to_device_copy_and_no_sync(case):
    """On the ``meta`` device (no values: any read of one would raise) ``apply`` makes exactly
    one host-to-device copy (the packed parameters) and no host synchronisation, for every
    recipe, with the padded sizes of a real batch."""
    from ssl_cropmix.data.device_views import DeviceOpCounter

    what, mae = case
    dv = (DeviceViews("mae", mae_view=mae, size=24, resize="matrix", generator=torch.Generator().manual_seed(0))
          if what == "mae" else
          DeviceViews("moco", what, size=24, resize="matrix", small_image=False, generator=torch.Generator().manual_seed(0)))
    sizes = torch.tensor([[40, 56], [64, 30], [48, 48], [20, 70]])
    p = dv.sample(sizes)
    images = torch.empty((4, 3, 64, 70), dtype=torch.uint8, device="meta")
    with DeviceOpCounter("meta") as cost:
        out = dv.apply(images, p)
    assert cost.h2d == 1 and cost.syncs == 0
    for o in out if isinstance(out, tuple) else (out,):
        assert o.shape == (4, 3, 24, 24) and o.device.type == "meta" and o.is_contiguous()
    assert p.packed.buffer.dtype == torch.uint8 and p.packed.buffer.ndim == 1
    assert p.packed.buffer.is_pinned() == torch.cuda.is_available()


def test_packed_and_unpacked_parameters_give_the_same_views():
    raw = raw_batch(photos(), 3)
    for query in ("cropmix", "contrastive"):
        dv = DeviceViews("moco", query, size=24, small_image=False, generator=torch.Generator().manual_seed(0))
        p = dv.sample(raw.sizes)
        a = dv.apply(raw.images, p)
        b = dv.apply(raw.images, p._replace(packed=None))
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def _cost(query: str):
    from ssl_cropmix.data.device_views import DeviceOpCounter

    dv = DeviceViews("moco", query, size=224, resize="matrix", generator=torch.Generator().manual_seed(0))
    p = dv.sample(torch.full((256, 2), 448))
    with DeviceOpCounter("meta") as cost:
        dv.apply(torch.empty((256, 3, 448, 448), dtype=torch.uint8, device="meta"), p)
    print(f"{query}: kernels {cost.kernels}, {cost.bytes / 1e9:.1f} GB, h2d {cost.h2d}, syncs {cost.syncs}")
    return cost


def test_cost_model_of_256_contrastive_pairs_at_224_px():
    """The cost model of benchmarks/device_views.py (meta device, full size): <= 150 kernels
    (about 1,000 with a kernel per (position, op) group and dense float64 resize weights,
    158 with a gather / copy-back per group) and <= 28 GB of memory traffic (27.0 GB; 32.8 GB
    counted the same way with a gather / copy-back per jitter group, 85 GB with dense float64
    weights)."""
    cost = _cost("contrastive")
    assert cost.kernels <= 150 and cost.bytes <= 28e9 and cost.h2d == 1 and cost.syncs == 0


def test_generic_cropmix_colours_key_and_query_in_one_pass():
    """The generic ``cropmix`` query: key and mixed query share one colour pass (135 kernels;
    258 with a pass each)."""
    cost = _cost("cropmix")
    assert cost.kernels <= 150 and cost.bytes <= 25e9 and cost.h2d == 1 and cost.syncs == 0


# --------------------------------------------------------------------------- kernels (new forms)
def test_hue_shift_equals_torchvision_on_ties_grays_and_saturated_colours():
    from ssl_cropmix.data.device_views import HUE_DIFF, _hue_shift, hue_base

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 10, 10, generator=g)
    x[0] = x[0, :1]  # gray pixels
    x[1, 1] = x[1, 0]  # r == g ties
    x[2, 2] = x[2, 0]  # r == b ties
    x[3] = (x[3] > 0.5).float()  # saturated primaries, black and white
    x[4, :, :5] = 0.0
    shift = torch.tensor([0.1, -0.1, 0.5, -0.5, 0.3, 0.0])
    out = _hue_shift(x, hue_base(shift).view(6, 3, 1, 1), HUE_DIFF)
    for i in range(6):
        torch.testing.assert_close(out[i], F.adjust_hue(x[i], float(shift[i])), atol=2e-5, rtol=0)


def test_flip_folded_into_the_resize_equals_flipping_the_crop():
    from ssl_cropmix.data.device_views import _matrix_crops, crop_rows, filter_taps

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8, generator=g)
    boxes = torch.tensor([[[3, 5, 30, 40], [0, 0, 50, 70]], [[10, 20, 12, 9], [1, 2, 40, 61]]])
    flip = torch.tensor([True, False, False, True])
    taps = (filter_taps(50, 24), filter_taps(70, 24))
    out = _matrix_crops(x, crop_rows(boxes, (24, 24), False, flip), (24, 24), False, taps)
    ref = resized_crops(x, boxes, (24, 24), "matrix").flatten(0, 1)
    ref = torch.where(flip.view(-1, 1, 1, 1), ref.flip(-1), ref)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["matrix", "interpolate", "roi_align"])
def test_resized_crops_flip_mirrors_exactly_the_flipped_crops(method):
    """``resized_crops(flip=...)`` (the CPU path flips only the flipped uint8 crops) equals
    flipping the resized crops afterwards, for every kernel."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, 3, 40, 48), dtype=torch.uint8, generator=g)
    boxes = torch.tensor([[[0, 0, 40, 48], [5, 6, 20, 30]], [[2, 3, 33, 40], [0, 10, 16, 16]]])
    flip = torch.tensor([[True, False], [False, True]])
    ref = resized_crops(x, boxes, (16, 16), method)
    ref = torch.where(flip.view(2, 2, 1, 1, 1), ref.flip(-1), ref)
    torch.testing.assert_close(resized_crops(x, boxes, (16, 16), method, flip=flip), ref, atol=1e-5, rtol=0)
