"""The view recipes against the papers they reproduce: Asym-Siam's ScaleMix query (each crop
augmented on its own, then pasted), the supervised CropMix / RRC views of CropMix Sec. 4,
and the DataModule defaults (the paper's contrastive preset, the CropMix MAE view)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from ssl_cropmix.data import views as V
from ssl_cropmix.transforms import CropMix, ScaleMix


def _grey(region: np.ndarray) -> bool:
    """Every pixel has R == G == B (what RandomGrayscale leaves)."""
    return bool((region[..., 0] == region[..., 1]).all() and (region[..., 1] == region[..., 2]).all())


@pytest.mark.parametrize("size", [32, 96])  # 32: PIL backend, no blur; 96: tensor backend, blur
def test_scalemix_query_greys_each_crop_on_its_own(demo_photos, size):
    """Asym-Siam: ``scalemix(query_transform(x), query_transform(x))``, so the grayscale
    (p = 0.2) is drawn per crop: exactly one of the two regions is grey in
    2 * 0.2 * 0.8 = 0.32 of the queries (0 if the colour ops ran once after the paste)."""
    query = V.moco_query("scalemix", size)
    assert isinstance(query, v2.Compose) and isinstance(query.transforms[-1], V.ToNormalizedTensor)
    mix = query.transforms[0]
    assert isinstance(mix, ScaleMix) and mix.view_transform is not None
    assert not any(isinstance(t, V.ToNormalizedTensor) for t in query.transforms[:-1])  # normalised once
    # colour photos only (retina/hubble have large black, i.e. grey, areas: keep the
    # clearly coloured ones, where an un-greyed crop always has a non-grey pixel)
    photos = [p.resize((160, 128)) for p in demo_photos[:4]]
    torch.manual_seed(0)
    n, partial, both = 0, 0, 0
    while n < 500:
        img = photos[n % len(photos)]
        params = mix.make_params([img])["params"]
        (step,) = params.steps
        top, left, h, w = step.box
        if h == 0 or w == 0 or h * w == size * size:  # nothing pasted: one region only
            torch.manual_seed(n + 10_000)
            continue
        out = np.asarray(mix.transform(img, {"params": params}))
        out = out.transpose(1, 2, 0) if out.shape[0] == 3 else out  # CHW tensor -> HWC
        inside = np.zeros(out.shape[:2], bool)
        inside[top : top + h, left : left + w] = True
        g_in, g_out = _grey(out[inside]), _grey(out[~inside])
        partial += g_in != g_out
        both += g_in and g_out
        n += 1
    rate = partial / n
    print(f"size {size}: partially grey {rate:.3f}, both grey {both / n:.3f} over {n} queries")
    tol = 4 * math.sqrt(0.32 * 0.68 / n)  # 4 standard errors of a binomial proportion
    assert abs(rate - 0.32) < tol, (rate, tol)
    assert abs(both / n - 0.04) < 4 * math.sqrt(0.04 * 0.96 / n) + 1e-9, both / n  # 0.2 * 0.2


def test_scalemix_and_contrastive_queries_differ_only_in_ranges_and_paste():
    s, c = V.moco_query("scalemix", 224).transforms[0], V.moco_query("contrastive", 224).transforms[0]
    assert isinstance(s, ScaleMix) and s.shared_range and s.crop_scale == (0.2, 1.0)
    assert s.scale_ranges(2) == ((0.2, 1.0), (0.2, 1.0))
    assert np.allclose(c.scale_ranges(2), ((0.2, 0.6), (0.6, 1.0))) and not c.shared_range
    assert s.mixing == c.mixing == "cutmix"


def test_supervised_views_follow_sec4():
    cm = V.supervised_view("cropmix", 224).transforms[0]
    assert isinstance(cm, CropMix) and cm.mixing == "mixup" and cm.intermediate == "channel_permute"
    assert cm.crop_scale == (0.01, 1.0) and tuple(cm.num_crops) == (2, 3, 4) and cm.alpha == 0.4
    small = V.supervised_view("cropmix", 32, crop_scale=(0.25, 1.0)).transforms[0]
    assert small.num_crops == (2,)
    assert small.crop_scale == (0.25, 1.0)
    rrc = V.supervised_view("rrc", 224).transforms[0]
    assert isinstance(rrc, v2.RandomResizedCrop) and tuple(rrc.scale) == (0.08, 1.0)
    assert tuple(V.supervised_view("rrc", 32, crop_scale=(0.75, 1.0)).transforms[0].scale) == (0.75, 1.0)
    rm = V.supervised_view("resizemix", 224).transforms[0]
    assert isinstance(rm, CropMix) and rm.mixing == "resizemix"
    ta = V.supervised_view("cropmix", 224, auto_augment="trivialaugment", random_erasing=0.1)
    kinds = [type(t) for t in ta.transforms]
    assert v2.TrivialAugmentWide in kinds and kinds[-1] is v2.RandomErasing
    assert kinds.index(v2.TrivialAugmentWide) < kinds.index(V.ToNormalizedTensor)
    with pytest.raises(ValueError, match="kind must be one of .* got 'mosaic'"):
        V.supervised_view("mosaic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="random_erasing .* got 1.5"):
        V.supervised_view("rrc", random_erasing=1.5)


def test_supervised_cropmix_output_is_a_convex_mix_of_channel_permuted_crops(demo_photos):
    """Every output pixel lies in the range spanned by the image's pixels (Mixup of crops,
    permuted channels): a cheap check that no extra op (jitter, erasing) slipped in."""
    view = V.supervised_view("cropmix", 64, mean=(0, 0, 0), std=(1, 1, 1))
    img = demo_photos[0].resize((96, 96))
    lo, hi = np.asarray(img).min() / 255, np.asarray(img).max() / 255
    for _ in range(20):
        x = view(img)
        assert x.shape == (3, 64, 64) and x.min() >= lo - 1e-6 and x.max() <= hi + 1e-6


def test_datamodule_defaults_are_the_papers(tmp_path):
    from ssl_cropmix.data.datamodule import CropMixDataModule
    from ssl_cropmix.data.recipes import MAEViews, MoCoViews, SupervisedViews
    from ssl_cropmix.data.sources import ImageFolderSource

    src = ImageFolderSource(str(tmp_path))
    dm = CropMixDataModule(src, num_workers=0)  # views: MoCoViews() by default
    assert isinstance(dm.views, MoCoViews) and dm.views.query == "contrastive"
    q = dm.train_transform().query.transforms[0]
    assert isinstance(q, CropMix) and np.allclose(q.scale_ranges(2), ((0.2, 0.6), (0.6, 1.0))) and q.view_transform is not None
    mae = CropMixDataModule(src, MAEViews(), num_workers=0).train_transform().transforms[0]
    assert isinstance(mae, CropMix) and mae.mixing == "mixup" and tuple(mae.num_crops) == (2, 3, 4)
    assert mae.crop_scale == (0.2, 1.0) and mae.intermediate is None
    assert mae.interpolation == v2.InterpolationMode.BILINEAR
    sup = CropMixDataModule(src, SupervisedViews(), num_workers=0).train_transform().transforms[0]
    assert isinstance(sup, CropMix) and sup.intermediate == "channel_permute"
    rrc = CropMixDataModule(
        src, SupervisedViews("rrc", crop_scale=(0.25, 1.0)), image_size=32, num_workers=0,
    ).train_transform().transforms[0]
    assert isinstance(rrc, v2.RandomResizedCrop) and tuple(rrc.scale) == (0.25, 1.0)
    with pytest.raises(ValueError, match="kind must be one of .* got 'rc'"):
        SupervisedViews("rc")  # type: ignore[arg-type]
