"""Offline linear probe on a frozen backbone (paper Appendix B.2.2; MAE linear probing).

The probe runs its **own small training loop** in plain PyTorch on the module's device; it
never calls ``trainer.fit`` recursively (that would re-enter Lightning's loops, loggers and
checkpointing). The backbone is put in eval mode and used under ``torch.no_grad()``: its
parameters and BatchNorm buffers are never changed, and its train/eval flags are restored.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ssl_cropmix.callbacks.lars import LARS
from ssl_cropmix.callbacks.utils import (
    report_result,
    extract_features,
    frozen,
    get_backbone,
    module_device,
    resolve_provider,
    topk_accuracies,
)
from ssl_cropmix.methods.scaling import warmup_cosine


@dataclass(frozen=True)
class ProbeRecipe:
    """Hyper-parameters of one linear-probe protocol.

    ``lr = base_lr * batch_size / 256``; cosine decay per step after ``warmup_epochs`` of
    linear warm-up; no weight decay.
    """

    optimizer: Literal["sgd", "lars"]
    base_lr: float
    epochs: int
    warmup_epochs: int
    head_norm: bool  # BatchNorm1d(affine=False) before the linear layer (MAE)
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 0.0


#: SimSiam / MoCo style (paper App. B.2.2) and MAE style (MAE App. A.2) linear probing.
PROBE_PRESETS: dict[str, ProbeRecipe] = {
    "moco": ProbeRecipe(optimizer="sgd", base_lr=0.1, epochs=90, warmup_epochs=0, head_norm=False),
    "mae": ProbeRecipe(optimizer="lars", base_lr=0.1, epochs=90, warmup_epochs=10, head_norm=True),
}


def collect_features(
    pl_module: nn.Module, loader: Any, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features and labels of every batch of ``loader``, on ``device``.

    Shape:
        returns ``(N, D)`` float features and ``(N,)`` long labels.
    """
    device = device or module_device(get_backbone(pl_module))
    feats, labels = [], []
    with frozen(get_backbone(pl_module)):
        for x, y in loader:
            feats.append(extract_features(pl_module, x.to(device, non_blocking=True)).float())
            labels.append(y.to(device))
    return torch.cat(feats), torch.cat(labels)


@dataclass
class ProbeResult:
    """What a probe run produced; ``protocol`` says exactly which protocol made the numbers."""

    protocol: str
    top1: float
    top5: float
    epochs: int
    lr: float
    batch_size: int
    train_samples: int
    val_samples: int
    feature_dim: int
    extract_seconds: float
    train_seconds: float
    total_seconds: float
    pretrain_epoch: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return asdict(self)


def _make_head(dim: int, num_classes: int, head_norm: bool) -> nn.Module:
    linear = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01)  # MAE's probe init
    nn.init.zeros_(linear.bias)
    if head_norm:
        return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)
    return linear


def run_linear_probe(
    pl_module: nn.Module,
    train_loader: Any,
    val_loader: Any,
    num_classes: int,
    recipe: ProbeRecipe,
    cached_features: bool = False,
    generator: torch.Generator | None = None,
    name: str = "custom",
) -> ProbeResult:
    """Train a linear head on frozen features of ``pl_module`` and evaluate it.

    Args:
        pl_module: any module following the backbone protocol (``callbacks/utils.py``).
        train_loader: labelled ``(images, labels)`` batches; with ``cached_features`` the
            features are extracted once from it (give a non-augmenting loader).
        val_loader: labelled validation batches.
        num_classes: classifier width.
        recipe: optimiser / schedule (see ``PROBE_PRESETS``).
        cached_features: train on features extracted once instead of every epoch.
        generator: shuffles cached features (torch RNG only).
        name: preset name, stated in ``ProbeResult.protocol``.
    """
    t0 = time.perf_counter()
    device = module_device(get_backbone(pl_module))
    backbone = get_backbone(pl_module)
    lr = recipe.base_lr * recipe.batch_size / 256
    extract_s = 0.0
    if cached_features:
        train_x, train_y = collect_features(pl_module, train_loader, device)
        extract_s = time.perf_counter() - t0
        dim, n_train = train_x.shape[1], train_x.shape[0]
        steps_per_epoch = math.ceil(n_train / recipe.batch_size)
    else:
        with frozen(backbone):
            x0, _ = next(iter(train_loader))
            dim = extract_features(pl_module, x0[:2].to(device)).shape[1]
        n_train = len(train_loader.dataset) if hasattr(train_loader, "dataset") else -1
        steps_per_epoch = len(train_loader)
    head = _make_head(dim, num_classes, recipe.head_norm).to(device)
    if recipe.optimizer == "lars":
        opt: torch.optim.Optimizer = LARS(head.parameters(), lr=lr, weight_decay=recipe.weight_decay, momentum=recipe.momentum)
    else:
        opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    total = recipe.epochs * steps_per_epoch
    warm = recipe.warmup_epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warm))

    def _step(f: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(head(f), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

    t1 = time.perf_counter()
    head.train()
    for _ in range(recipe.epochs):
        if cached_features:
            perm = torch.randperm(n_train, generator=generator).to(device)
            for i in range(0, n_train, recipe.batch_size):
                idx = perm[i : i + recipe.batch_size]
                _step(train_x[idx], train_y[idx])
        else:
            for x, y in train_loader:
                with frozen(backbone):
                    f = extract_features(pl_module, x.to(device, non_blocking=True)).float()
                _step(f, y.to(device))
    train_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    val_x, val_y = collect_features(pl_module, val_loader, device)
    extract_s += time.perf_counter() - t2
    head.eval()
    with torch.no_grad():
        top1, top5 = topk_accuracies(head(val_x), val_y, (1, 5))
    what = "cached features, extracted once without augmentation" if cached_features else "features of augmented batches every epoch"
    protocol = (
        f"linear_probe[{name}]: {recipe.optimizer.upper()} lr={lr:g} (base {recipe.base_lr:g} x {recipe.batch_size}/256), "
        f"{recipe.epochs} epochs ({recipe.warmup_epochs} warm-up) cosine, wd={recipe.weight_decay:g}, "
        f"{'BN(affine=False)+' if recipe.head_norm else ''}linear; {what}"
    )
    return ProbeResult(
        protocol=protocol,
        top1=top1,
        top5=top5,
        epochs=recipe.epochs,
        lr=lr,
        batch_size=recipe.batch_size,
        train_samples=n_train,
        val_samples=int(val_y.numel()),
        feature_dim=dim,
        extract_seconds=round(extract_s, 3),
        train_seconds=round(train_s, 3),
        total_seconds=round(time.perf_counter() - t0, 3),
    )


class LinearProbe(pl.Callback):
    """Linear probe at the end of ``fit`` (and optionally every ``every_n_epochs``).

    Data comes from ``train_dataloader``/``val_dataloader`` if given, else from ``provider``
    or ``trainer.datamodule`` via the labelled-data provider protocol
    (``labeled_train_dataloader(augment=not cached_features)``, ``labeled_val_dataloader``).
    Results go to the logger as ``{prefix}/top1``, ``{prefix}/top5`` and are appended to a
    JSON list at ``results_path`` (default ``trainer.log_dir/linear_probe.json``) together
    with the protocol string and the wall time. Runs on global rank 0 only.

    Args:
        preset: ``"moco"`` (SGD, lr 0.1 x B/256, cosine, 90 epochs, RRC + flip) or ``"mae"``
            (BatchNorm1d(affine=False) + linear, LARS, base lr 0.1, 90 epochs, 10 warm-up).
        epochs, optimizer, base_lr, warmup_epochs, batch_size, head_norm, weight_decay:
            override the preset (``None`` keeps it).
        cached_features: fast path: extract features once (no augmentation) and train the
            head on them; the protocol string says so.
        every_n_epochs: also probe after every N pretraining epochs (0: only at fit end).
        provider, train_dataloader, val_dataloader, num_classes: the labelled data.
        results_path: JSON file; ``None`` uses ``trainer.log_dir`` (or ``default_root_dir``).
        prefix: metric-name prefix.
        seed: seeds the cached-feature shuffling.
    """

    def __init__(
        self,
        preset: Literal["moco", "mae"] = "moco",
        epochs: int | None = None,
        optimizer: Literal["sgd", "lars"] | None = None,
        base_lr: float | None = None,
        warmup_epochs: int | None = None,
        batch_size: int | None = None,
        head_norm: bool | None = None,
        weight_decay: float | None = None,
        cached_features: bool = False,
        every_n_epochs: int = 0,
        provider: Any = None,
        train_dataloader: DataLoader | None = None,
        val_dataloader: DataLoader | None = None,
        num_classes: int | None = None,
        results_path: str | Path | None = None,
        prefix: str = "linear_probe",
        seed: int = 0,
    ) -> None:
        if preset not in PROBE_PRESETS:
            raise ValueError(f"preset must be one of {sorted(PROBE_PRESETS)}, got {preset!r}")
        if optimizer is not None and optimizer not in ("sgd", "lars"):
            raise ValueError(f"optimizer must be 'sgd' or 'lars', got {optimizer!r}")
        for pname, v in (("epochs", epochs), ("batch_size", batch_size)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{pname} must be a positive int, got {v!r}")
        if base_lr is not None and not base_lr > 0:
            raise ValueError(f"base_lr must be > 0, got {base_lr!r}")
        if not isinstance(every_n_epochs, int) or every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be an int >= 0, got {every_n_epochs!r}")
        if (train_dataloader is None) != (val_dataloader is None):
            raise ValueError("give both train_dataloader and val_dataloader, or neither")
        if train_dataloader is not None and num_classes is None:
            raise ValueError("num_classes is required with explicit dataloaders, got None")
        base = PROBE_PRESETS[preset]
        over = dict(
            epochs=epochs, optimizer=optimizer, base_lr=base_lr, warmup_epochs=warmup_epochs,
            batch_size=batch_size, head_norm=head_norm, weight_decay=weight_decay,
        )
        self.recipe = ProbeRecipe(**{**asdict(base), **{k: v for k, v in over.items() if v is not None}})
        self.preset = preset
        self.cached_features = cached_features
        self.every_n_epochs = every_n_epochs
        self.provider = provider
        self.train_loader = train_dataloader
        self.val_loader = val_dataloader
        self.num_classes = num_classes
        self.results_path = results_path
        self.prefix = prefix
        self.seed = seed
        self.results: list[ProbeResult] = []

    def _loaders(self, trainer: pl.Trainer | None) -> tuple[Any, Any, int]:
        if self.train_loader is not None:
            return self.train_loader, self.val_loader, int(self.num_classes)  # type: ignore[arg-type]
        p = resolve_provider(self.provider, trainer)
        train = p.labeled_train_dataloader(augment=not self.cached_features, batch_size=self.recipe.batch_size)
        return train, p.labeled_val_dataloader(), int(self.num_classes or p.num_classes)

    def run(self, trainer: pl.Trainer | None, pl_module: nn.Module) -> ProbeResult:
        """Probe ``pl_module`` now; log, write JSON, return the result."""
        train, val, c = self._loaders(trainer)
        g = torch.Generator().manual_seed(self.seed)
        res = run_linear_probe(pl_module, train, val, c, self.recipe, self.cached_features, g, self.preset)
        report_result(res, trainer, self.prefix, self.results_path)
        self.results.append(res)
        return res

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Periodic probe (``every_n_epochs``), skipped for the last epoch (fit end covers it)."""
        e = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and e >= trainer.max_epochs
        if self.every_n_epochs and e % self.every_n_epochs == 0 and not last and trainer.is_global_zero:
            self.run(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Final probe."""
        if trainer.is_global_zero:
            self.run(trainer, pl_module)
