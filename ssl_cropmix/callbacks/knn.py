"""Weighted kNN monitor during pretraining (InstDisc / MoCo protocol: k=200, T=0.1)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict
from torch.utils.data import DataLoader

from ssl_cropmix.callbacks.linear_probe import collect_features
from ssl_cropmix.callbacks.utils import resolve_provider


def knn_classify(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Predicted classes by weighted kNN with cosine similarity.

    Each of the ``k`` nearest bank features votes for its class with weight
    ``exp(cos / temperature)`` (Wu et al. 2018, InstDisc; MoCo's monitor); votes are summed
    per class. Queries are processed ``chunk_size`` at a time, so memory is
    ``O(chunk_size * N_bank)``. The voting is ``lightly.utils.benchmarking.knn_predict``.

    Shape:
        query ``(Q, D)``, bank ``(N, D)``, bank_labels ``(N,)`` -> ``(Q,)`` long.
    """
    bank_t = F.normalize(bank.float(), dim=1).t().contiguous()
    k = min(k, bank.shape[0])
    out = []
    for q in query.split(chunk_size):
        pred = knn_predict(F.normalize(q.float(), dim=1), bank_t, bank_labels, num_classes, k, temperature)
        out.append(pred[:, 0])
    return torch.cat(out)


class KNNMonitor(pl.Callback):
    """Logs ``knn_top1`` (%) every ``every_n_epochs`` pretraining epochs.

    The bank is the provider's labelled train split without augmentation
    (``labeled_train_dataloader(augment=False, shuffle=False)``), queries are
    ``labeled_val_dataloader()``; features stay on the module's device. Explicit loaders
    override the provider. Under DDP every rank computes the same value on the full bank
    (no sharding; fine for CIFAR-sized banks) and the value is logged with ``rank_zero_only``.

    Args:
        k: neighbours (200).
        temperature: vote temperature (0.1).
        every_n_epochs: period in training epochs.
        chunk_size: queries per similarity chunk.
        provider, train_dataloader, val_dataloader, num_classes: labelled data.
        batch_size: batch size asked from the provider (``None``: its default).
        name: logged metric name.
    """

    def __init__(
        self,
        k: int = 200,
        temperature: float = 0.1,
        every_n_epochs: int = 1,
        chunk_size: int = 1024,
        provider: Any = None,
        train_dataloader: DataLoader | None = None,
        val_dataloader: DataLoader | None = None,
        num_classes: int | None = None,
        batch_size: int | None = None,
        name: str = "knn_top1",
    ) -> None:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive int, got {every_n_epochs!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if (train_dataloader is None) != (val_dataloader is None):
            raise ValueError("give both train_dataloader and val_dataloader, or neither")
        if train_dataloader is not None and num_classes is None:
            raise ValueError("num_classes is required with explicit dataloaders, got None")
        self.k, self.temperature, self.every_n_epochs, self.chunk_size = k, temperature, every_n_epochs, chunk_size
        self.provider, self.num_classes, self.batch_size, self.name = provider, num_classes, batch_size, name
        self.train_loader, self.val_loader = train_dataloader, val_dataloader
        self.history: list[tuple[int, float]] = []

    def evaluate(self, pl_module: Any, trainer: pl.Trainer | None = None) -> float:
        """kNN top-1 (%) of ``pl_module``'s frozen features right now."""
        if self.train_loader is not None:
            bank_loader, val_loader, c = self.train_loader, self.val_loader, int(self.num_classes)  # type: ignore[arg-type]
        else:
            p = resolve_provider(self.provider, trainer)
            bank_loader = p.labeled_train_dataloader(augment=False, batch_size=self.batch_size, shuffle=False)
            val_loader, c = p.labeled_val_dataloader(batch_size=self.batch_size), int(self.num_classes or p.num_classes)
        bank, bank_y = collect_features(pl_module, bank_loader)
        q, q_y = collect_features(pl_module, val_loader)
        pred = knn_classify(q, bank, bank_y, c, self.k, self.temperature, self.chunk_size)
        return 100.0 * (pred == q_y).float().mean().item()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate and log every ``every_n_epochs`` epochs."""
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        from pytorch_lightning.utilities.seed import isolate_rng

        with isolate_rng():  # its loaders draw seeds: keep the training RNG stream (exact resume)
            acc = self.evaluate(pl_module, trainer)
        self.history.append((trainer.current_epoch, acc))
        pl_module.log(self.name, acc, rank_zero_only=True, prog_bar=True)
