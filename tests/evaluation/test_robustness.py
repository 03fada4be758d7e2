"""Robustness protocol: PixMix calibration, ECE, FGSM in pixel space, logit masking, the module
under a Trainer (and 2-process DDP), the table, the callback and ``ssl-cropmix robustness``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from ssl_cropmix.evaluation.robustness import (
    NOT_GIVEN,
    CalibrationWarning,
    EvalSet,
    RobustnessEvaluation,
    expected_calibration_error,
    fgsm,
    indexed_dataloader,
    rms_calibration_error,
    run_robustness,
    write_robustness_table,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_M, _S = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)


def pixmix_calib_err_reference(confidence: np.ndarray, correct: np.ndarray, beta: int = 100) -> float:
    """PixMix's ``calib_err(p='2')`` re-derived by hand: sort, bins of ``beta`` (the last one
    takes the rest), loop over all bins but the last, weights n_b / N, sqrt."""
    idx = np.argsort(confidence, kind="stable")
    c, k = confidence[idx], correct[idx]
    n = len(c)
    starts = list(range(0, (n // beta) * beta, beta))
    ends = starts[1:] + [n]
    acc = 0.0
    for s, e in list(zip(starts, ends))[:-1]:
        acc += (e - s) / n * (c[s:e].mean() - k[s:e].mean()) ** 2
    return math.sqrt(acc)


def _trainer(**kw) -> pl.Trainer:
    base = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    base.update(kw)
    return pl.Trainer(**base)


# --------------------------------------------------------------------------- calibration
def test_rms_calibration_matches_hand_computed_pixmix_formula():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(537, 10, generator=g) * 3
    labels = torch.randint(0, 10, (537,), generator=g)
    conf, pred = logits.softmax(-1).max(-1)
    correct = pred == labels
    ref = pixmix_calib_err_reference(conf.numpy().astype(np.float64), correct.numpy().astype(np.float64), 100)
    assert rms_calibration_error(conf, correct, 100) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    # a different bin size gives a different (still matching) number
    ref50 = pixmix_calib_err_reference(conf.numpy().astype(np.float64), correct.numpy().astype(np.float64), 50)
    assert rms_calibration_error(conf, correct, 50) == pytest.approx(ref50, rel=1e-9)
    assert ref50 != pytest.approx(ref, rel=1e-3)


def test_rms_calibration_tiny_hand_example():
    # 5 samples, bins of 2 -> bins [0,2), [2,5); PixMix leaves the last bin out:
    # sorted conf 0.2 0.4 | 0.6 0.8 0.9, correct 0 1 | ... -> sqrt(2/5 * (0.3 - 0.5)^2)
    conf = torch.tensor([0.9, 0.2, 0.6, 0.4, 0.8])
    corr = torch.tensor([1, 0, 0, 1, 1])
    assert rms_calibration_error(conf, corr, 2) == pytest.approx(math.sqrt(0.4 * 0.04))
    # with the last bin: + 3/5 * (0.7667 - 0.6667)^2
    full = math.sqrt(0.4 * 0.04 + 0.6 * ((0.6 + 0.8 + 0.9) / 3 - 2 / 3) ** 2)
    assert rms_calibration_error(conf, corr, 2, include_last_bin=True) == pytest.approx(full)


def test_perfectly_calibrated_sets_give_zero_and_overconfidence_does_not():
    # exact: every bin of 100 holds one confidence level m/100 and exactly m hits
    conf, corr = [], []
    for m in range(30, 100, 3):
        conf += [m / 100] * 100
        corr += [1] * m + [0] * (100 - m)
    conf_t, corr_t = torch.tensor(conf, dtype=torch.float64), torch.tensor(corr)
    assert rms_calibration_error(conf_t, corr_t, 100) < 1e-12
    assert rms_calibration_error(conf_t, corr_t, 100, include_last_bin=True) < 1e-12
    # sampled: hits ~ Bernoulli(confidence), 400k samples, large bins -> ~0 (sampling noise only)
    g = torch.Generator().manual_seed(0)
    c = 0.2 + 0.8 * torch.rand(400_000, generator=g)
    hits = torch.rand(400_000, generator=g) < c
    assert rms_calibration_error(c, hits, 20_000) < 0.005
    assert expected_calibration_error(c, hits) < 0.005
    # overconfident by 0.1 everywhere -> RMS ~= ECE ~= 0.1
    hits_over = torch.rand(400_000, generator=g) < (c - 0.1).clamp(min=0)
    assert rms_calibration_error(c, hits_over, 20_000) == pytest.approx(0.1, abs=0.01)


def test_ece_equals_hand_computed_equal_width_bins():
    g = torch.Generator().manual_seed(1)
    conf = torch.rand(1000, generator=g) * 0.9 + 0.1
    corr = torch.rand(1000, generator=g) < conf ** 2
    n_bins = 15
    edges = torch.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.float().mean() * (conf[m].mean() - corr[m].float().mean()).abs()
    assert expected_calibration_error(conf, corr, n_bins) == pytest.approx(float(ece), abs=1e-5)


def test_too_few_samples_for_bins_is_nan_with_warning():
    with pytest.warns(CalibrationWarning, match="too few"):
        assert math.isnan(rms_calibration_error(torch.rand(150), torch.ones(150), 100))
    with pytest.raises(ValueError, match="bin_size"):
        rms_calibration_error(torch.rand(10), torch.ones(10), 0)


# --------------------------------------------------------------------------- FGSM
def _pixels(x: torch.Tensor) -> torch.Tensor:
    return x * _S + _M


def test_fgsm_budget_range_and_direction_match_analytic_gradient():
    torch.manual_seed(0)
    lin = nn.Linear(3 * 6 * 6, 4)
    model = nn.Sequential(nn.Flatten(), lin)
    pix = torch.rand(8, 3, 6, 6)
    pix[:, :, 0, 0] = 0.0  # pixels at the bounds must stay inside [0, 1]
    pix[:, :, 0, 1] = 1.0
    x = (pix - _M) / _S
    y = torch.randint(0, 4, (8,))
    adv = fgsm(model, x, y, MEAN, STD, 8 / 255)
    adv_pix = _pixels(adv)
    eps = 8 / 255
    assert (adv_pix - pix).abs().max() <= eps + 1e-6
    assert adv_pix.min() >= -1e-6 and adv_pix.max() <= 1 + 1e-6
    # analytic input gradient of CE for a linear model: W^T (softmax - onehot) / std
    p = model(x).softmax(-1)
    g_norm = ((p - F.one_hot(y, 4).float()) @ lin.weight).view(8, 3, 6, 6)
    expected = (pix + eps * torch.sign(g_norm / _S)).clamp(0, 1)
    assert torch.allclose(adv_pix, expected, atol=1e-5)
    inner = (pix > eps) & (pix < 1 - eps)
    assert torch.allclose((adv_pix - pix).abs()[inner], torch.full_like(pix[inner], eps), atol=1e-5)  # full step


def _separable(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes differing by +-0.02 along a fixed pixel pattern (less than 8/255 = 0.031)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.sign(torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(99)))
    y = torch.randint(0, 2, (n,), generator=g)
    pix = 0.5 + 0.02 * (2 * y.float() - 1)[:, None, None, None] * w + 0.005 * torch.randn(n, 3, 8, 8, generator=g)
    return (pix - _M) / _S, y


def _train_tiny(x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_trained_model_accuracy_drops_under_fgsm_through_the_trainer():
    x, y = _separable(512, 0)
    model = _train_tiny(x, y)
    xt, yt = _separable(300, 1)
    ev = RobustnessEvaluation(model, set_names=["clean"], mean=MEAN, std=STD, calibration_bin_size=50)
    _trainer().test(ev, dataloaders=[indexed_dataloader(TensorDataset(xt, yt), 64)], verbose=False)
    r = ev.results["clean"]
    with torch.no_grad():
        assert r["top1"] == pytest.approx(100 * (model(xt).argmax(-1) == yt).float().mean().item())
    assert r["n"] == 300 and r["top1"] > 95
    assert r["fgsm_top1"] < 20  # a 0.02 margin cannot survive an 8/255 step
    assert r["top5"] == 100.0  # 2 classes: top-k is clamped to the class count
    assert not any(p.grad is not None for p in model.parameters())  # only input gradients


def test_inference_mode_trainer_is_refused_with_a_clear_error():
    ev = RobustnessEvaluation(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)))
    x, y = _separable(8, 0)
    with pytest.raises(RuntimeError, match="inference_mode=False"):
        _trainer(inference_mode=True).test(ev, dataloaders=[indexed_dataloader(TensorDataset(x, y), 4)], verbose=False)


# --------------------------------------------------------------------------- masking
class _FixedLogits(nn.Module):
    """Logits looked up from a table by the image's first pixel (the sample id)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].round().long()]


def test_subset_sets_mask_logits_before_argmax():
    n, cols = 40, (3, 17, 250, 999)
    table = torch.randn(n, 1000)
    labels = torch.randint(0, len(cols), (n,))
    table[torch.arange(n), torch.tensor(cols)[labels]] += 5.0  # the label wins within the subset
    table[:, 500] = 100.0  # ... but a class outside the subset wins overall
    x = torch.arange(n).float().view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    ds = TensorDataset(x, labels)
    ev = RobustnessEvaluation(_FixedLogits(table), set_names=["imagenet-r", "imagenet-sketch"],
                              class_indices={"imagenet-r": cols}, fgsm_sets=(), calibration_bin_size=10)
    assert torch.equal(ev.logits(x, "imagenet-r"), table[:, list(cols)])
    _trainer().test(ev, dataloaders=[indexed_dataloader(ds, 16), indexed_dataloader(ds, 16)], verbose=False)
    assert ev.results["imagenet-r"]["top1"] == 100.0
    assert ev.results["imagenet-sketch"]["top1"] == 0.0  # unmasked: class 500 always wins
    conf = table[:, list(cols)].softmax(-1).max(-1).values
    assert ev.results["imagenet-r"]["rms"] == pytest.approx(100 * rms_calibration_error(conf, torch.ones(n), 10))


# --------------------------------------------------------------------------- table
def test_table_marks_missing_sets_not_given_never_zero(tmp_path):
    results = {"clean": {"n": 10, "top1": 75.0, "top5": 90.0, "rms": 12.5, "ece": 8.0, "fgsm_top1": 20.0},
               "imagenet-r": {"n": 5, "top1": 40.0, "top5": 60.0, "rms": float("nan"), "ece": 3.0}}
    md, js = write_robustness_table(results, tmp_path, "tiny.ckpt", protocol={"note": "unit test"})
    data = json.loads(js.read_text())
    assert data["columns"] == {"Clean": 75.0, "RMS": 12.5, "FGSM": 20.0, "Replace": NOT_GIVEN, "Noise": NOT_GIVEN,
                               "IN-A": NOT_GIVEN, "IN-R": 40.0, "IN-S": NOT_GIVEN}
    assert data["sets"]["imagenet-r"]["rms"] is None and data["protocol"]["note"] == "unit test"
    text = md.read_text()
    header, _, row = text.splitlines()[2:5]
    assert [c.strip() for c in header.strip("|").split("|")] == ["Clean", "RMS", "FGSM", "Replace", "Noise",
                                                                "IN-A", "IN-R", "IN-S"]
    assert [c.strip() for c in row.strip("|").split("|")] == ["75.00", "12.50", "20.00", NOT_GIVEN, NOT_GIVEN,
                                                             NOT_GIVEN, "40.00", NOT_GIVEN]


def test_run_robustness_validates_arguments():
    with pytest.raises(ValueError, match="at least one"):
        run_robustness(nn.Identity(), [])
    with pytest.raises(ValueError, match="fgsm_eps"):
        RobustnessEvaluation(nn.Identity(), fgsm_eps=8)
    with pytest.raises(ValueError, match="set_names"):
        RobustnessEvaluation(nn.Identity(), set_names=["clean", "clean"])
    with pytest.raises(ValueError, match="not in set_names"):
        RobustnessEvaluation(nn.Identity(), class_indices={"imagenet-a": (1, 2)})
    x, y = _separable(4, 0)
    with pytest.raises(ValueError, match="inference_mode"):
        run_robustness(nn.Identity(), [EvalSet("clean", TensorDataset(x, y))], trainer_kwargs={"inference_mode": True})
    two_way = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 2))
    with pytest.raises(ValueError, match="label 999 but the classifier gives 2 logits"):
        run_robustness(two_way, [EvalSet("imagenet-sketch", TensorDataset(x, torch.full((4,), 999)))],
                       trainer_kwargs={"accelerator": "cpu", "logger": False, "enable_progress_bar": False})


def test_mixed_precision_trainer_attacks_in_autocast_and_calibrates_in_float32():
    x, y = _separable(512, 0)
    model = _train_tiny(x, y)
    xt, yt = _separable(200, 1)
    res = {}
    for precision in ("32-true", "bf16-mixed"):
        ev = RobustnessEvaluation(model, calibration_bin_size=50)
        _trainer(precision=precision).test(ev, dataloaders=[indexed_dataloader(TensorDataset(xt, yt), 50)],
                                           verbose=False)
        res[precision] = ev.results["clean"]
    full, bf16 = res["32-true"], res["bf16-mixed"]
    assert bf16["top1"] == pytest.approx(full["top1"], abs=2.0)
    assert bf16["fgsm_top1"] < 20  # the attack still works with bf16 autocast gradients
    assert math.isfinite(bf16["rms"]) and bf16["rms"] == pytest.approx(full["rms"], abs=2.0)


class _TinyClassifier(pl.LightningModule):
    """A user's classifier: ``forward`` returns logits; nothing else is shared."""

    def __init__(self, num_classes: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _SaveCallbackResults(pl.Callback):
    def __init__(self, out_dir) -> None:
        self.out_dir = str(out_dir)

    def on_train_end(self, trainer, pl_module):
        rob = next(c for c in trainer.callbacks if type(c).__name__ == "RobustnessCallback")
        torch.save(rob.last_results, f"{self.out_dir}/cb_rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_callback_under_ddp_reports_the_single_process_numbers_of_the_trained_model(tmp_path):
    """37 clean images over 2 ranks: DistributedSampler pads one duplicate; gathering by index
    drops it, so both ranks report exactly the numbers of a 1-process evaluation of the model."""
    from torch.utils.data import DataLoader, Subset

    from ssl_cropmix.callbacks.robustness import RobustnessCallback
    from ssl_cropmix.data.datasets import ImageFolderDataset
    from ssl_cropmix.data.demo import write_demo_folder
    from ssl_cropmix.data.views import probe_views

    demo = write_demo_folder(tmp_path / "demo")
    tf = probe_views(32)[1]
    train = ImageFolderDataset(demo / "train", transform=tf)
    val = Subset(ImageFolderDataset(demo / "val", transform=tf), range(37))
    model = _TinyClassifier()
    cb = RobustnessCallback(val=val, image_size=32, batch_size=5, calibration_bin_size=8,
                            results_dir=tmp_path / "tables")
    trainer = _trainer(devices=2, strategy="ddp_spawn", max_steps=3, callbacks=[cb, _SaveCallbackResults(tmp_path)],
                       inference_mode=True)
    trainer.fit(model, DataLoader(train, batch_size=8, shuffle=True))
    r0, r1 = (torch.load(tmp_path / f"cb_rank{r}.pt") for r in (0, 1))
    assert r0 == r1 and r0["clean"]["n"] == 37
    single = run_robustness(model.eval(), [EvalSet("clean", val)], batch_size=5,
                            trainer_kwargs={"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
                            calibration_bin_size=8)
    assert single.results["clean"]["n"] == 37
    for k, v in single.results["clean"].items():
        assert r0["clean"][k] == pytest.approx(v, abs=1e-9), k
    tables = list((tmp_path / "tables").glob("robustness-epoch*-step3.json"))
    assert len(tables) == 1  # written once, by rank 0


def test_robustness_sets_readers_and_views(tmp_path):
    import pickle
    import pkgutil

    from PIL import Image

    from ssl_cropmix.evaluation.robustness import robustness_sets

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    (tmp_path / "rep").mkdir()
    with open(tmp_path / "rep" / "input.pkl", "wb") as f:
        pickle.dump([arr], f)
    with open(tmp_path / "rep" / "label.pkl", "wb") as f:
        pickle.dump([7], f)
    r_wnid = pkgutil.get_data("timm.data", "_info/imagenet_r_synsets.txt").decode().split()[3]
    (tmp_path / "imr" / r_wnid).mkdir(parents=True)
    Image.fromarray(arr).save(tmp_path / "imr" / r_wnid / "0.png")
    sets = robustness_sets(replace=tmp_path / "rep", imagenet_r=tmp_path / "imr", image_size=32)
    assert [s.name for s in sets] == ["replace", "imagenet-r"]
    x, y = sets[0].dataset[0]
    crop = torch.from_numpy(arr[4:36, 8:40]).permute(2, 0, 1).float() / 255  # centre crop, no resize (Co-Mixup)
    assert y == 7 and torch.allclose(x, (crop - _M[0]) / _S[0], atol=1e-5)
    assert sets[1].class_indices is not None and len(sets[1].class_indices) == 200
    x, y = sets[1].dataset[0]
    assert y == 3 and x.shape == (3, 32, 32)
