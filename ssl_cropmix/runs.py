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

Preemption: :func:`latest_checkpoint` finds what ``fit --ckpt_path last`` resumes (the
newest checkpoint, ``hpc_ckpt_<n>.ckpt`` or a ``checkpoints/*.ckpt``, of the experiment's
newest run), and :func:`slurm_job_id` / :func:`record_slurm_job` let a SLURM job that Lightning
requeued (``SLURMEnvironment(auto_requeue=True)``: SIGUSR1 -> ``hpc_ckpt_<n>.ckpt`` in
``trainer.default_root_dir`` -> ``scontrol requeue``) find its own run directory again. The
CLI sets ``default_root_dir`` to the run directory, so the hpc checkpoints are written into
the run they belong to.
"""

from __future__ import annotations

import csv
import errno
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
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


#: Lightning's name for the checkpoint its SLURM signal handler writes into
#: ``trainer.default_root_dir`` (``_CheckpointConnector.hpc_save_path``).
HPC_CHECKPOINT = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")
#: File in a run directory listing the SLURM jobs (one id a line) that wrote to it.
SLURM_JOBS_FILE = "slurm_jobs.txt"


def run_dir_of_checkpoint(ckpt_path: str | os.PathLike) -> Path | None:
    """The run directory a checkpoint was written into, or ``None``.

    A checkpoint ``<run>/checkpoints/<file>.ckpt`` (``ModelCheckpoint``) or
    ``<run>/hpc_ckpt_<n>.ckpt`` (Lightning's SLURM requeue checkpoint) belongs to ``<run>``
    when ``<run>`` holds the ``config.yaml`` that every ``ssl-cropmix`` run writes.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        return None
    if path.parent.name == "checkpoints":
        run = path.parent.parent
    elif HPC_CHECKPOINT.match(path.name):
        run = path.parent
    else:
        return None
    return run if (run / "config.yaml").is_file() else None


def run_checkpoints(run: str | os.PathLike) -> list[Path]:
    """Every checkpoint of a run: ``<run>/hpc_ckpt_<n>.ckpt`` and ``<run>/checkpoints/*.ckpt``
    (a ``last.ckpt`` link counts as the file it points to; temporary files are skipped)."""
    run = Path(run)
    found = [p for p in run.glob("hpc_ckpt_*.ckpt") if HPC_CHECKPOINT.match(p.name)]
    found += [p for p in (run / "checkpoints").glob("*.ckpt") if not p.name.startswith(".")]
    return sorted({p for p in found if p.is_file()})


def checkpoint_step(path: str | os.PathLike) -> int:
    """The ``global_step`` a Lightning checkpoint was saved at (``-1`` if it has none or cannot
    be read). The file is memory-mapped, so no tensor is read."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint / truncated / foreign pickle: never the newest
        return -1
    step = ckpt.get("global_step") if isinstance(ckpt, dict) else None
    return int(step) if isinstance(step, int) else -1


@dataclass(frozen=True)
class LatestCheckpoint:
    """What ``--ckpt_path last`` (or a requeued SLURM job) resumes.

    Attributes:
        run: the run directory the fit continues in.
        checkpoint: the checkpoint file (newest of ``run``'s by step, then mtime).
        step: its ``global_step``.
        candidates: how many checkpoint files the run holds (a ``last.ckpt`` link and the file
            it points to are one).
    """

    run: Path
    checkpoint: Path
    step: int
    candidates: int

    def describe(self) -> str:
        """One line naming the run, the checkpoint and why it was chosen."""
        return (f"run {self.run}, checkpoint {self.checkpoint.name} (step {self.step}; the newest of "
                f"{self.candidates} checkpoint(s) in the run, by step then modification time)")


def newest_checkpoint(run: str | os.PathLike) -> LatestCheckpoint | None:
    """The checkpoint of ``run`` with the highest ``global_step`` (ties: the later written),
    hpc and ``ModelCheckpoint`` files alike; ``None`` if the run has none."""
    files = run_checkpoints(run)
    if not files:
        return None
    keyed = [(checkpoint_step(p), p.stat().st_mtime, p) for p in files]
    step, _, best = max(keyed, key=lambda t: (t[0], t[1], str(t[2])))
    return LatestCheckpoint(Path(run), best, step, len({f.resolve() for f in files}))  # a last.ckpt link: one file


def experiment_runs(root: str | os.PathLike, name: str) -> list[Path]:
    """The run directories of experiment ``name`` under ``root`` (those holding a
    ``config.yaml``), in no particular order."""
    parent = Path(root) / name
    if not parent.is_dir():
        return []
    return [p for p in parent.iterdir() if p.is_dir() and (p / "config.yaml").is_file()]


def latest_checkpoint(root: str | os.PathLike, name: str, runs: list[Path] | None = None) -> LatestCheckpoint | None:
    """The checkpoint ``fit --ckpt_path last`` resumes: of the experiment's runs that hold a
    checkpoint, the newest run (the one whose latest checkpoint was written last), and in it
    the checkpoint with the highest step (:func:`newest_checkpoint`). ``None`` without one.

    Args:
        root: ``trainer.default_root_dir`` as given (parent of all experiments).
        name: experiment name.
        runs: restrict the search to these run directories (default: every run of ``name``).
    """
    newest: tuple[float, Path] | None = None
    for run in experiment_runs(root, name) if runs is None else runs:
        files = run_checkpoints(run)
        if not files:
            continue
        written = max(p.stat().st_mtime for p in files)
        if newest is None or written > newest[0]:
            newest = (written, run)
    return None if newest is None else newest_checkpoint(newest[1])


def slurm_job_id() -> str | None:
    """This SLURM job's id as Lightning's requeue uses it (``<array job>_<task>`` for array
    jobs), or ``None`` when Lightning does not run under SLURM (``SLURMEnvironment.detect()``:
    no ``SLURM_NTASKS``, or an interactive job named ``bash`` / ``interactive``)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return None
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None and os.environ.get("SLURM_ARRAY_TASK_ID") is not None:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID") or None


def record_slurm_job(run: str | os.PathLike, job_id: str) -> None:
    """Add ``job_id`` to ``<run>/slurm_jobs.txt`` (once): the requeued job finds its run by it."""
    path = Path(run) / SLURM_JOBS_FILE
    if job_id in slurm_jobs(run):
        return
    with open(path, "a") as f:
        f.write(job_id + "\n")


def slurm_jobs(run: str | os.PathLike) -> list[str]:
    """The SLURM job ids recorded in a run directory."""
    path = Path(run) / SLURM_JOBS_FILE
    return path.read_text().split() if path.is_file() else []


def runs_of_slurm_job(root: str | os.PathLike, name: str, job_id: str) -> list[Path]:
    """The runs of experiment ``name`` that SLURM job ``job_id`` wrote to."""
    return [r for r in experiment_runs(root, name) if job_id in slurm_jobs(r)]


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
