"""MAE end-to-end fine-tuning of a ViT (paper App. B.3.2; MAE's ``main_finetune``), from timm.

Built from timm parts: ``timm.data.create_transform`` (RandAugment ``rand-m9-mstd0.5-inc1``,
bicubic, random erasing 0.25), ``timm.data.Mixup`` (Mixup 0.8 / CutMix 1.0, label smoothing
0.1), ``timm.loss.SoftTargetCrossEntropy``, ``timm.optim.param_groups_layer_decay`` (layer
decay 0.65) and ``timm.layers.DropPath`` (stochastic depth 0.1, linear
in depth). AdamW (0.9, 0.999), wd 0.05, ``lr = blr x effective batch / 256`` with blr 5e-4,
5 warm-up epochs of 100, cosine to ``min_lr``, effective batch 1024 through
``accumulate_grad_batches``. Global average pooling + ``fc_norm`` as MAE's default.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import nn

from ssl_cropmix.evaluation.base import (
    EvalModule,
    isolated_rng,
    plan_batches,
    protocol_result,
    protocol_trainer,
    say_once,
    trunk_device,
)
from ssl_cropmix.evaluation.data import dist_world_rank, shard_loader, train_loader as sharded_train_loader
from ssl_cropmix.evaluation.finetune import fraction_key, labelled_images
from ssl_cropmix.evaluation.linear import check_dataset_labels, split_batch
from ssl_cropmix.evaluation.results import EvalResult
from ssl_cropmix.methods.scaling import warmup_cosine


@dataclass(frozen=True)
class MAEFineTuneRecipe:
    """MAE fine-tuning hyper-parameters (ViT-B values of MAE's ``main_finetune``).

    ``batch_size`` is the effective batch: ``world x device_batch_size x accumulation``.
    """

    epochs: int = 100
    warmup_epochs: int = 5
    batch_size: int = 1024
    device_batch_size: int = 64
    blr: float = 5e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 0.65
    drop_path: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: Literal["batch", "pair", "elem"] = "batch"
    label_smoothing: float = 0.1
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    re_prob: float = 0.25
    re_mode: str = "pixel"
    re_count: int = 1
    global_pool: Literal["avg", "token"] = "avg"
    label_fraction: float | None = None


def find_vit(backbone: nn.Module) -> nn.Module:
    """The timm ``VisionTransformer`` of ``backbone`` (lightly's masked wrapper's ``.vit``,
    or the backbone itself).

    Raises:
        TypeError: no timm ViT found.
    """
    from timm.models.vision_transformer import VisionTransformer

    for cand in (backbone, getattr(backbone, "vit", None), getattr(backbone, "backbone", None),
                 getattr(getattr(backbone, "backbone", None), "vit", None)):
        if isinstance(cand, VisionTransformer):
            return cand
    raise TypeError(f"MAE fine-tuning needs a timm VisionTransformer backbone, got {type(backbone).__name__}")


def prepare_vit(backbone: nn.Module, num_classes: int, drop_path: float, global_pool: str = "avg") -> nn.Module:
    """A deep copy of ``backbone``'s ViT made a classifier: head ``Linear(D, num_classes)``
    (trunc-normal std 2e-5, MAE), global pooling (``avg``: ``norm`` removed and a new
    ``fc_norm`` LayerNorm after pooling, MAE's default), ``DropPath`` rates
    ``linspace(0, drop_path, depth)`` in every block."""
    from timm.layers import DropPath

    vit = copy.deepcopy(find_vit(backbone))
    vit.reset_classifier(num_classes, global_pool)
    dim = vit.embed_dim
    if global_pool == "avg":
        vit.norm = nn.Identity()
        vit.fc_norm = nn.LayerNorm(dim, eps=1e-6)
    nn.init.trunc_normal_(vit.head.weight, std=2e-5)
    nn.init.zeros_(vit.head.bias)
    rates = torch.linspace(0, drop_path, len(vit.blocks)).tolist()
    for blk, p in zip(vit.blocks, rates):
        blk.drop_path1 = DropPath(p) if p > 0 else nn.Identity()
        blk.drop_path2 = DropPath(p) if p > 0 else nn.Identity()
    vit.requires_grad_(True).train()  # fine-tuned end to end (the copied ViT may be in eval mode)
    return vit


def layer_decay_groups(vit: nn.Module, lr: float, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """``timm.optim.param_groups_layer_decay``; each group's ``lr`` is ``lr x lr_scale``.

    timm's ViT grouping gives MAE's ``lr_decay.py`` layer ids (embeddings 0, ``blocks.i``
    i+1, norms and head depth+1), so ``lr_scale = layer_decay ** (depth + 1 - layer_id)``
    (tested against a hand computation of MAE's rule); 1-d parameters and
    ``vit.no_weight_decay()`` get no weight decay.
    """
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(vit, weight_decay=weight_decay, no_weight_decay_list=tuple(vit.no_weight_decay()),
                                      layer_decay=layer_decay)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return groups


class MAEFineTuneModule(EvalModule):
    """A ViT fine-tuned with MAE's recipe: Mixup/CutMix soft targets, layer-wise lr decay.

    Args:
        vit: a timm ``VisionTransformer`` classifier (see :func:`prepare_vit`).
        num_classes: classes.
        recipe: hyper-parameters.

    Shape:
        ``logits(x)``: ``(B,3,H,W)`` -> ``(B, num_classes)``.
    """

    def __init__(self, vit: nn.Module, num_classes: int, recipe: MAEFineTuneRecipe) -> None:
        super().__init__(num_classes)
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        self.vit = vit
        self.recipe = recipe
        self.mixup_fn = Mixup(
            mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob, switch_prob=recipe.mixup_switch_prob,
            mode=recipe.mixup_mode, label_smoothing=recipe.label_smoothing, num_classes=num_classes,
        ) if (recipe.mixup > 0 or recipe.cutmix > 0) else None
        self.criterion: nn.Module = SoftTargetCrossEntropy() if self.mixup_fn is not None else nn.CrossEntropyLoss(
            label_smoothing=recipe.label_smoothing)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.mixup_fn is not None:
            x, y = self.mixup_fn(x, y)
        loss = self.criterion(self.vit(x).float(), y)  # float32 loss under bf16 / fp16 precision
        self.log("mae_finetune_loss", loss, prog_bar=True)
        return loss

    def lr(self) -> float:
        return self.recipe.blr * self.recipe.batch_size / 256

    def configure_optimizers(self) -> Any:
        r = self.recipe
        lr = self.lr()
        groups = layer_decay_groups(self.vit, lr, r.weight_decay, r.layer_decay)
        opt = torch.optim.AdamW(groups, lr=lr, betas=r.betas)
        total = int(self.trainer.estimated_stepping_batches)
        warm = int(round(total * r.warmup_epochs / r.epochs))
        floor = min(r.min_lr / lr, 1.0) if lr > 0 else 0.0

        def factor(step: int) -> float:
            if step < warm:
                return warmup_cosine(step, total, warm)
            return floor + (1.0 - floor) * warmup_cosine(step, total, warm)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def timm_train_transform(image_size: int, recipe: MAEFineTuneRecipe, mean: Any, std: Any) -> Any:
    """MAE's training transform: ``timm.data.create_transform(is_training=True, ...)``."""
    from timm.data import create_transform

    return create_transform(
        input_size=image_size, is_training=True, color_jitter=None, auto_augment=recipe.auto_augment,
        interpolation="bicubic", re_prob=recipe.re_prob, re_mode=recipe.re_mode, re_count=recipe.re_count,
        mean=tuple(mean), std=tuple(std),
    )


def with_transform(dataset: Any, transform: Any) -> Any:
    """A shallow copy of ``dataset`` whose ``transform`` attribute is replaced.

    Raises:
        TypeError: the dataset has no ``transform`` attribute to replace.
    """
    if not hasattr(dataset, "transform"):
        raise TypeError(f"cannot give {type(dataset).__name__} the MAE fine-tuning transform: it has no `transform` attribute")
    ds = copy.copy(dataset)
    ds.transform = transform
    return ds


def mae_finetune(
    backbone: nn.Module,
    train_loader: Any,
    val_loader: Any,
    num_classes: int,
    recipe: MAEFineTuneRecipe,
    image_size: int | None = None,
    mean: Any = (0.485, 0.456, 0.406),
    std: Any = (0.229, 0.224, 0.225),
    trainer: pl.Trainer | None = None,
    key: str | None = None,
    full_train_count: int | None = None,
    seed: int = 0,
    checkpoint: str | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
    timm_transform: bool = True,
    defaults: frozenset[str] | set[str] = frozenset(),
) -> EvalResult:
    """Fine-tune a copy of ``backbone``'s ViT with MAE's recipe and evaluate it; every rank.

    Args:
        backbone: a timm ViT, or a module holding one (``MAECropMix.backbone``).
        train_loader: labelled training images; with ``timm_transform`` its dataset's
            ``transform`` is replaced by MAE's (RandAugment + random erasing).
        val_loader: validation images (evaluation transform).
        num_classes: classes (refused when below the data's class count).
        recipe: hyper-parameters.
        image_size, mean, std: for the timm transform (``image_size``: from a val sample).
        trainer: the pretraining trainer whose hardware the run inherits.
        key: metric key (default ``mae_finetune`` / ``mae_finetune_10pct``).
        full_train_count: size of the whole labelled split, to state the real fraction.
        seed: seeds head init, drop path and shuffling (caller's RNG restored afterwards).
        checkpoint: path recorded in the result.
        trainer_kwargs: extra ``pl.Trainer`` arguments.
        timm_transform: replace the provider's augmentation by MAE's.
        defaults: names of ``recipe`` fields left at MAE's value; ``batch_size`` /
            ``device_batch_size`` among them shrink to what the labelled set fills with full,
            even device batches (Mixup), said once and recorded; explicit ones are refused.

    Raises:
        ValueError: no labelled or validation image, no full even device batch, or an
            explicit batch larger than the labelled set, before training.
    """
    t0 = time.perf_counter()
    world, rank = dist_world_rank()
    check_dataset_labels(train_loader, num_classes, "the labelled training set")
    split_batch(recipe.batch_size, world, recipe.device_batch_size)
    asked = "all labels" if recipe.label_fraction is None else f"label_fraction={recipe.label_fraction:g}"
    plan = plan_batches(
        "MAEFineTune", len(train_loader.dataset), len(val_loader.dataset), world, recipe.batch_size,
        recipe.device_batch_size, "batch_size" in defaults, "device_batch_size" in defaults, drop_last=True, even=True,
        change=f"use more labelled images ({asked}: a larger label fraction)",
    )
    if plan.note:
        say_once(plan.note)
        recipe = replace(recipe, batch_size=plan.batch_size, device_batch_size=plan.device_batch)
    device_batch, accumulate = plan.device_batch, plan.accumulate
    vit = prepare_vit(backbone, num_classes, recipe.drop_path, recipe.global_pool)
    dev = trunk_device(find_vit(backbone))
    if image_size is None:
        image_size = int(torch.as_tensor(val_loader.dataset[0][0]).shape[-1])
    ds = train_loader.dataset
    aug = "the provider's augmentation"
    if timm_transform:
        ds = with_transform(ds, timm_train_transform(image_size, recipe, mean, std))
        aug = f"timm create_transform(auto_augment={recipe.auto_augment}, re_prob={recipe.re_prob:g}, bicubic)"
    etrainer = protocol_trainer(trainer, recipe.epochs, accumulate, **(trainer_kwargs or {}))
    with isolated_rng(seed, dev):
        module = MAEFineTuneModule(vit, num_classes, recipe)
        # Mixup needs even, equal batches: drop the last
        train = sharded_train_loader(train_loader, device_batch, world, rank, seed, dataset=ds, drop_last=True)
        val = shard_loader(val_loader, world, rank, val_loader.batch_size)
        etrainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    n = len(ds)
    frac = labelled_images(n, full_train_count)
    lr = module.lr()
    protocol = (
        f"mae_finetune: {frac}; AdamW{tuple(recipe.betas)} wd={recipe.weight_decay:g}, lr={lr:g} (blr {recipe.blr:g} x "
        f"{recipe.batch_size}/256), effective batch {recipe.batch_size} = {world} x {device_batch} x {accumulate} accumulated, "
        f"{recipe.epochs} epochs ({recipe.warmup_epochs} warm-up) cosine to {recipe.min_lr:g}, layer decay {recipe.layer_decay:g}, "
        f"drop path {recipe.drop_path:g}, Mixup {recipe.mixup:g} / CutMix {recipe.cutmix:g}, label smoothing "
        f"{recipe.label_smoothing:g}, {aug}, {recipe.global_pool} pooling"
    )
    hp = {**asdict(recipe), "lr": lr, "per_device_batch": device_batch, "accumulate_grad_batches": accumulate,
          "image_size": image_size, "seed": seed, "num_classes": num_classes,
          "real_label_fraction": (n / full_train_count) if full_train_count else None}
    protocol += plan.record(hp)
    return protocol_result(
        module, t0, key=key or fraction_key("mae_finetune", recipe.label_fraction), protocol=protocol,
        epochs=recipe.epochs, train_samples=n, hparams=hp, checkpoint=checkpoint,
        details={"optimizer_steps": len(module.lr_history)},
    )


__all__ = ["MAEFineTuneModule", "MAEFineTuneRecipe", "find_vit", "layer_decay_groups", "mae_finetune", "prepare_vit"]
