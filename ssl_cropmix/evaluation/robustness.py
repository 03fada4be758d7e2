"""The paper's robustness protocol (Sec. 4.2, Tables 2, 4 and 7) as a LightningModule.

Per test set (one test dataloader each): clean top-1 / top-5, RMS calibration error and ECE,
and, on the sets named in ``fgsm_sets`` (the clean validation set by default), top-1 under a
one-step FGSM attack with an L-inf budget of 8/255 in *pixel* space.

Running it: ``Trainer(inference_mode=False).test(module, dataloaders=[...])`` (FGSM needs input
gradients; ``Trainer.test`` runs under ``torch.inference_mode`` by default, where
``torch.enable_grad()`` cannot turn gradients back on) or :func:`run_robustness`, which builds
the dataloaders and such a Trainer with
:func:`~ssl_cropmix.evaluation.runner.evaluation_trainer`. The results table of the paper's
Tables 2 / 7 (Clean, RMS, FGSM, Replace, Noise, IN-A, IN-R, IN-S) is written by
:func:`write_robustness_table`.

Distributed runs: every sample carries its dataset index; at the end of the test epoch each
rank gathers every rank's per-sample records (confidence, top-1 / top-5 hit, hit under attack),
drops the duplicates that ``DistributedSampler`` pads with, and computes the same numbers,
so the metrics are exact and identical on all ranks. Mixed precision: forward and input
gradient run in the trainer's precision (autocast); softmax and calibration in float32.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ssl_cropmix.data.views import IMAGENET_MEAN, IMAGENET_STD
from ssl_cropmix.validation import check_bools

#: The paper's Table 2 / 7 columns, and the (set, metric) each is read from.
TABLE_COLUMNS: dict[str, tuple[str, str]] = {
    "Clean": ("clean", "top1"),
    "RMS": ("clean", "rms"),
    "FGSM": ("clean", "fgsm_top1"),
    "Replace": ("replace", "top1"),
    "Noise": ("noise", "top1"),
    "IN-A": ("imagenet-a", "top1"),
    "IN-R": ("imagenet-r", "top1"),
    "IN-S": ("imagenet-sketch", "top1"),
}
NOT_GIVEN = "not given"


class CalibrationWarning(UserWarning):
    """Too few samples for PixMix's adaptive binning: the RMS error is reported as NaN."""


# --------------------------------------------------------------------------- metrics
def rms_calibration_error(
    confidence: torch.Tensor, correct: torch.Tensor, bin_size: int = 100, include_last_bin: bool = False
) -> float:
    """RMS (l2) calibration error with adaptive equal-mass bins, as PixMix's ``calib_err``.

    Samples are sorted by confidence and cut into consecutive bins of ``bin_size`` samples
    (the last bin takes the remainder, so it holds ``bin_size .. 2 * bin_size - 1``); the
    error is ``sqrt(sum_b n_b / N * (mean confidence_b - accuracy_b) ** 2)``.

    Why not torchmetrics' ``CalibrationError(norm="l2")``: it bins by *equal width* in
    confidence (``n_bins`` intervals of [0, 1]), not by equal mass, so it is a different
    number from the one PixMix and the paper report.

    PixMix's loop runs over ``range(len(bins) - 1)``: its last bin (the most confident
    samples) is left out of the sum while ``N`` still counts it. ``include_last_bin=False``
    reproduces that, so numbers compare with the paper's; ``True`` includes it.

    Args:
        confidence: max softmax probability per sample.
        correct: whether the arg-max was the label.
        bin_size: PixMix's ``beta`` (target samples per bin).
        include_last_bin: see above.

    Returns:
        The error as a fraction (multiply by 100 for percent); NaN (with a
        :class:`CalibrationWarning`) when there are too few samples for one counted bin
        (PixMix would fail or return 0).

    Shape:
        confidence ``(N,)`` float, correct ``(N,)`` bool / {0, 1} -> scalar.
    """
    if not isinstance(bin_size, int) or bin_size < 1:
        raise ValueError(f"bin_size must be an int >= 1, got {bin_size!r}")
    conf = confidence.detach().double().reshape(-1).cpu()
    corr = correct.detach().double().reshape(-1).cpu()
    if conf.shape != corr.shape:
        raise ValueError(f"confidence and correct must have the same length, got {conf.numel()} and {corr.numel()}")
    n = conf.numel()
    n_bins = n // bin_size
    if n_bins < (1 if include_last_bin else 2):
        warnings.warn(
            f"{n} samples are too few for calibration bins of bin_size={bin_size} "
            f"(need {bin_size if include_last_bin else 2 * bin_size}); RMS calibration error is NaN",
            CalibrationWarning,
            stacklevel=2,
        )
        return math.nan
    order = torch.sort(conf, stable=True).indices
    conf, corr = conf[order], corr[order]
    edges = [i * bin_size for i in range(n_bins)] + [n]
    counted = n_bins if include_last_bin else n_bins - 1
    total = 0.0
    for b in range(counted):
        lo, hi = edges[b], edges[b + 1]
        diff = conf[lo:hi].mean() - corr[lo:hi].mean()
        total += (hi - lo) / n * float(diff) ** 2
    return math.sqrt(total)


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> float:
    """Top-label ECE with ``n_bins`` equal-width confidence bins (Guo et al. 2017), as a fraction.

    torchmetrics' ``binary_calibration_error(confidence, correct, norm="l1")`` is exactly
    this (its binary form bins the given confidences against the given hits).

    Shape:
        confidence ``(N,)``, correct ``(N,)`` -> scalar.
    """
    from torchmetrics.functional.classification import binary_calibration_error

    if confidence.numel() == 0:
        return math.nan
    return float(binary_calibration_error(confidence.float().reshape(-1), correct.long().reshape(-1),
                                          n_bins=n_bins, norm="l1"))


def fgsm(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    eps: float = 8 / 255,
) -> torch.Tensor:
    """One FGSM step (Goodfellow et al. 2015) with an L-inf budget ``eps`` in [0, 1] pixels.

    ``images`` are normalised, ``(x - mean) / std``; the attack undoes the normalisation,
    steps ``eps * sign(grad)`` in [0, 1] pixel units (as torchattacks' ``FGSM``, which the
    paper's code points to, does on [0, 1] inputs), clamps to [0, 1] and normalises again, so
    ``|pixels(x_adv) - pixels(x)| <= eps``. The loss is the summed cross-entropy: each
    sample's gradient is that of its own loss (the sign is what counts), and no ``1 / B``
    factor pushes fp16 gradients towards underflow. Only the input gradient is computed;
    parameters' ``.grad`` are left alone. Call it with the model in eval mode.

    Args:
        model: maps normalised images to logits.
        images: normalised images (pixels are clamped to [0, 1] before the step).
        labels: class indices into the logits.
        mean, std: the normalisation of ``images``.
        eps: the budget in [0, 1] pixel units (8/255 in the paper).

    Returns:
        Normalised adversarial images, detached, in ``images.dtype``.

    Shape:
        images ``(B, 3, H, W)``, labels ``(B,)`` -> ``(B, 3, H, W)``.
    """
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    m = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    pixels = (images.detach().float() * s + m).clamp_(0, 1)
    with torch.enable_grad():
        x = pixels.clone().requires_grad_(True)
        logits = model(((x - m) / s).to(images.dtype))
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    adv = (pixels + eps * grad.sign()).clamp_(0, 1)
    return ((adv - m) / s).to(images.dtype).detach()


# --------------------------------------------------------------------------- sets
@dataclass(frozen=True)
class EvalSet:
    """One test set of the protocol.

    Attributes:
        name: ``"clean"``, ``"replace"``, ``"noise"``, ``"imagenet-a"``, ``"imagenet-r"``,
            ``"imagenet-sketch"`` (the names :data:`TABLE_COLUMNS` reads) or any other.
        dataset: returns ``(normalised image (3, H, W), label)``.
        class_indices: logits kept before the arg-max (IN-A / IN-R: their 200 ImageNet
            indices); labels index into them. ``None``: all logits.
    """

    name: str
    dataset: Dataset
    class_indices: tuple[int, ...] | None = None


class _Indexed(Dataset):
    """``(image, label, index)``: the index lets ranks drop DistributedSampler's padding."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        x, y = self.dataset[i]
        return x, y, i


def indexed_dataloader(dataset: Dataset, batch_size: int = 256, num_workers: int = 0) -> DataLoader:
    """A sequential loader of ``(image, label, index)`` batches for :class:`RobustnessEvaluation`."""
    return DataLoader(_Indexed(dataset), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


def resolve_classifier(module: nn.Module) -> nn.Module:
    """The logits model of ``module``: its ``classifier`` attribute when that is a module,
    else ``module`` itself (``CropMixClassifier``: ``forward`` gives logits).

    Shape:
        the returned model maps ``(B, 3, H, W)`` -> ``(B, num_classes)``.
    """
    clf = getattr(module, "classifier", None)
    return clf if isinstance(clf, nn.Module) else module


# --------------------------------------------------------------------------- module
class RobustnessEvaluation(pl.LightningModule):
    """Clean accuracy, calibration and FGSM accuracy of a classifier on several test sets.

    Each test dataloader (:func:`indexed_dataloader`) is one set; ``set_names[k]`` names
    dataloader ``k``. After ``Trainer.test`` the numbers are in :attr:`results`
    (``{set: {"n", "top1", "top5", "rms", "ece"[, "fgsm_top1"]}}``, percent), identical on
    every rank.

    Args:
        classifier: maps normalised images to logits.
        mean, std: normalisation of the inputs (to attack in pixel space).
        fgsm_eps: FGSM budget in [0, 1] pixel units (paper: 8/255).
        calibration_bin_size: PixMix's adaptive bin size (100).
        set_names: one name per test dataloader, in order.
        class_indices: per set name, the logits to keep (IN-A / IN-R); others keep all.
        fgsm_sets: sets attacked with FGSM (paper: the clean validation set).
        calibration_include_last_bin: see :func:`rms_calibration_error` (``False``: PixMix).
        ece_bins: equal-width bins of the ECE.

    Raises:
        RuntimeError: ``test_step`` on a set in ``fgsm_sets`` under inference mode
            (``Trainer(inference_mode=True)``, Lightning's default).
    """

    def __init__(
        self,
        classifier: nn.Module,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        fgsm_eps: float = 8 / 255,
        calibration_bin_size: int = 100,
        set_names: Sequence[str] = ("clean",),
        class_indices: Mapping[str, Sequence[int] | None] | None = None,
        fgsm_sets: Sequence[str] = ("clean",),
        calibration_include_last_bin: bool = False,
        ece_bins: int = 15,
    ) -> None:
        super().__init__()
        check_bools(calibration_include_last_bin=calibration_include_last_bin)
        if not isinstance(classifier, nn.Module):
            raise TypeError(f"classifier must be an nn.Module, got {type(classifier).__name__}")
        names = list(set_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"set_names must be non-empty and distinct, got {names!r}")
        if not (isinstance(fgsm_eps, (int, float)) and 0 <= fgsm_eps <= 1):
            raise ValueError(f"fgsm_eps must be in [0, 1] (pixel units), got {fgsm_eps!r}")
        if not isinstance(calibration_bin_size, int) or calibration_bin_size < 1:
            raise ValueError(f"calibration_bin_size must be an int >= 1, got {calibration_bin_size!r}")
        if not isinstance(ece_bins, int) or ece_bins < 1:
            raise ValueError(f"ece_bins must be an int >= 1, got {ece_bins!r}")
        if len(mean) != 3 or len(std) != 3 or any(v <= 0 for v in std):
            raise ValueError(f"mean and std must have 3 values, std > 0, got mean={mean!r}, std={std!r}")
        ci = dict(class_indices or {})
        extra = sorted(set(ci) - set(names))
        if extra:
            raise ValueError(f"class_indices names sets that are not in set_names: {extra}")
        self.classifier = classifier
        self.set_names = names
        self.class_indices = {k: (None if v is None else tuple(int(i) for i in v)) for k, v in ci.items()}
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.fgsm_eps = float(fgsm_eps)
        self.fgsm_sets = tuple(fgsm_sets)
        self.calibration_bin_size = calibration_bin_size
        self.calibration_include_last_bin = calibration_include_last_bin
        self.ece_bins = ece_bins
        self.results: dict[str, dict[str, float]] = {}
        self._records: dict[int, list[torch.Tensor]] = {}

    def logits(self, x: torch.Tensor, set_name: str) -> torch.Tensor:
        """The classifier's logits, restricted to the set's ``class_indices``.

        Shape:
            ``(B, 3, H, W)`` -> ``(B, C)`` (``C`` = len(class_indices) or all classes).
        """
        out = self.classifier(x)
        if out.ndim != 2:
            raise ValueError(f"the classifier must return logits (B, C), got shape {tuple(out.shape)}")
        cols = self.class_indices.get(set_name)
        if cols is None:
            return out
        if max(cols) >= out.shape[1]:
            raise ValueError(f"set {set_name!r} keeps logit {max(cols)} but the classifier has {out.shape[1]} outputs")
        return out[:, torch.as_tensor(cols, device=out.device)]

    def on_test_epoch_start(self) -> None:
        self._records = {k: [] for k in range(len(self.set_names))}
        self.results = {}

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Records per sample: index, confidence, top-1 / top-5 hit, top-1 hit under FGSM."""
        if dataloader_idx < len(self.set_names) and self.set_names[dataloader_idx] in self.fgsm_sets \
                and torch.is_inference_mode_enabled():
            raise RuntimeError(
                "RobustnessEvaluation needs input gradients for FGSM: run it with "
                "Trainer(inference_mode=False) (evaluation_trainer(..., inference_mode=False))"
            )
        if dataloader_idx >= len(self.set_names):
            raise IndexError(f"dataloader {dataloader_idx} has no name: set_names={self.set_names!r}")
        x, y, idx = batch
        name = self.set_names[dataloader_idx]
        with torch.no_grad():
            logits = self.logits(x, name)
        if y.numel() and int(y.max()) >= logits.shape[1]:
            raise ValueError(
                f"set {name!r} has label {int(y.max())} but the classifier gives {logits.shape[1]} logits "
                "(ImageNet-A/-R/-Sketch and Co-Mixup's sets need a 1000-class ImageNet classifier)"
            )
        probs = logits.float().softmax(-1)
        conf, pred = probs.max(-1)
        k = min(5, logits.shape[1])
        hit5 = (logits.topk(k, dim=-1).indices == y[:, None]).any(-1)
        cols = [idx.double(), conf.double(), (pred == y).double(), hit5.double()]
        if name in self.fgsm_sets:
            adv = fgsm(lambda z: self.logits(z, name), x, y, self.mean, self.std, self.fgsm_eps)
            with torch.no_grad():
                cols.append((self.logits(adv, name).argmax(-1) == y).double())
        self._records.setdefault(dataloader_idx, []).append(torch.stack(cols, 1))

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenation of every rank's ``t`` (rows may differ in number between ranks)."""
        if self.trainer.world_size == 1:
            return t
        n = torch.tensor([t.shape[0]], device=self.device)
        sizes = self.all_gather(n).reshape(-1).tolist()
        m = max(sizes)
        pad = torch.zeros((m - t.shape[0], t.shape[1]), dtype=t.dtype, device=t.device)
        g = self.all_gather(torch.cat([t, pad]))  # (W, m, cols)
        return torch.cat([g[r, : int(s)] for r, s in enumerate(sizes)])

    def on_test_epoch_end(self) -> None:
        for k, name in enumerate(self.set_names):  # every rank, every set: same collectives
            width = 5 if name in self.fgsm_sets else 4
            recs = self._records.get(k) or []
            local = torch.cat(recs) if recs else torch.zeros((0, width), dtype=torch.float64, device=self.device)
            rows = self._gather(local.to(self.device)).cpu()
            if rows.shape[0] == 0:
                continue
            order = torch.sort(rows[:, 0], stable=True).indices
            rows = rows[order]
            keep = torch.ones(rows.shape[0], dtype=torch.bool)
            keep[1:] = rows[1:, 0] != rows[:-1, 0]  # DistributedSampler pads with repeats
            rows = rows[keep]
            conf, hit1 = rows[:, 1], rows[:, 2]
            res = {
                "n": int(rows.shape[0]),
                "top1": 100 * float(hit1.mean()),
                "top5": 100 * float(rows[:, 3].mean()),
                "rms": 100 * rms_calibration_error(conf, hit1, self.calibration_bin_size,
                                                   self.calibration_include_last_bin),
                "ece": 100 * expected_calibration_error(conf, hit1, self.ece_bins),
            }
            if width == 5:
                res["fgsm_top1"] = 100 * float(rows[:, 4].mean())
            self.results[name] = res
            for metric, v in res.items():
                if metric != "n":
                    # identical on every rank already: the mean over ranks (sync_dist) keeps it
                    self.log(f"robustness/{name}/{metric}", float(v), sync_dist=True, add_dataloader_idx=False)
        self._records = {}

    def protocol(self) -> dict[str, Any]:
        """The settings the numbers were measured with (stated next to the table)."""
        return {
            "top1/top5": "percent of samples whose label is the arg-max / among the 5 largest logits "
                         "(IN-A, IN-R: logits restricted to their 200 ImageNet classes)",
            "rms": f"RMS calibration error (%) as PixMix calib_err: max-softmax confidence, adaptive "
                   f"equal-mass bins of {self.calibration_bin_size} samples, l2, "
                   f"{'all bins' if self.calibration_include_last_bin else 'last bin left out as in PixMix'}",
            "ece": f"top-label ECE (%), {self.ece_bins} equal-width bins",
            "fgsm": f"top-1 (%) under one FGSM step, eps={self.fgsm_eps:.6g} in [0, 1] pixel units "
                    f"(= {self.fgsm_eps * 255:.3g}/255), clamped to [0, 1], on {list(self.fgsm_sets)}",
            "mean": list(self.mean),
            "std": list(self.std),
        }


# --------------------------------------------------------------------------- running
def run_robustness(
    classifier: nn.Module,
    sets: Sequence[EvalSet],
    trainer: pl.Trainer | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    trainer_kwargs: Mapping[str, Any] | None = None,
    **module_kwargs: Any,
) -> RobustnessEvaluation:
    """Evaluate ``classifier`` on ``sets`` with a Trainer on ``trainer``'s hardware.

    The Trainer comes from :func:`~ssl_cropmix.evaluation.runner.evaluation_trainer` with
    ``inference_mode=False`` (FGSM needs gradients); ``trainer_kwargs`` override it (e.g.
    ``accelerator``, ``devices``, ``precision`` from the command line). Every rank must call it.

    Returns:
        The module; its ``results`` and ``protocol()`` feed :func:`write_robustness_table`.
    """
    from ssl_cropmix.evaluation.runner import evaluation_trainer

    if not sets:
        raise ValueError("sets must name at least one test set")
    module = RobustnessEvaluation(
        classifier, set_names=[s.name for s in sets],
        class_indices={s.name: s.class_indices for s in sets if s.class_indices}, **module_kwargs,
    )
    loaders = [indexed_dataloader(s.dataset, batch_size, num_workers) for s in sets]
    over = {"inference_mode": False, **dict(trainer_kwargs or {})}
    if over["inference_mode"]:
        raise ValueError("trainer_kwargs must not set inference_mode=True: FGSM needs gradients")
    evaluation_trainer(trainer, **over).test(module, dataloaders=loaders, verbose=False)
    return module


# --------------------------------------------------------------------------- table
@dataclass
class RobustnessTable:
    """One checkpoint's row of the paper's Table 2 / 7, plus per-set details and the protocol."""

    checkpoint: str
    results: dict[str, dict[str, float]]
    protocol: dict[str, Any] = field(default_factory=dict)

    def columns(self) -> dict[str, float | None]:
        """Table 2 / 7 columns; ``None`` where the set was not given (never 0)."""
        out: dict[str, float | None] = {}
        for col, (set_name, metric) in TABLE_COLUMNS.items():
            v = self.results.get(set_name, {}).get(metric)
            out[col] = None if v is None else float(v)
        return out

    def as_dict(self) -> dict[str, Any]:
        cols = self.columns()
        return {
            "checkpoint": self.checkpoint,
            "columns": {k: (NOT_GIVEN if v is None else (None if math.isnan(v) else round(v, 4)))
                        for k, v in cols.items()},
            "sets": {k: {m: (None if isinstance(v, float) and math.isnan(v) else v) for m, v in r.items()}
                     for k, r in self.results.items()},
            "protocol": self.protocol,
            "units": "percent; RMS lower is better, the other columns are top-1 accuracy (higher is better)",
        }

    def markdown(self) -> str:
        def fmt(v: float | None) -> str:
            if v is None:
                return NOT_GIVEN
            return "n/a" if math.isnan(v) else f"{v:.2f}"

        cols = self.columns()
        lines = [
            f"# Robustness: {self.checkpoint}",
            "",
            "| " + " | ".join(cols) + " |",
            "|" + "|".join("---:" for _ in cols) + "|",
            "| " + " | ".join(fmt(v) for v in cols.values()) + " |",
            "",
            "Percent. RMS: calibration error (lower is better); every other column: top-1 accuracy "
            "(higher is better). Clean / RMS / FGSM: the clean validation set; Replace / Noise: "
            "Co-Mixup's background-corrupted sets; IN-A / IN-R: 200-class logits; IN-S: ImageNet-Sketch. "
            f"\"{NOT_GIVEN}\": the set was not supplied; \"n/a\": too few samples for the metric.",
            "",
            "| set | n | top-1 | top-5 | RMS | ECE | FGSM top-1 |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in self.results.items():
            lines.append(
                f"| {name} | {r['n']} | {fmt(r['top1'])} | {fmt(r['top5'])} | {fmt(r['rms'])} | {fmt(r['ece'])} | "
                f"{fmt(r['fgsm_top1']) if 'fgsm_top1' in r else '-'} |"
            )
        lines += ["", "## Protocol", ""] + [f"- **{k}**: {v}" for k, v in self.protocol.items()]
        return "\n".join(lines) + "\n"


def write_robustness_table(
    module: RobustnessEvaluation | Mapping[str, Mapping[str, float]],
    out_dir: str | os.PathLike,
    checkpoint: str,
    stem: str = "robustness",
    protocol: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<stem>.md`` and ``<stem>.json``; call it on one rank (rank 0).

    Args:
        module: an evaluated :class:`RobustnessEvaluation` or its ``results``.
        out_dir: the run directory.
        checkpoint: what was evaluated (shown as the title).
        stem: file name without extension.
        protocol: extra protocol entries (transforms, data paths), added to the module's.

    Returns:
        ``(markdown path, json path)``.
    """
    if isinstance(module, RobustnessEvaluation):
        results, proto = dict(module.results), module.protocol()
    else:
        results, proto = {k: dict(v) for k, v in module.items()}, {}
    proto.update(protocol or {})
    table = RobustnessTable(checkpoint, results, proto)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    md.write_text(table.markdown())
    js.write_text(json.dumps(table.as_dict(), indent=2) + "\n")
    return md, js


# --------------------------------------------------------------------------- building the sets
def robustness_sets(
    val: str | os.PathLike | Dataset | None = None,
    replace: str | os.PathLike | None = None,
    noise: str | os.PathLike | None = None,
    imagenet_a: str | os.PathLike | None = None,
    imagenet_r: str | os.PathLike | None = None,
    imagenet_sketch: str | os.PathLike | None = None,
    image_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    imagenet_wnids: str | os.PathLike | Sequence[str] | None = None,
) -> list[EvalSet]:
    """The given test sets, each with its reader and evaluation transform; ``None`` = not given.

    Transforms: the standard evaluation view (resize to ``image_size / 0.875``, centre crop
    ``image_size``; small images: resize only, see ``probe_views``), except for Co-Mixup's
    pickled sets, which are centre-cropped to ``image_size`` without resizing, as Co-Mixup's
    ``ImageNetTestWithCenterCropAndNormalize`` does.

    Args:
        val: the clean validation set: an ImageFolder directory (its sorted class folders are
            the class indices, which for an ImageNet val tree are the ImageNet indices) or a
            dataset returning ``(normalised image, label)``.
        replace, noise: Co-Mixup's prepared sets (:func:`~ssl_cropmix.data.shift.comixup_set`).
        imagenet_a, imagenet_r, imagenet_sketch: the shift sets' folders.
        image_size, mean, std: evaluation view.
        imagenet_wnids: the ImageNet-1k wnid list for the wnid-labelled sets
            (:func:`~ssl_cropmix.data.shift.imagenet_wnids`; ``None``: timm's).
    """
    from torchvision.transforms import v2

    from ssl_cropmix.data import shift
    from ssl_cropmix.data.datasets import ImageFolderDataset
    from ssl_cropmix.data.views import ToNormalizedTensor, probe_views

    tf = probe_views(image_size, mean=mean, std=std)[1]
    crop_only = v2.Compose([v2.CenterCrop(image_size), ToNormalizedTensor(mean, std)])
    out: list[EvalSet] = []
    if val is not None:
        ds = val if isinstance(val, Dataset) else ImageFolderDataset(val, transform=tf)
        out.append(EvalSet("clean", ds))
    for name, root in (("replace", replace), ("noise", noise)):
        if root is not None:
            p = Path(root)
            ds = shift.CoMixupPickleSet(p, crop_only) if (p / "input.pkl").is_file() else shift.comixup_set(p, tf, imagenet_wnids)
            out.append(EvalSet(name, ds))
    for name, root, reader in (("imagenet-a", imagenet_a, shift.imagenet_a), ("imagenet-r", imagenet_r, shift.imagenet_r)):
        if root is not None:
            ds = reader(root, tf, imagenet_wnids)
            out.append(EvalSet(name, ds, ds.class_indices))
    if imagenet_sketch is not None:
        out.append(EvalSet("imagenet-sketch", shift.imagenet_sketch(imagenet_sketch, tf, imagenet_wnids)))
    return out
