"""Run directories of ``ssl-cropmix``: one folder per run, found again on resume.

A run writes to ``<root>/<experiment>/<version>/`` (config, TensorBoard events,
``metrics.csv``, ``checkpoints/``). The pieces here keep that promise when runs start in
the same second (:func:`new_run_dir` creates the folder atomically and adds a suffix on a
collision), when a fit is resumed (:func:`run_dir_of_checkpoint` finds the checkpoint's run,
:class:`RunCSVLogger` appends to its ``metrics.csv``), when a run is short
(:class:`LogLastStep` logs the final step), when a run fails before it wrote anything
(:func:`remove_if_empty`) and when the disk fills up or is read-only: checkpoints are written
atomically (:class:`AtomicCheckpointIO`, installed by the CLI), so a failed write leaves no
truncated file under a checkpoint's name, and the error names the directory
(:class:`CheckpointWriteError`, :class:`RunDirectoryError`).
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.plugins.io import TorchCheckpointIO

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


class RunDirectoryError(OSError):
    """The run directory cannot be created (read-only or full file system, no permission)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full or read-only file system ...); nothing was left
    under its name."""


#: ``errno`` values that mean "this directory cannot take the write", and how to say so.
_WRITE_ERRORS = {
    errno.ENOSPC: "is full (no space left on its file system)",
    errno.EDQUOT: "is full (disk quota exceeded)",
    errno.EROFS: "is read-only (read-only file system)",
    errno.EACCES: "is not writable (permission denied)",
    errno.EPERM: "is not writable (operation not permitted)",
}


def describe_write_error(e: OSError, directory: str | os.PathLike) -> str:
    """``"directory '<d>' is full (...)"`` for the usual write failures, else the OS's words."""
    what = _WRITE_ERRORS.get(e.errno or -1)
    return f"directory {str(directory)!r} {what}" if what else f"{str(directory)!r}: {e.strerror or e}"


def new_run_dir(root: str | os.PathLike, name: str, version: str | None = None) -> Path:
    """Create ``root/name/version`` and return it; never reuse an existing folder.

    ``os.mkdir`` is atomic, so of several processes asking for the same version at the same
    moment exactly one gets it; the others get ``version-1``, ``version-2``, ...

    Args:
        root: parent of all experiments (``trainer.default_root_dir``).
        name: experiment name.
        version: wanted version (default: :func:`timestamp`).

    Raises:
        RunDirectoryError: the folder cannot be created (the message names the directory).
    """
    parent = Path(root) / name
    try:
        parent.mkdir(parents=True, exist_ok=True)
        base = version or timestamp()
        for k in range(10_000):
            candidate = parent / (base if k == 0 else f"{base}-{k}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            return candidate
    except OSError as e:
        where = Path(e.filename) if e.filename else parent
        raise RunDirectoryError(
            e.errno, f"cannot create the run directory under trainer.default_root_dir={str(root)!r}: "
            f"{describe_write_error(e, where.parent if where != Path(root) else where)}; "
            "set --trainer.default_root_dir to a writable directory"
        ) from e
    raise RuntimeError(f"no free run directory for version {base!r} under {parent}")  # pragma: no cover


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic writes on the target file system.

    The checkpoint is written to a temporary file in the target directory, flushed and
    ``fsync``-ed, then renamed over the final name (``os.replace``: atomic on POSIX), and the
    directory entry is synced. A write that fails (disk full, read-only, killed process) leaves
    no file under the final name and no temporary file: ``--ckpt_path`` and resume scripts
    never find a truncated checkpoint. Remote (fsspec) paths go through Lightning's own save.

    Installed by the ``ssl-cropmix`` CLI; in Python: ``pl.Trainer(plugins=[AtomicCheckpointIO()])``.

    Raises:
        CheckpointWriteError: the write failed; the message names the directory and why.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        from lightning_fabric.utilities.cloud_io import _is_local_file_protocol

        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        directory = path.parent
        tmp: str | None = None
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
            with os.fdopen(fd, "wb") as f:
                self._write(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)  # mkstemp's 0600 -> what a plain open() gives
            os.replace(tmp, path)
            tmp = None
            _fsync_directory(directory)
        except OSError as e:
            raise CheckpointWriteError(
                e.errno, f"could not write checkpoint {str(path)!r}: {describe_write_error(e, directory)}; "
                "nothing was left under that name (earlier checkpoints are kept)"
            ) from e
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    @staticmethod
    def _write(checkpoint: dict[str, Any], f: Any) -> None:
        """Serialise ``checkpoint`` into the open file ``f`` (the one place that writes bytes)."""
        import torch

        torch.save(checkpoint, f)


def _fsync_directory(directory: Path) -> None:
    """Persist the rename (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
