"""Linear probe on a frozen backbone, launched at the end of ``fit`` (paper App. B.2.2; MAE).

The protocol is :class:`ssl_cropmix.evaluation.linear.LinearProbeModule`, run by its own
``Trainer`` on the pretraining's hardware (devices, DDP, precision); this callback only
decides when (``on_train_end`` and every ``every_n_epochs``) and hands over a copy of the
backbone, on every rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
from torch import nn
from torch.utils.data import DataLoader

from ssl_cropmix.callbacks.launch import EvaluationLauncher
from ssl_cropmix.evaluation.protocol import (
    check_optional_positive_ints,
    extract_features,
    frozen,
    get_backbone,
    module_device,
    resolve_provider,
)
from ssl_cropmix.evaluation.base import record_adapted, say_once, scaled_warmup
from ssl_cropmix.evaluation.data import precision_inputs
from ssl_cropmix.evaluation.linear import PROBE_PRESETS, ProbeRecipe, recipe_with, run_linear_probe
from ssl_cropmix.evaluation.results import EvalResult
from ssl_cropmix.methods.scaling import warmup_cosine
from ssl_cropmix.validation import check_bool, check_int

__all__ = ["PROBE_PRESETS", "LinearProbe", "ProbeRecipe", "collect_features", "run_linear_probe", "warmup_cosine"]


def collect_features(pl_module: nn.Module, loader: Any, device: Any = None) -> tuple[Any, Any]:
    """Frozen features and labels of every batch of ``loader`` (one process, in order).

    The images are converted and the backbone runs as in the module's own training step, at
    its trainer's precision (:func:`~ssl_cropmix.evaluation.data.precision_inputs`: the
    module's dtype for ``*-true``, autocast for ``*-mixed``).

    Shape:
        returns ``(N, D)`` float32 features and ``(N,)`` long labels.
    """
    import torch

    device = device or module_device(get_backbone(pl_module))
    feats, labels = [], []
    with frozen(get_backbone(pl_module)), precision_inputs(pl_module) as convert:
        for x, y in loader:
            feats.append(extract_features(pl_module, convert(x.to(device, non_blocking=True))).float())
            labels.append(y.to(device))
    return torch.cat(feats), torch.cat(labels)


class LinearProbe(EvaluationLauncher):
    """Linear probe at the end of training (and optionally every ``every_n_epochs``), all ranks.

    Data come from ``train_dataloader``/``val_dataloader`` if given, else from ``provider`` or
    ``trainer.datamodule`` (``labeled_train_dataloader(augment=not cached_features)``,
    ``labeled_val_dataloader()``). Results are logged as ``eval/<key>/top1|top5`` and appended
    to ``<run directory>/eval_results.json``.

    Args:
        preset: ``"moco"`` (paper: LARS, global batch 4096, lr 0.2, 90 epochs cosine, wd 0),
            ``"moco_simsiam_code"`` (the same with SimSiam code's lr 1.6) or ``"mae"``
            (BN(affine=False) + linear, LARS, blr 0.1, batch 16384, 90 epochs, 10 warm-up).
        epochs, optimizer, base_lr, warmup_epochs, batch_size, head_norm, weight_decay,
        device_batch_size, extract_chunk: override the preset (``None`` keeps it);
            ``batch_size`` is global (divided over the world size). Left unset, the data
            may adapt two of them, each said once in the log and recorded in the result's
            ``hparams["adapted"]`` and protocol: ``warmup_epochs`` scales with ``epochs``
            (MAE's 10 of 90 -> 1 of 9), and a ``batch_size`` larger than the labelled set
            becomes the labelled set (lr scaled to it). Explicit values are refused instead.
        cached_features: extract features once (no augmentation; each rank its shard,
            all-gathered) and train the head on them; the protocol string says so.
        every_n_epochs: also probe after every N pretraining epochs (0: only at the end).
        provider, train_dataloader, val_dataloader, num_classes: the labelled data.
        results_path: JSON file; ``None`` uses the run directory.
        key: metric key (``eval/<key>/top1``).
        seed: seeds head init and shuffling.
    """

    def __init__(
        self,
        preset: Literal["moco", "moco_simsiam_code", "mae"] = "moco",
        epochs: int | None = None,
        optimizer: Literal["sgd", "lars"] | None = None,
        base_lr: float | None = None,
        warmup_epochs: int | None = None,
        batch_size: int | None = None,
        head_norm: bool | None = None,
        weight_decay: float | None = None,
        device_batch_size: int | None = None,
        extract_chunk: int | None = None,
        cached_features: bool = False,
        every_n_epochs: int = 0,
        provider: Any = None,
        train_dataloader: DataLoader | None = None,
        val_dataloader: DataLoader | None = None,
        num_classes: int | None = None,
        results_path: str | Path | None = None,
        key: str = "linear",
        seed: int = 0,
    ) -> None:
        super().__init__(every_n_epochs, results_path)
        if preset not in PROBE_PRESETS:
            raise ValueError(f"preset must be one of {sorted(PROBE_PRESETS)}, got {preset!r}")
        if optimizer is not None and optimizer not in ("sgd", "lars"):
            raise ValueError(f"optimizer must be 'sgd' or 'lars', got {optimizer!r}")
        check_optional_positive_ints(epochs=epochs, batch_size=batch_size, device_batch_size=device_batch_size,
                                     extract_chunk=extract_chunk)
        check_int("warmup_epochs", warmup_epochs, 0, optional=True)
        check_bool("head_norm", head_norm, optional=True)
        if base_lr is not None and not base_lr > 0:
            raise ValueError(f"base_lr must be > 0, got {base_lr!r}")
        if weight_decay is not None and not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if (train_dataloader is None) != (val_dataloader is None):
            raise ValueError("give both train_dataloader and val_dataloader, or neither")
        if train_dataloader is not None and num_classes is None:
            raise ValueError("num_classes is required with explicit dataloaders, got None")
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string, got {key!r}")
        base = PROBE_PRESETS[preset]
        warm, self.warmup_note = scaled_warmup(f"LinearProbe[{preset}]", warmup_epochs, epochs or base.epochs,
                                               base.warmup_epochs, base.epochs)
        if self.warmup_note:
            say_once(self.warmup_note)
        self.recipe: ProbeRecipe = recipe_with(
            base, epochs=epochs, optimizer=optimizer, base_lr=base_lr, warmup_epochs=warm,
            batch_size=batch_size, head_norm=head_norm, weight_decay=weight_decay, device_batch_size=device_batch_size,
            extract_chunk=extract_chunk,
        )
        #: recipe fields left at the preset's value (those that may adapt to the data)
        self.defaults = frozenset(k for k, v in dict(
            epochs=epochs, optimizer=optimizer, base_lr=base_lr, warmup_epochs=warmup_epochs, batch_size=batch_size,
            head_norm=head_norm, weight_decay=weight_decay, device_batch_size=device_batch_size,
            extract_chunk=extract_chunk).items() if v is None)
        self.preset = preset
        self.cached_features = check_bool("cached_features", cached_features)
        self.provider = provider
        self.train_loader = train_dataloader
        self.val_loader = val_dataloader
        self.num_classes = num_classes
        self.key = key
        self.seed = seed
        self.checkpoint: str | None = None

    def _loaders(self, trainer: pl.Trainer | None) -> tuple[Any, Any, int]:
        if self.train_loader is not None:
            return self.train_loader, self.val_loader, int(self.num_classes)  # type: ignore[arg-type]
        p = resolve_provider(self.provider, trainer)
        c = self.check_num_classes(self.num_classes, p)
        train = p.labeled_train_dataloader(augment=not self.cached_features)
        return train, p.labeled_val_dataloader(), c

    def evaluate(self, trainer: pl.Trainer | None, pl_module: Any, trainer_kwargs: dict[str, Any] | None = None) -> EvalResult:
        """Probe ``pl_module`` now with a new trainer on ``trainer``'s hardware (every rank)."""
        train, val, c = self._loaders(trainer)
        res = run_linear_probe(
            pl_module, train, val, c, self.recipe, self.cached_features, name=self.preset, trainer=trainer,
            key=self.key, seed=self.seed, checkpoint=self.checkpoint, trainer_kwargs=trainer_kwargs,
            defaults=self.defaults,
        )
        return record_adapted(res, "warmup_epochs", PROBE_PRESETS[self.preset].warmup_epochs, self.recipe.warmup_epochs,
                              self.warmup_note)
