"""End-of-run summary: what a fit produced, printed once (global rank 0) after ``fit``."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch


class RunSummary(pl.Callback):
    """Prints, after every ``fit`` on global rank 0: the run directory, the last / best
    checkpoint paths, the final online-probe and kNN values, each evaluation result (from
    every callback with a ``results`` list of :class:`~ssl_cropmix.evaluation.results.EvalResult`)
    and the wall time. ``lines`` keeps the printed text.

    Args:
        metric_keys: substrings of logged metric names to report (default: online probe and kNN).
    """

    def __init__(self, metric_keys: tuple[str, ...] = ("online", "knn")) -> None:
        self.metric_keys = tuple(metric_keys)
        self.lines: list[str] = []
        self._t0 = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

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
        lines.append(f"wall time: {time.perf_counter() - self._t0:.1f}s "
                     f"({trainer.current_epoch} epochs, {trainer.global_step} steps)")
        return lines

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.lines = self.summary(trainer)
        print("\n".join(self.lines), flush=True)
