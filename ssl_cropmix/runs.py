"""Run directories of ``ssl-cropmix``: one folder per run, found again on resume.

A run writes to ``<root>/<experiment>/<version>/`` (config, TensorBoard events,
``metrics.csv``, ``checkpoints/``). The pieces here keep that promise when runs start in
the same second (:func:`new_run_dir` creates the folder atomically and adds a suffix on a
collision), when a fit is resumed (:func:`run_dir_of_checkpoint` finds the checkpoint's run,
:class:`RunCSVLogger` appends to its ``metrics.csv``), when a run is short
(:class:`LogLastStep` logs the final step) and when a run fails before it wrote anything
(:func:`remove_if_empty`).
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

#: Environment variable through which rank 0 hands its run version to the processes that
#: Lightning's subprocess launcher starts for the other local ranks (they re-run the CLI).
VERSION_ENV = "SSL_CROPMIX_RUN_VERSION"

_RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "PMI_RANK", "OMPI_COMM_WORLD_RANK")


def is_launched_child() -> bool:
    """Whether this process is a non-zero rank of a distributed launch (it must not create
    a run directory: rank 0 owns it, and Lightning broadcasts rank 0's checkpoint path)."""
    for var in _RANK_VARS:
        value = os.environ.get(var)
        if value is not None and value.strip().isdigit() and int(value) != 0:
            return True
    return False


def timestamp() -> str:
    """The default run version: local time to the second, ``YYYYmmdd-HHMMSS``."""
    return time.strftime("%Y%m%d-%H%M%S")


def new_run_dir(root: str | os.PathLike, name: str, version: str | None = None) -> Path:
    """Create ``root/name/version`` and return it; never reuse an existing folder.

    ``os.mkdir`` is atomic, so of several processes asking for the same version at the same
    moment exactly one gets it; the others get ``version-1``, ``version-2``, ...

    Args:
        root: parent of all experiments (``trainer.default_root_dir``).
        name: experiment name.
        version: wanted version (default: :func:`timestamp`).
    """
    parent = Path(root) / name
    parent.mkdir(parents=True, exist_ok=True)
    base = version or timestamp()
    for k in range(10_000):
        candidate = parent / (base if k == 0 else f"{base}-{k}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"no free run directory for version {base!r} under {parent}")  # pragma: no cover


def run_dir_of_checkpoint(ckpt_path: str | os.PathLike) -> Path | None:
    """The run directory a checkpoint was written into, or ``None``.

    A checkpoint ``<run>/checkpoints/<file>.ckpt`` belongs to ``<run>`` when ``<run>`` holds
    the ``config.yaml`` that every ``ssl-cropmix`` run writes.
    """
    path = Path(ckpt_path)
    if path.parent.name != "checkpoints" or not path.is_file():
        return None
    run = path.parent.parent
    return run if (run / "config.yaml").is_file() else None


def keep_previous_config(run: Path) -> Path | None:
    """Before a resumed segment overwrites ``config.yaml``, keep the earlier one as
    ``config.<k>.yaml`` (k = 1, 2, ... in segment order). Returns the kept copy's path."""
    current = run / "config.yaml"
    if not current.is_file():
        return None
    k = 1
    while (run / f"config.{k}.yaml").exists():
        k += 1
    target = run / f"config.{k}.yaml"
    shutil.copy2(current, target)
    return target


def remove_if_empty(run: Path) -> bool:
    """Remove a run directory that holds no result (no checkpoint, no ``metrics.csv``):
    what a run that failed at setup leaves behind (config, hparams, an empty event file).
    Returns whether it was removed."""
    if not run.is_dir():
        return False
    if any(run.rglob("*.ckpt")) or any(run.rglob("metrics.csv")):
        return False
    shutil.rmtree(run, ignore_errors=True)
    return not run.exists()


class _AppendingWriter(ExperimentWriter):
    """CSV writer for a folder this run owns: no "previous log files will be deleted"
    check (the folder is shared with the TensorBoard logger, and on resume its
    ``metrics.csv`` holds the earlier segments' rows, which are kept and appended to)."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):  # resume: continue the existing header
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(set(header))

    def _check_log_dir_exists(self) -> None:  # the parent warns and deletes metrics.csv here
        pass


class RunCSVLogger(CSVLogger):
    """:class:`~pytorch_lightning.loggers.CSVLogger` for an ``ssl-cropmix`` run directory.

    Same arguments and files as Lightning's; it appends to an existing ``metrics.csv``
    (resume) instead of deleting it, and does not warn about the TensorBoard files that
    share the folder.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:  # type: ignore[override]
        if self._experiment is None:
            self._experiment = _AppendingWriter(self.log_dir)
        return self._experiment


class LogLastStep(pl.Callback):
    """Make the last training step of a fit a logging step.

    Lightning logs training metrics every ``log_every_n_steps``; a run shorter than that
    (3 steps with ``log_every_n_steps: 20``) would end with no training row in
    ``metrics.csv``. On the final batch this sets the trainer's logging interval to 1 (the
    value is restored at the end of the fit), so the last step is logged like any other.
    """

    def __init__(self) -> None:
        self._interval: int | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.log_every_n_steps <= 0 or self._interval is not None:
            return
        last_epoch = trainer.max_epochs is not None and trainer.max_epochs >= 0 and (
            trainer.current_epoch + 1 >= trainer.max_epochs
        )
        max_steps_hit = trainer.max_steps is not None and trainer.max_steps > 0 and (
            trainer.global_step >= trainer.max_steps
        )
        if max_steps_hit or (last_epoch and trainer.is_last_batch):
            self._interval, trainer.log_every_n_steps = trainer.log_every_n_steps, 1

    def on_train_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._interval is not None:
            trainer.log_every_n_steps, self._interval = self._interval, None
