"""Fine-tuning launched at the end of ``fit``: semi-supervised (1 % / 10 % labels, paper App.
B.2.3) and MAE's ViT fine-tuning (App. B.3.2).

The protocols are LightningModules in :mod:`ssl_cropmix.evaluation` run by their own
``Trainer`` on the pretraining's hardware; the callbacks hand over a deep copy of the
backbone (the pretrained module is left untouched) on every rank, in ``on_train_end``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import nn

from ssl_cropmix.callbacks.launch import EvaluationLauncher
from ssl_cropmix.evaluation.base import copy_feature_module, record_adapted, say_once, scaled_warmup
from ssl_cropmix.evaluation.finetune import (
    FINETUNE_PRESETS,
    PRESET_EPOCHS,
    FineTuneRecipe,
    finetune,
    fraction_key,
    scale_milestones,
)
from ssl_cropmix.evaluation.linear import recipe_with
from ssl_cropmix.evaluation.mae_finetune import MAEFineTuneRecipe, mae_finetune
from ssl_cropmix.evaluation.protocol import check_optional_positive_ints, get_backbone, resolve_provider
from ssl_cropmix.evaluation.results import EvalResult

__all__ = ["FINETUNE_PRESETS", "FineTuneRecipe", "MAEFineTune", "SemiSupervisedFineTune", "copy_feature_module",
           "finetune", "finetune_from_checkpoint"]


def _check_label_fraction(label_fraction: float | None) -> None:
    if label_fraction is not None and not 0 < label_fraction <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction!r}")


def _full_count(p: Any) -> int | None:
    """Images in the provider's whole labelled training split (for the real fraction)."""
    try:
        return len(p.labeled_train_dataloader(augment=False, shuffle=False).dataset)
    except Exception:  # a provider without a full split: the fraction is not stated
        return None


class SemiSupervisedFineTune(EvaluationLauncher):
    """Fine-tune a copy of the pretrained backbone at the end of training, on every rank.

    Data: ``provider`` or ``trainer.datamodule`` (provider protocol): the labelled subset is
    ``labeled_train_dataloader(augment=True, label_fraction=..., subset_file=...)``. The
    result key is ``finetune_<pct>pct`` (``eval/finetune_10pct/top1``, ...).

    Args:
        preset: ``"10pct"`` (trunk 0.01, head 0.2) or ``"1pct"`` (trunk 0.02, head 5.0).
        label_fraction, subset_file: override the preset's fraction (``subset_file`` wins).
        trunk_lr, head_lr, epochs, milestones, gamma, batch_size: override the preset;
            ``epochs`` without ``milestones`` scales the preset's milestones (30/60/90 of 100).
        bn_mode: ``"local"`` or ``"sync"`` (SyncBatchNorm when running on several processes).
        every_n_epochs: also fine-tune every N pretraining epochs (0: only at the end).
        provider, num_classes: labelled data.
        results_path: JSON list file; ``None``: ``<run directory>/eval_results.json``.
        key: metric key (default from the fraction).
        seed: seeds head init and shuffling.
    """

    def __init__(
        self,
        preset: Literal["10pct", "1pct"] = "10pct",
        label_fraction: float | None = None,
        subset_file: str | None = None,
        trunk_lr: float | None = None,
        head_lr: float | None = None,
        epochs: int | None = None,
        milestones: tuple[int, ...] | list[int] | None = None,
        gamma: float | None = None,
        batch_size: int | None = None,
        bn_mode: Literal["local", "sync"] = "local",
        every_n_epochs: int = 0,
        provider: Any = None,
        num_classes: int | None = None,
        results_path: str | Path | None = None,
        key: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(every_n_epochs, results_path)
        if preset not in FINETUNE_PRESETS:
            raise ValueError(f"preset must be one of {sorted(FINETUNE_PRESETS)}, got {preset!r}")
        _check_label_fraction(label_fraction)
        for pname, v in (("trunk_lr", trunk_lr), ("head_lr", head_lr), ("gamma", gamma)):
            if v is not None and not v > 0:
                raise ValueError(f"{pname} must be > 0, got {v!r}")
        check_optional_positive_ints(epochs=epochs, batch_size=batch_size)
        if bn_mode not in ("local", "sync"):
            raise ValueError(f"bn_mode must be 'local' or 'sync', got {bn_mode!r}")
        base = FINETUNE_PRESETS[preset]
        if milestones is not None:
            ms = tuple(int(m) for m in milestones)
        elif epochs is not None and epochs != PRESET_EPOCHS:
            ms = scale_milestones(base.milestones, epochs)
        else:
            ms = None
        if ms is not None and (list(ms) != sorted(ms) or any(m < 1 for m in ms)):
            raise ValueError(f"milestones must be increasing positive epochs, got {list(ms)}")
        self.recipe = recipe_with(base, label_fraction=label_fraction, trunk_lr=trunk_lr, head_lr=head_lr, epochs=epochs,
                                  milestones=ms, gamma=gamma, batch_size=batch_size, bn_mode=bn_mode)
        #: recipe fields left at the preset's value (those that may adapt to the data)
        self.defaults = frozenset(k for k, v in dict(trunk_lr=trunk_lr, head_lr=head_lr, epochs=epochs, milestones=milestones,
                                                     gamma=gamma, batch_size=batch_size).items() if v is None)
        self.preset, self.subset_file = preset, subset_file
        self.provider, self.num_classes = provider, num_classes
        self.key = key or fraction_key("finetune", self.recipe.label_fraction if subset_file is None else None, subset_file)
        self.seed = seed
        self.checkpoint: str | None = None

    def evaluate(self, trainer: pl.Trainer | None, pl_module: Any, trainer_kwargs: dict[str, Any] | None = None) -> EvalResult:
        """Fine-tune a deep copy of ``pl_module``'s features now (every rank)."""
        p = resolve_provider(self.provider, trainer)
        c = self.check_num_classes(self.num_classes, p)
        frac = None if self.subset_file is not None else self.recipe.label_fraction
        full = _full_count(p)
        train = p.labeled_train_dataloader(augment=True, label_fraction=frac, subset_file=self.subset_file)
        res = finetune(
            copy_feature_module(pl_module), train, p.labeled_val_dataloader(), c, self.recipe, self.preset,
            trainer=trainer, key=self.key, full_train_count=full, seed=self.seed, checkpoint=self.checkpoint,
            trainer_kwargs=trainer_kwargs, defaults=self.defaults,
        )
        if self.subset_file is not None:
            res.protocol += f" (subset file {self.subset_file})"
        return res


class MAEFineTune(EvaluationLauncher):
    """MAE's end-to-end ViT fine-tuning (paper App. B.3.2) at the end of training, every rank.

    Needs a ViT backbone (``MAECropMix``). The training images get MAE's timm transform
    (RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25) in place of the provider's
    augmentation; Mixup 0.8 / CutMix 1.0 with label smoothing 0.1 on the batch; AdamW with
    layer-wise lr decay 0.65, drop path 0.1; 100 epochs, 5 warm-up, effective batch 1024.

    Args:
        label_fraction: fine-tune on a fraction (the paper: 10 % and 100 %); ``None``: all.
        epochs, warmup_epochs, batch_size, device_batch_size, blr, layer_decay, drop_path,
        mixup, cutmix, label_smoothing, re_prob, auto_augment: override MAE's values. Left
            unset, ``warmup_epochs`` scales with ``epochs`` (5 of 100 -> 1 of 20) and the
            batches shrink to what the labelled set fills (full, even device batches), each
            said once in the log and recorded in ``hparams["adapted"]``; explicit values
            that do not fit are refused.
        every_n_epochs, provider, num_classes, results_path, key, seed: as for the others.
    """

    def __init__(
        self,
        label_fraction: float | None = None,
        epochs: int | None = None,
        warmup_epochs: int | None = None,
        batch_size: int | None = None,
        device_batch_size: int | None = None,
        blr: float | None = None,
        layer_decay: float | None = None,
        drop_path: float | None = None,
        mixup: float | None = None,
        cutmix: float | None = None,
        label_smoothing: float | None = None,
        re_prob: float | None = None,
        auto_augment: str | None = None,
        every_n_epochs: int = 0,
        provider: Any = None,
        num_classes: int | None = None,
        results_path: str | Path | None = None,
        key: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(every_n_epochs, results_path)
        _check_label_fraction(label_fraction)
        check_optional_positive_ints(epochs=epochs, batch_size=batch_size, device_batch_size=device_batch_size)
        if layer_decay is not None and not 0 < layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay!r}")
        for pname, v in (("drop_path", drop_path), ("re_prob", re_prob), ("label_smoothing", label_smoothing)):
            if v is not None and not 0 <= v < 1:
                raise ValueError(f"{pname} must be in [0, 1), got {v!r}")
        base = MAEFineTuneRecipe()
        warm, self.warmup_note = scaled_warmup("MAEFineTune", warmup_epochs, epochs or base.epochs, base.warmup_epochs,
                                               base.epochs)
        if self.warmup_note:
            say_once(self.warmup_note)
        self.recipe = recipe_with(
            base, label_fraction=label_fraction, epochs=epochs, warmup_epochs=warm,
            batch_size=batch_size, device_batch_size=device_batch_size, blr=blr, layer_decay=layer_decay,
            drop_path=drop_path, mixup=mixup, cutmix=cutmix, label_smoothing=label_smoothing, re_prob=re_prob,
            auto_augment=auto_augment,
        )
        #: recipe fields left at MAE's value (those that may adapt to the data)
        self.defaults = frozenset(k for k, v in dict(epochs=epochs, warmup_epochs=warmup_epochs, batch_size=batch_size,
                                                     device_batch_size=device_batch_size).items() if v is None)
        self.provider, self.num_classes = provider, num_classes
        self.key = key or fraction_key("mae_finetune", self.recipe.label_fraction)
        self.seed = seed
        self.checkpoint: str | None = None

    def evaluate(self, trainer: pl.Trainer | None, pl_module: Any, trainer_kwargs: dict[str, Any] | None = None) -> EvalResult:
        """Fine-tune a copy of ``pl_module``'s ViT now (every rank)."""
        p = resolve_provider(self.provider, trainer)
        c = self.check_num_classes(self.num_classes, p)
        full = _full_count(p)
        train = p.labeled_train_dataloader(augment=True, label_fraction=self.recipe.label_fraction)
        res = mae_finetune(
            get_backbone(pl_module), train, p.labeled_val_dataloader(), c, self.recipe,
            image_size=getattr(p, "image_size", None), mean=getattr(p, "mean", (0.485, 0.456, 0.406)),
            std=getattr(p, "std", (0.229, 0.224, 0.225)), trainer=trainer, key=self.key,
            full_train_count=full, seed=self.seed, checkpoint=self.checkpoint, trainer_kwargs=trainer_kwargs,
            defaults=self.defaults,
        )
        return record_adapted(res, "warmup_epochs", MAEFineTuneRecipe().warmup_epochs, self.recipe.warmup_epochs,
                              self.warmup_note)


def finetune_from_checkpoint(
    ckpt_path: str | Path,
    datamodule: Any,
    preset: Literal["10pct", "1pct"] = "10pct",
    backbone: nn.Module | str | None = None,
    device: str | torch.device | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
    **overrides: Any,
) -> EvalResult:
    """Standalone entry point: load a backbone (``checkpoints.load_backbone``) and fine-tune.

    Args:
        ckpt_path: a MoCo / MAE / Lightning checkpoint or a plain state dict.
        datamodule: labelled-data provider (e.g. ``CropMixDataModule``).
        preset: ``"10pct"`` or ``"1pct"``.
        backbone: architecture for the weights (see ``load_backbone``).
        device: ``"cpu"`` / ``"cuda"`` (sets the trainer's accelerator; ``None``: Lightning's choice).
        trainer_kwargs: other ``pl.Trainer`` arguments (devices, precision, strategy).
        **overrides: ``SemiSupervisedFineTune`` arguments (``epochs``, ``trunk_lr``, ...).
    """
    from ssl_cropmix.checkpoints import load_backbone

    trunk = load_backbone(ckpt_path, backbone)
    cb = SemiSupervisedFineTune(preset, provider=datamodule, **overrides)
    cb.checkpoint = str(ckpt_path)
    if hasattr(datamodule, "setup"):
        datamodule.setup("fit")
    holder = nn.Module()
    holder.backbone = trunk
    kw = dict(trainer_kwargs or {})
    if device is not None:
        kw.setdefault("accelerator", "gpu" if str(device).startswith("cuda") else str(device))
    res = cb.evaluate(None, holder, trainer_kwargs=kw)
    cb.results.append(res)
    return res
