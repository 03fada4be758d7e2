"""Experiment trackers (W&B, MLflow) next to a run directory's TensorBoard + CSV files.

Lightning's own loggers do the work (``WandbLogger``, ``MLFlowLogger``): they receive the
run's metrics and the module's hyper-parameters like any logger. This module adds what a
logger cannot know:

* :func:`tracker_defaults`: the run's identity for a tracker the user configured: run name
  ``<experiment>/<version>`` (W&B ``name`` with the experiment as ``project``, files under the
  run directory; MLflow ``run_name`` in the experiment ``<experiment>``), each only where the
  user left the argument at its default;
* :func:`log_record` / :func:`log_text`: a JSON record (an evaluation result) or a text (the
  run summary) to every tracker of a trainer (W&B: the run's summary; MLflow: an artifact);
* :func:`check_tracker_installed`: the one-line error that names the package's extra.

The trackers are optional extras: ``pip install 'ssl_cropmix[wandb]'`` / ``'ssl_cropmix[mlflow]'``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from typing import Any

import pytorch_lightning as pl

#: Tracker logger class name -> (module it needs, the ``ssl_cropmix`` extra that installs it).
TRACKERS: dict[str, tuple[str, str]] = {
    "WandbLogger": ("wandb", "wandb"),
    "MLFlowLogger": ("mlflow", "mlflow"),
}


class TrackerNotInstalledError(ImportError):
    """A ``trainer.logger`` names a tracker whose package is not installed (or that the
    installed package refuses as configured)."""


def tracker_class_name(class_path: Any) -> str | None:
    """``"WandbLogger"`` / ``"MLFlowLogger"`` when ``class_path`` names Lightning's tracker
    logger (or a subclass of it), else ``None``; nothing is imported for other names."""
    if not isinstance(class_path, str) or not class_path:
        return None
    mod, _, name = class_path.rpartition(".")
    if name in TRACKERS and (not mod or mod.split(".")[0] in ("pytorch_lightning", "lightning")):
        return name
    if not mod:
        return None
    try:
        cls = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError):
        return None
    from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

    for base in (WandbLogger, MLFlowLogger):
        if isinstance(cls, type) and issubclass(cls, base):
            return base.__name__
    return None


def _module_available(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_tracker_installed(class_path: str) -> None:
    """Raise :class:`TrackerNotInstalledError` (one line naming the extra) when the tracker
    ``class_path`` names cannot be used because its package is missing."""
    kind = tracker_class_name(class_path)
    if kind is None:
        return
    module, extra = TRACKERS[kind]
    if not _module_available(module):
        raise TrackerNotInstalledError(
            f"trainer.logger={class_path} needs the {module!r} package, which is not installed: "
            f"pip install 'ssl_cropmix[{extra}]'"
        )


def check_mlflow_store(init_args: dict[str, Any]) -> None:
    """Recent MLflow (3.18 here) refuses its file store (``file:./mlruns``, the ``save_dir`` default)
    unless ``MLFLOW_ALLOW_FILE_STORE=true``: say so in one line before the logger is built
    (the variable is the user's choice to make; it is not set here)."""
    import os

    uri = init_args.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    file_store = uri is None or str(uri).startswith("file:") or "://" not in str(uri)
    try:
        from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    except ImportError:  # an mlflow without the switch takes file stores as they are
        return
    if file_store and not MLFLOW_ALLOW_FILE_STORE.get():
        where = uri or f"file:{init_args.get('save_dir') or './mlruns'}"
        raise TrackerNotInstalledError(
            f"trainer.logger=MLFlowLogger with the local file store {where!r}: this mlflow accepts it only with "
            "MLFLOW_ALLOW_FILE_STORE=true in the environment (or give a tracking server URI)"
        )


def tracker_defaults(class_path: str, init_args: dict[str, Any], experiment: str, version: str,
                     run_dir: str) -> dict[str, Any]:
    """The init arguments a tracker gets from the run: only those the user left unset.

    Args:
        class_path: the logger's class path (W&B or MLflow; others get nothing).
        init_args: the arguments the user gave.
        experiment: the run's experiment name.
        version: the run's version (its folder name).
        run_dir: the run directory (W&B writes its offline files under ``<run_dir>/wandb``).

    Returns:
        the arguments to add.
    """
    kind = tracker_class_name(class_path)
    name = f"{experiment}/{version}"
    out: dict[str, Any] = {}
    if kind == "WandbLogger":
        if init_args.get("name") is None:
            out["name"] = name
        if init_args.get("project") is None:
            out["project"] = experiment
        if init_args.get("save_dir") in (None, ".") and init_args.get("dir") is None:
            out["save_dir"] = run_dir
    elif kind == "MLFlowLogger":
        if init_args.get("experiment_name") in (None, "lightning_logs"):
            out["experiment_name"] = experiment
        if init_args.get("run_name") is None:
            out["run_name"] = name
    return out


def trackers_of(trainer: pl.Trainer | None) -> list[Any]:
    """The W&B and MLflow loggers of ``trainer`` (empty without a trainer)."""
    if trainer is None:
        return []
    from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

    return [lg for lg in trainer.loggers if isinstance(lg, (WandbLogger, MLFlowLogger))]


def log_record(trainer: pl.Trainer | None, name: str, record: dict[str, Any]) -> None:
    """Log a JSON record to every tracker of ``trainer`` (global rank 0 only): W&B stores it
    in the run's summary under ``name``, MLflow as the artifact ``<name>.json``."""
    _log(trainer, name, json.loads(json.dumps(record, default=str)), ".json")


def log_text(trainer: pl.Trainer | None, name: str, text: str) -> None:
    """Log a text to every tracker of ``trainer`` (global rank 0 only): W&B stores it in the
    run's summary under ``name``, MLflow as the artifact ``<name>.txt``."""
    _log(trainer, name, text, ".txt")


def _log(trainer: pl.Trainer | None, name: str, payload: Any, suffix: str) -> None:
    if trainer is None or not trainer.is_global_zero:
        return
    from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

    for lg in trackers_of(trainer):
        if isinstance(lg, WandbLogger):
            lg.experiment.summary[name] = payload
        elif isinstance(lg, MLFlowLogger):
            log = lg.experiment.log_dict if suffix == ".json" else lg.experiment.log_text
            log(lg.run_id, payload, f"{name}{suffix}")
