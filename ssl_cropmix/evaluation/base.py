"""What every evaluation LightningModule shares: top-k counting over unpadded shards,
the hardware it ran on, the learning rates it used, and the run helper."""

from __future__ import annotations

import time
from dataclasses import dataclass
from contextlib import contextmanager
from typing import Any, Iterator

import pytorch_lightning as pl
import torch
from torch import nn

from ssl_cropmix.evaluation.results import EvalResult, hardware_of
from ssl_cropmix.evaluation.protocol import get_backbone, module_device


class EvalModule(pl.LightningModule):
    """Base of the protocol modules.

    Subclasses implement ``logits(x) -> (B, C)`` and ``training_step``. Validation counts
    top-1 / top-5 hits on each rank's unpadded shard and sums them over ranks, so
    ``val_top1`` / ``val_top5`` (percent) are the full validation set's accuracies on every
    rank. ``ran_under`` records the trainer's hardware at fit start and the device of the
    parameters during the first training step; ``lr_history`` holds each optimizer step's
    learning rate of every parameter group.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.num_classes = num_classes
        self.ran_under: dict[str, Any] = {}
        self.lr_history: list[list[float]] = []
        self.val_top1: float = float("nan")
        self.val_top5: float = float("nan")
        self.val_count: int = 0
        self._hits = torch.zeros(3, dtype=torch.float64)

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_fit_start(self) -> None:
        self.ran_under = hardware_of(self.trainer)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.ran_under.get("device") is None:
            p = next((q for q in self.parameters() if q.requires_grad), None)
            self.ran_under["device"] = str(p.device) if p is not None else str(self.device)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.lr_history.append([float(g["lr"]) for g in optimizer.param_groups])

    # ----------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._hits = torch.zeros(3, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self.logits(x).float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == y[:, None]
        self._hits += torch.stack([hit[:, 0].sum(), hit.any(1).sum(), torch.tensor(len(y), device=hit.device)]).to(self._hits)

    def on_validation_epoch_end(self) -> None:
        hits = self._hits
        if torch.distributed.is_available() and torch.distributed.is_initialized() and self.trainer.world_size > 1:
            hits = self.trainer.strategy.reduce(hits.clone(), reduce_op="sum")
        n = float(hits[2])
        self.val_count = int(n)
        self.val_top1 = 100.0 * float(hits[0]) / max(n, 1.0)
        self.val_top5 = 100.0 * float(hits[1]) / max(n, 1.0)


@contextmanager
def isolated_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run with torch's RNG seeded to ``seed`` and restore the caller's RNG afterwards, so an
    evaluation launched mid-pretraining does not shift the pretraining's random stream."""
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def protocol_result(module: EvalModule, t0: float, **fields: Any) -> EvalResult:
    """The :class:`EvalResult` of a fitted protocol module.

    Takes top-1 / top-5, the validation count and the hardware from ``module``, and the wall
    seconds since ``t0`` (a ``time.perf_counter()`` reading); ``fields`` are the protocol's own
    (``key``, ``protocol``, ``epochs``, ``train_samples``, ``hparams``, ``checkpoint``, ``details``).

    Raises:
        RuntimeError: the fit validated no image or trained no step (its accuracy would be
            NaN or that of an untrained head): no result is made of it.
    """
    steps = int(getattr(getattr(module, "_trainer", None), "global_step", 1) or 0)
    if module.val_count < 1 or steps < 1:
        raise RuntimeError(
            f"{fields.get('key', 'evaluation')}: the evaluation fit ran {steps} training step(s) and validated "
            f"{module.val_count} image(s); no result is recorded ({fields.get('protocol', '')})"
        )
    return EvalResult(
        top1=module.val_top1, top5=module.val_top5, val_samples=module.val_count, hardware=dict(module.ran_under),
        wall_seconds=round(time.perf_counter() - t0, 3), **fields,
    )


def trunk_device(trunk: nn.Module) -> torch.device:
    """Device of the trunk's first parameter or buffer (CPU for an empty module)."""
    return module_device(trunk)


def protocol_trainer(
    pretrain_trainer: pl.Trainer | None, epochs: int, accumulate: int = 1, **overrides: Any
) -> pl.Trainer:
    """The evaluation ``Trainer`` of one protocol: the pretraining's hardware
    (:func:`~ssl_cropmix.evaluation.runner.evaluation_trainer`), ``epochs`` epochs,
    validation once at the end, our own per-rank samplers."""
    from ssl_cropmix.evaluation.runner import evaluation_trainer

    kw: dict[str, Any] = dict(
        max_epochs=epochs,
        check_val_every_n_epoch=epochs,
        accumulate_grad_batches=accumulate,
        use_distributed_sampler=False,
        log_every_n_steps=1,
    )
    kw.update(overrides)
    return evaluation_trainer(pretrain_trainer, **kw)


class _ForwardFeatures(nn.Module):
    """Makes ``module.forward_features`` the forward (a probed module with no ``backbone``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.forward_features(x)


def copy_feature_module(pl_module: nn.Module) -> nn.Module:
    """A deep copy of what computes ``pl_module``'s features, detached from any trainer.

    ``backbone`` modules are copied alone (called through their ``forward``); a module
    with ``forward_features`` is copied whole (its trainer reference is dropped for the
    copy) and wrapped so that calling it calls ``forward_features``. A copy is evaluated so
    that the evaluation trainer's device moves, DDP wrapping and teardown never touch the
    pretraining module.
    """
    import copy

    backbone = get_backbone(pl_module)
    if backbone is not pl_module:
        return copy.deepcopy(backbone)
    trainer = pl_module.__dict__.get("_trainer")
    try:
        if trainer is not None:
            pl_module._trainer = None  # type: ignore[assignment]
        return _ForwardFeatures(copy.deepcopy(pl_module))
    finally:
        if trainer is not None:
            pl_module._trainer = trainer  # type: ignore[assignment]


# ------------------------------------------------------------------ data-sized batches
_SAID: set[str] = set()


def say_once(message: str) -> None:
    """``rank_zero_info(message)`` the first time this process sees ``message`` (a periodic
    evaluation adapting the same default every time says it once)."""
    from pytorch_lightning.utilities import rank_zero_info

    if message not in _SAID:
        _SAID.add(message)
        rank_zero_info(message)


@dataclass(frozen=True)
class BatchPlan:
    """The batches an evaluation runs with on its data.

    Attributes:
        batch_size: global (effective) batch, ``world x device_batch x accumulate``.
        device_batch: images per device step.
        accumulate: ``accumulate_grad_batches``.
        note: how a default was adapted to the data (``None``: nothing adapted); logged
            once and appended to the result's protocol.
        default_batch: the global batch of the recipe (what ``note`` adapted).
    """

    batch_size: int
    device_batch: int
    accumulate: int
    note: str | None = None
    default_batch: int | None = None

    def record(self, hparams: dict[str, Any]) -> str:
        """Record the adaptation in ``hparams["adapted"]``; the protocol's suffix ("" if none)."""
        if self.note is None:
            return ""
        hparams.setdefault("adapted", {})["batch_size"] = {"default": self.default_batch, "used": self.batch_size}
        return f"; default global batch {self.default_batch} adapted to the data: {self.batch_size} used"


def plan_batches(
    what: str,
    n_train: int,
    n_val: int,
    world: int,
    batch_size: int,
    device_batch_size: int | None = None,
    batch_default: bool = False,
    device_batch_default: bool = False,
    drop_last: bool = False,
    even: bool = False,
    change: str = "use more labelled images (a larger label fraction)",
    lr_scaled: bool = True,
) -> BatchPlan:
    """Size an evaluation's batches to its data, before anything trains.

    A global ``batch_size`` larger than the ``n_train`` labelled images cannot be what ran:
    left at its default (``batch_default``) it becomes the largest batch the data fills
    (a multiple of ``world`` x the device batch; the device batch itself, when left at its
    default, shrinks to what one device's shard fills), and ``note`` says so; set explicitly
    it is refused. An evaluation that cannot train at all (no labelled image, no validation
    image, no full batch when ``drop_last``) raises here, naming the labelled count, the
    batch size and the world size.

    Args:
        what: the evaluation, for the messages (``"LinearProbe[moco]"``).
        n_train, n_val: labelled training / validation images.
        world: processes (devices x nodes).
        batch_size: the recipe's global batch.
        device_batch_size: the recipe's per-device batch (``None``: ``batch_size / world``).
        batch_default, device_batch_default: the value is the preset's, not the user's.
        drop_last: only full device batches train (each rank keeps ``n_train // world``).
        even: device batches must be even (timm's Mixup / CutMix).
        change: what to change besides the batch, for the messages.
        lr_scaled: the protocol's learning rate follows the global batch (said in the note).

    Raises:
        ValueError: the evaluation cannot train on this data, or an explicit batch size is
            larger than the data fills.
    """
    where = f"{n_train} labelled image(s), {world} device(s), global batch {batch_size}"
    if n_train < 1:
        raise ValueError(f"{what} cannot train: no labelled training image ({where}); {change}")
    if n_val < 1:
        raise ValueError(f"{what} cannot be evaluated: no validation image ({where}); give a validation split with images")
    per_rank = n_train // world if drop_last else -(-n_train // world)
    unit = 2 if even else 1
    if per_rank < unit:
        raise ValueError(
            f"{what} cannot train: {n_train} labelled image(s) over {world} device(s) leave {per_rank} per device, "
            f"fewer than one {'even ' if even else ''}batch of {unit} ({where}); {change}, or run on fewer devices"
        )
    full = n_train // world if drop_last else n_train  # images one epoch can put in full batches, all devices
    accumulate_given = device_batch_size is not None
    device = device_batch_size if accumulate_given else batch_size // world
    accumulate = batch_size // (world * device) if accumulate_given else 1
    if batch_size <= n_train and device <= per_rank:
        return BatchPlan(batch_size, device, accumulate)

    def refuse(name: str, value: int, most: str) -> ValueError:
        acc = f" x {accumulate} accumulated" if accumulate > 1 else ""
        return ValueError(
            f"{what}: {name}={value} (global batch {batch_size} = {world} device(s) x {device}{acc}) needs more than "
            f"the {n_train} labelled image(s) ({per_rank} per device{', full batches only' if drop_last else ''}): "
            f"lower {name} to at most {most}, leave it unset to use what fits, or {change}"
        )

    if device > per_rank:  # one device's shard does not fill the device batch
        if accumulate_given and not device_batch_default:
            raise refuse("device_batch_size", device, str(per_rank - per_rank % unit))
        if not accumulate_given and not batch_default:
            raise refuse("batch_size", batch_size, str(world * per_rank) if drop_last else str(n_train))
        device = per_rank - per_rank % unit
    if batch_size > n_train and not batch_default:
        raise refuse("batch_size", batch_size, str(world * per_rank) if drop_last else str(n_train))
    if batch_default:
        accumulate = max(1, min(accumulate, (full // world) // device)) if accumulate_given else 1
    elif batch_size % (world * device):
        raise ValueError(
            f"{what}: batch_size={batch_size} is not a multiple of {world} device(s) x the {device} images one device's "
            f"shard fills ({n_train} labelled image(s)); set device_batch_size= to a divisor of {batch_size // world}"
        )
    else:
        accumulate = batch_size // (world * device)
    used = world * device * accumulate
    note = None
    if used != batch_size or (accumulate_given and device != device_batch_size):
        changed = [f"the default global batch {batch_size}"] if used != batch_size else []
        if accumulate_given and device != device_batch_size:
            changed.append(f"the default device batch {device_batch_size}")
        note = (
            f"{what}: {' and '.join(changed)} {'are' if len(changed) > 1 else 'is'} larger than the {n_train} labelled "
            f"images fill ({world} device(s){', full batches only' if drop_last else ''}): using global batch {used} = "
            f"{world} x {device}{f' x {accumulate} accumulated' if accumulate > 1 else ''}{' (learning rate scaled to it)' if lr_scaled else ''}; "
            f"pass batch_size= (--batch-size) to choose it"
        )
    return BatchPlan(used, device, accumulate, note, batch_size)


def scaled_warmup(what: str, warmup: int | None, epochs: int, preset_warmup: int, preset_epochs: int) -> tuple[int, str | None]:
    """The warm-up of a run of ``epochs`` epochs and, when it was adapted, the note saying so.

    ``warmup`` set by the user is kept (refused when it exceeds ``epochs``). Left unset, it
    is the preset's ``preset_warmup`` of ``preset_epochs``, scaled with the epochs
    (``round(preset_warmup * epochs / preset_epochs)``: MAE's 10 of 90 becomes 1 of 9).

    Raises:
        ValueError: an explicit ``warmup`` larger than ``epochs``.
    """
    if warmup is not None:
        if warmup > epochs:
            raise ValueError(f"{what}: warmup_epochs={warmup} exceeds epochs={epochs}: lower it, or leave it unset "
                             f"to scale the preset's {preset_warmup} of {preset_epochs} epochs")
        return warmup, None
    if epochs == preset_epochs or preset_warmup == 0:
        return preset_warmup, None
    used = min(epochs, int(round(preset_warmup * epochs / preset_epochs)))
    return used, (f"{what}: warm-up scaled with the epochs: the preset's {preset_warmup} of {preset_epochs} epochs -> "
                  f"{used} of {epochs}; pass warmup_epochs= (--warmup-epochs) to choose it")


def record_adapted(res: EvalResult, name: str, default: Any, used: Any, note: str | None) -> EvalResult:
    """Say ``note`` once and record ``name``'s adaptation (``default`` -> ``used``) in ``res``'s
    ``hparams["adapted"]`` and protocol; nothing when ``note`` is ``None``."""
    if note is not None:
        res.hparams.setdefault("adapted", {})[name] = {"default": default, "used": used}
        res.protocol += f"; default {name} {default} adapted: {used} used"
    return res
