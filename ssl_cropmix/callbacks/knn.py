"""Weighted kNN monitor during pretraining (InstDisc / MoCo protocol: k=200, T=0.1).

Under DDP every rank extracts an unpadded shard of the bank and of the queries; the bank
shards are all-gathered (so each rank holds the whole bank, in dataset order), each rank
classifies its own queries and the hit counts are summed: the value equals the
single-process value on the same data, on every rank.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader

from ssl_cropmix.callbacks.linear_probe import collect_features
from ssl_cropmix.callbacks.utils import get_backbone, module_device, resolve_provider
from ssl_cropmix.evaluation.data import all_gather_rows, dist_world_rank, shard_loader
from ssl_cropmix.validation import check_int


DEFAULT_K = 200  # InstDisc / MoCo's monitor


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

    Raises:
        ValueError: ``k`` is larger than the bank (no silent clamping).
    """
    if k > bank.shape[0]:
        raise ValueError(f"k={k} is larger than the kNN feature bank ({bank.shape[0]} samples): lower k")
    bank_t = F.normalize(bank.float(), dim=1).t().contiguous()
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
    override the provider. Under DDP each rank extracts its shard of bank and queries (see
    the module docstring); every rank gets the single-process value.

    ``k`` left unset is the protocol's 200 (:data:`DEFAULT_K`); on a bank smaller than that
    (the 64-image demo set) the whole bank is used, said once in the log and recorded in
    :attr:`k_used` and as the logged metric ``<name>_k``. An explicit ``k`` larger than the
    bank raises ``ValueError`` (STYLE principle 14: a value the user set is never clamped).

    Args:
        k: neighbours (``None``: 200, or the bank size when the bank is smaller).
        temperature: vote temperature (0.1).
        every_n_epochs: period in training epochs.
        chunk_size: queries per similarity chunk.
        provider, train_dataloader, val_dataloader, num_classes: labelled data.
        batch_size: batch size asked from the provider (``None``: its default).
        name: logged metric name.
    """

    def __init__(
        self,
        k: int | None = None,
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
        check_int("k", k, 1, optional=True)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        check_int("every_n_epochs", every_n_epochs, 1)
        check_int("chunk_size", chunk_size, 1)
        if (train_dataloader is None) != (val_dataloader is None):
            raise ValueError("give both train_dataloader and val_dataloader, or neither")
        if train_dataloader is not None and num_classes is None:
            raise ValueError("num_classes is required with explicit dataloaders, got None")
        self.k, self.temperature, self.every_n_epochs, self.chunk_size = k, temperature, every_n_epochs, chunk_size
        self.provider, self.num_classes, self.batch_size, self.name = provider, num_classes, batch_size, name
        self.train_loader, self.val_loader = train_dataloader, val_dataloader
        self.k_used: int | None = None  # the k of the last evaluation
        self.history: list[tuple[int, float]] = []
        self.last_device: str | None = None  # where the last evaluation computed its features

    def evaluate(self, pl_module: Any, trainer: pl.Trainer | None = None) -> float:
        """kNN top-1 (%) of ``pl_module``'s frozen features right now; call on every rank."""
        if self.train_loader is not None:
            bank_loader, val_loader, c = self.train_loader, self.val_loader, int(self.num_classes)  # type: ignore[arg-type]
        else:
            p = resolve_provider(self.provider, trainer)
            bank_loader = p.labeled_train_dataloader(augment=False, batch_size=self.batch_size, shuffle=False)
            val_loader, c = p.labeled_val_dataloader(batch_size=self.batch_size), int(self.num_classes or p.num_classes)
        world, rank = dist_world_rank()
        k = self._resolve_k(len(bank_loader.dataset))
        device = module_device(get_backbone(pl_module))
        self.last_device = str(device)
        bank, bank_y = _shard_features(pl_module, shard_loader(bank_loader, world, rank), device)
        q, q_y = _shard_features(pl_module, shard_loader(val_loader, world, rank), device)
        if world > 1:
            bank, bank_y = _gather_in_order(bank, bank_y, world, rank)
        pred = knn_classify(q, bank, bank_y, c, k, self.temperature, self.chunk_size) if len(q) else q_y
        hits = torch.tensor([float((pred == q_y).sum()), float(len(q_y))], dtype=torch.float64, device=device)
        if world > 1:
            torch.distributed.all_reduce(hits)
        return 100.0 * float(hits[0]) / max(float(hits[1]), 1.0)

    def _resolve_k(self, n_bank: int) -> int:
        """The k to use on a bank of ``n_bank`` images (adapts the default visibly, refuses an explicit k)."""
        if self.k is not None:
            if self.k > n_bank:
                raise ValueError(f"k={self.k} is larger than the kNN feature bank ({n_bank} samples): lower k")
            k = self.k
        else:
            k = min(DEFAULT_K, n_bank)
            if k < DEFAULT_K and self.k_used != k:
                rank_zero_info(
                    f"[{self.name}] KNNMonitor: the default k={DEFAULT_K} is larger than the feature bank "
                    f"({n_bank} images): using k={k} (every bank image votes); pass k= to choose it"
                )
        self.k_used = k
        return k

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate and log every ``every_n_epochs`` epochs (every rank takes part)."""
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        from pytorch_lightning.utilities.seed import isolate_rng

        with isolate_rng():  # its loaders draw seeds: keep the training RNG stream (exact resume)
            acc = self.evaluate(pl_module, trainer)
        self.history.append((trainer.current_epoch, acc))
        pl_module.log(self.name, acc, prog_bar=True, sync_dist=True)  # equal on every rank: the mean is the value
        pl_module.log(f"{self.name}_k", float(self.k_used or 0), sync_dist=True)  # what ran, next to the value


def _shard_features(pl_module: Any, loader: DataLoader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if len(loader) == 0:  # fewer samples than ranks (the shard loaders keep every batch: no drop_last)
        return torch.zeros(0, 0, device=device), torch.zeros(0, dtype=torch.long, device=device)
    return collect_features(pl_module, loader, device)


def _gather_in_order(f: torch.Tensor, y: torch.Tensor, world: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' :class:`ShardSampler` shards (rank r holds r, r+w, ...) back in dataset order."""
    fs, ys = all_gather_rows(f, world), all_gather_rows(y, world)
    n = sum(len(t) for t in ys)
    dim = max(t.shape[1] if t.ndim == 2 else 0 for t in fs)
    out_f = torch.empty(n, dim, dtype=torch.float32, device=f.device)
    out_y = torch.empty(n, dtype=torch.long, device=f.device)
    for r, (fr, yr) in enumerate(zip(fs, ys)):
        if len(yr):
            out_f[r::world] = fr
            out_y[r::world] = yr
    return out_f, out_y
