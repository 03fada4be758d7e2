"""How evaluation callbacks launch a protocol: when, on which ranks, and where results go.

Lightning 2.6 calls ``Strategy.teardown`` (module -> CPU) *before* ``on_fit_end``, so the
final evaluation runs in ``on_train_end``, still on the training device; periodic runs
happen in ``on_train_epoch_end``. Both run on **every rank**: the protocol's own ``Trainer``
(:func:`~ssl_cropmix.evaluation.runner.evaluation_trainer`) joins the running process group,
so no rank waits alone in a collective.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from ssl_cropmix.evaluation.results import EvalResult, publish


class EvaluationLauncher(pl.Callback):
    """Runs :meth:`run` at the end of training and every ``every_n_epochs`` epochs.

    Subclasses implement ``evaluate(trainer, pl_module) -> EvalResult``.

    Args:
        every_n_epochs: also evaluate after every N pretraining epochs (0: only at the end;
            the last epoch is covered by the final run).
        results_path: JSON list file; ``None``: ``<run directory>/eval_results.json``.
    """

    def __init__(self, every_n_epochs: int = 0, results_path: str | Path | None = None) -> None:
        if not isinstance(every_n_epochs, int) or isinstance(every_n_epochs, bool) or every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be an int >= 0, got {every_n_epochs!r}")
        self.every_n_epochs = every_n_epochs
        self.results_path = results_path
        self.results: list[EvalResult] = []

    def evaluate(self, trainer: pl.Trainer | None, pl_module: Any) -> EvalResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, trainer: pl.Trainer | None, pl_module: Any) -> EvalResult:
        """Evaluate ``pl_module`` now (on every rank); log, write the JSON record, return."""
        res = self.evaluate(trainer, pl_module)
        publish(res, trainer, self.results_path)
        self.results.append(res)
        return res

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        e = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and e >= trainer.max_epochs
        if self.every_n_epochs and e % self.every_n_epochs == 0 and not last:
            self.run(trainer, pl_module)

    def check_num_classes(self, num_classes: int | None, provider: Any) -> int:
        """``num_classes`` (or the provider's), refused when below the provider's count."""
        data_c = getattr(provider, "num_classes", None) if provider is not None else None
        if num_classes is None:
            if data_c is None:
                raise ValueError("num_classes is unknown: pass num_classes= or a provider with `num_classes`")
            return int(data_c)
        if data_c is not None and int(num_classes) < int(data_c):
            raise ValueError(f"num_classes={num_classes} is below the data's class count ({int(data_c)})")
        return int(num_classes)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.run(trainer, pl_module)
