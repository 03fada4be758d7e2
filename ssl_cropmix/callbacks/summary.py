"""End-of-run summary: what a fit produced, printed once (global rank 0) after ``fit``."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch

from ssl_cropmix.trackers import log_text


def _data_sources(trainer: pl.Trainer) -> list[Any]:
    """The image sources (``datasets._Source``) behind the trainer's training and validation
    loaders (``ViewDataset.source``), each once."""
    loaders: list[Any] = []
    for attr in ("train_dataloader", "val_dataloaders"):
        try:
            value = getattr(trainer, attr)
        except Exception:  # no loop attached yet
            value = None
        loaders += value if isinstance(value, (list, tuple)) else [value] if value is not None else []
    out: dict[int, Any] = {}
    for loader in loaders:
        src = getattr(getattr(loader, "dataset", None), "source", None)
        if callable(getattr(src, "unreadable_report", None)):
            out.setdefault(id(src), src)
    return list(out.values())


class RunSummary(pl.Callback):
    """Prints, after every ``fit`` on global rank 0: the run directory, the last / best
    checkpoint paths, the final online-probe and kNN values, each evaluation result (from
    every callback with a ``results`` list of :class:`~ssl_cropmix.evaluation.results.EvalResult`),
    any unreadable data, and the wall time. ``lines`` keeps the printed text, which also goes
    to the run's trackers (W&B summary ``run_summary``, MLflow artifact ``run_summary.txt``).

    At the end of every training epoch it also checks the data the loaders read: a class whose
    images were all unreadable, or more than ``max_unreadable_share`` of a split, ends the
    epoch with an :class:`~ssl_cropmix.data.datasets.UnreadableDataWarning` naming the class
    and the count (their samples were silently replaced by other images with
    ``on_bad_image="skip"``), and the summary repeats it (``data_warnings``). Flags found in
    DataLoader workers count (shared memory), and under DDP every rank's are combined.

    Args:
        metric_keys: substrings of logged metric names to report (default: online probe and kNN).
        max_unreadable_share: share of a split's files that may be unreadable before the epoch
            warns (default :data:`~ssl_cropmix.data.datasets.MAX_UNREADABLE_SHARE`, 1 %).
    """

    def __init__(self, metric_keys: tuple[str, ...] = ("online", "knn"), max_unreadable_share: float | None = None) -> None:
        from ssl_cropmix.data.datasets import MAX_UNREADABLE_SHARE

        share = MAX_UNREADABLE_SHARE if max_unreadable_share is None else max_unreadable_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
            raise ValueError(f"max_unreadable_share must be a number in [0, 1), got {max_unreadable_share!r}")
        self.metric_keys = tuple(metric_keys)
        self.max_unreadable_share = float(share)
        self.lines: list[str] = []
        #: unreadable-data findings: message -> epochs in which it held
        self.data_warnings: dict[str, list[int]] = {}
        self._t0 = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from pytorch_lightning.utilities import rank_zero_warn

        from ssl_cropmix.data.datasets import UnreadableDataWarning

        for src in _data_sources(trainer):
            bad = src.bad_mask
            if trainer.world_size > 1:  # every rank read its own shard: combine the flags (a collective)
                bad = trainer.strategy.all_gather(bad.to(torch.uint8).to(pl_module.device)).reshape(-1, bad.numel())
                bad = bad.amax(0).bool().cpu()
            where = str(getattr(src, "root", type(src).__name__))
            for finding in src.unreadable_report(self.max_unreadable_share, bad):
                msg = f"{where!r}: {finding}"
                self.data_warnings.setdefault(msg, []).append(int(trainer.current_epoch))
                rank_zero_warn(
                    f"epoch {trainer.current_epoch}: {msg}; their samples were replaced by other images of the "
                    "split (on_bad_image='skip'), which biases the run: fix or remove the files",
                    category=UnreadableDataWarning,
                )

    def summary(self, trainer: pl.Trainer) -> list[str]:
        """The summary lines for ``trainer``'s finished fit."""
        from ssl_cropmix.evaluation.results import run_directory

        lines = ["=" * 20 + " ssl_cropmix run summary " + "=" * 20]
        lines.append(f"run directory:   {run_directory(trainer)}")
        ck = trainer.checkpoint_callback
        last = getattr(ck, "last_model_path", "") if ck is not None else ""
        best = getattr(ck, "best_model_path", "") if ck is not None else ""
        if not last and ck is not None and getattr(ck, "monitor", None) is None:
            last = best  # without a monitored metric the "best" checkpoint is the latest one
        lines.append(f"last checkpoint: {last or '(none)'}")
        lines.append(f"best checkpoint: {best or '(none)'}")
        for k in sorted(trainer.callback_metrics):
            if any(s in k for s in self.metric_keys):
                v = trainer.callback_metrics[k]
                lines.append(f"{k}: {float(v) if isinstance(v, torch.Tensor) else v:.4g}")
        for cb in trainer.callbacks:
            for res in getattr(cb, "results", None) or []:
                if hasattr(res, "key") and hasattr(res, "top1"):
                    lines.append(f"eval/{res.key}: top-1 {res.top1:.2f}%, top-5 {res.top5:.2f}% "
                                 f"(after epoch {res.pretrain_epoch}, {res.wall_seconds:.1f}s) - {res.protocol}")
        for msg, epochs in self.data_warnings.items():
            lines.append(f"unreadable data: {msg} (epoch{'s' if len(epochs) > 1 else ''} "
                         f"{', '.join(map(str, epochs))})")
        lines.append(f"wall time: {time.perf_counter() - self._t0:.1f}s "
                     f"({trainer.current_epoch} epochs, {trainer.global_step} steps)")
        return lines

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.lines = self.summary(trainer)
        print("\n".join(self.lines), flush=True)
        log_text(trainer, "run_summary", "\n".join(self.lines))  # W&B summary / MLflow artifact
