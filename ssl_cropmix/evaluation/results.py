"""One record per evaluation result: metric keys, JSON records, hardware.

Every protocol reports an :class:`EvalResult`. Its ``key`` (``"linear"``,
``"finetune_1pct"``, ``"mae_finetune"``, ...) makes the logged metric names unique
(``eval/<key>/top1``, ``eval/<key>/top5``), and :func:`publish` appends its JSON record to
``<run directory>/eval_results.json`` (a JSON list, one record per result).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from ssl_cropmix.trackers import log_record

#: File name of the JSON list of result records in a run directory.
RESULTS_FILE = "eval_results.json"


@dataclass
class EvalResult:
    """What one evaluation run produced.

    Attributes:
        key: unique name of protocol + label fraction; metrics are ``eval/<key>/top1|top5``.
        protocol: human-readable statement of exactly how the numbers were made.
        top1, top5: accuracies in percent on the full validation set (every rank agrees).
        epochs: evaluation epochs.
        train_samples: distinct labelled training images (or cached features) used.
        val_samples: distinct validation images.
        hparams: every hyper-parameter of the protocol (optimizer, lrs, batch sizes, ...).
        hardware: where it ran: accelerator, strategy, world size, precision, and the device
            of the evaluation module's parameters during its training steps.
        wall_seconds: wall time of the whole evaluation (extraction included).
        checkpoint: the evaluated checkpoint's path, when known.
        pretrain_epoch: pretraining epochs completed when it ran (callbacks).
        details: protocol-specific extras (lr history, feature dimension, ...).
    """

    key: str
    protocol: str
    top1: float
    top5: float
    epochs: int
    train_samples: int
    val_samples: int
    hparams: dict[str, Any] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0
    checkpoint: str | None = None
    pretrain_epoch: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """``{"eval/<key>/top1": ..., "eval/<key>/top5": ...}``."""
        return {f"eval/{self.key}/top1": self.top1, f"eval/{self.key}/top5": self.top5}

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable record."""
        return json.loads(json.dumps(asdict(self), default=str))


def hardware_of(trainer: pl.Trainer, step_device: str | None = None) -> dict[str, Any]:
    """Accelerator, strategy, world size, devices per node, nodes and precision of ``trainer``."""
    return {
        "accelerator": type(trainer.accelerator).__name__,
        "strategy": type(trainer.strategy).__name__,
        "world_size": int(trainer.world_size),
        "num_nodes": int(trainer.num_nodes),
        "devices_per_node": int(trainer.num_devices),
        "precision": str(trainer.precision),
        "device": step_device,
    }


def run_directory(trainer: pl.Trainer | None) -> Path | None:
    """The run directory of ``trainer``: ``log_dir`` (the logger's version folder), else
    ``default_root_dir``; ``None`` without a trainer."""
    if trainer is None:
        return None
    return Path(trainer.log_dir or trainer.default_root_dir)


def checkpoint_run_directory(ckpt_path: str | Path) -> Path:
    """The run directory a checkpoint belongs to: ``<run>/checkpoints/x.ckpt`` -> ``<run>``,
    otherwise the checkpoint's own folder."""
    p = Path(ckpt_path).resolve().parent
    return p.parent if p.name == "checkpoints" else p


def append_record(path: str | Path, record: dict[str, Any]) -> Path:
    """Append ``record`` to the JSON list at ``path`` (file and folders created)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(p.read_text()) if p.exists() and p.stat().st_size else []
    records.append(record)
    p.write_text(json.dumps(records, indent=2))
    return p


def publish(res: EvalResult, trainer: pl.Trainer | None, results_path: str | Path | None = None) -> Path | None:
    """Log ``res.metrics()`` to ``trainer``'s loggers, append the record to ``results_path``
    (default ``<run directory>/eval_results.json``; written by global rank 0 only), give the
    record to the trackers (``eval/<key>/record``: W&B summary, MLflow artifact; see
    :mod:`ssl_cropmix.trackers`) and print one line. Call on every rank.

    Returns:
        the JSON file written (``None`` when there is neither a path nor a trainer).

    Raises:
        ValueError: top-1 or top-5 is not a finite number: nothing is logged or written.
    """
    import math

    from pytorch_lightning.utilities import rank_zero_info

    if not (isinstance(res.top1, (int, float)) and math.isfinite(res.top1)
            and isinstance(res.top5, (int, float)) and math.isfinite(res.top5)):
        raise ValueError(
            f"[eval/{res.key}] top-1 {res.top1!r} / top-5 {res.top5!r} is not a number ({res.val_samples} validation "
            f"image(s), {res.train_samples} labelled image(s)): nothing logged or written; {res.protocol}"
        )

    rank = int(getattr(trainer, "global_rank", 0)) if trainer is not None else _dist_rank()
    if trainer is not None:
        res.pretrain_epoch = int(trainer.current_epoch)
        for lg in trainer.loggers:
            lg.log_metrics(res.metrics(), step=trainer.global_step)
    path = results_path
    if path is None:
        rd = run_directory(trainer)
        path = rd / RESULTS_FILE if rd is not None else None
    if path is not None and rank == 0:
        append_record(path, res.as_dict())
    log_record(trainer, f"eval/{res.key}/record", res.as_dict())  # W&B summary / MLflow artifact
    rank_zero_info(f"[eval/{res.key}] {res.protocol}: top-1 {res.top1:.2f}%, top-5 {res.top5:.2f}% ({res.wall_seconds:.1f}s)")
    return Path(path) if path is not None else None


def _dist_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0
