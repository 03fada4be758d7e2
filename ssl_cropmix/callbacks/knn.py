"""Weighted kNN monitor during pretraining (InstDisc / MoCo protocol: k=200, T=0.1).

Built to scale to ImageNet (1.28 M x 2048 features) on every rank of a DDP run:

* every rank extracts an unpadded shard of the bank and keeps **only its shard** (on the
  module's device, in half precision on GPUs: bf16 where supported, else fp16; float32 on
  the CPU), extracted at the module's precision (``*-true`` dtype, autocast for ``*-mixed``);
* the queries (small: the validation split) are all-gathered, so every rank holds all of them;
* each rank computes the float32 cosine similarities of a chunk of queries against its shard
  block by block, keeping per-query top-k ``(similarity, label)`` candidates
  (:func:`knn_candidates`); the ranks all-gather these ``k`` candidates per query and take the
  top-k again, then vote as ``lightly.utils.benchmarking.knn_predict`` (:func:`knn_vote`).

No rank ever holds the whole bank; the extra memory of a rank is one query chunk x one bank
block (plus the block in float32) on top of its shard. The value equals the single-process
value on the same data, on every rank.
"""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader

from ssl_cropmix.evaluation.protocol import extract_features, frozen, get_backbone, module_device, resolve_provider
from ssl_cropmix.evaluation.data import all_gather_rows, dist_world_rank, precision_inputs, shard_loader
from ssl_cropmix.validation import check_int


DEFAULT_K = 200  # InstDisc / MoCo's monitor
BANK_DTYPES = ("auto", "float32", "bfloat16", "float16")


def knn_candidates(
    query: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, k: int, bank_chunk_size: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``k`` most cosine-similar rows of ``bank``: similarities and labels.

    The bank (any float dtype, e.g. a bf16 shard) is read ``bank_chunk_size`` rows at a time,
    normalised in float32 block by block (never as a whole) and the similarities are float32;
    a running top-k per query is merged with each block's. With fewer than ``k`` bank rows the
    missing candidates are ``-inf`` (label 0): they never win a merge and vote with weight 0.

    Shape:
        query ``(Q, D)``, bank ``(N, D)``, bank_labels ``(N,)`` -> ``(Q, k)`` float32
        similarities (descending) and ``(Q, k)`` long labels.
    """
    qn = F.normalize(query.float(), dim=1)
    best_v = torch.full((query.shape[0], k), -torch.inf, device=query.device)
    best_y = torch.zeros(query.shape[0], k, dtype=torch.long, device=query.device)
    for start in range(0, bank.shape[0], bank_chunk_size):
        block = F.normalize(bank[start:start + bank_chunk_size].float(), dim=1)
        sim = qn @ block.t()
        del block
        v, i = sim.topk(min(k, sim.shape[1]), dim=1)
        del sim
        best_v, best_y = top_k_of([best_v, v], [best_y, bank_labels[start:start + bank_chunk_size][i]], k)
    return best_v, best_y


def knn_vote(similarities: torch.Tensor, labels: torch.Tensor, num_classes: int, temperature: float = 0.1) -> torch.Tensor:
    """Weighted vote of the neighbours (lightly's ``knn_predict``): each votes for its class
    with weight ``exp(cos / temperature)``; the class with the largest sum wins.

    Shape:
        similarities ``(Q, k)``, labels ``(Q, k)`` -> ``(Q,)`` long.
    """
    weights = (similarities.float() / temperature).exp()  # -inf (no candidate) -> weight 0
    scores = torch.zeros(labels.shape[0], num_classes, device=labels.device)
    return scores.scatter_add_(1, labels, weights).argmax(dim=1)


def top_k_of(similarities: list[torch.Tensor], labels: list[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-query top-k of several candidate sets of the same queries (e.g. one per bank
    shard): equal to the top-k over the union of the shards.

    Shape:
        lists of ``(Q, k_i)`` similarities and labels -> ``(Q, k)`` and ``(Q, k)``.
    """
    v, j = torch.cat(similarities, dim=1).topk(k, dim=1)
    return v, torch.cat(labels, dim=1).gather(1, j)


def merge_candidates(similarities: torch.Tensor, labels: torch.Tensor, k: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's ``(Q, k)`` candidates of the same queries merged into the global top-k
    (one all-gather of ``world x Q x k x 2`` floats; labels travel as float32, exact below
    2**24 classes). Call on every rank; identity for ``world == 1``.

    Shape:
        ``(Q, k)`` float32 similarities and long labels -> the same, over all ranks' shards.
    """
    if world == 1:
        return similarities, labels
    packed = torch.stack([similarities, labels.float()], dim=-1).contiguous()  # (Q, k, 2)
    parts = [torch.empty_like(packed) for _ in range(world)]
    torch.distributed.all_gather(parts, packed)
    return top_k_of([t[..., 0] for t in parts], [t[..., 1].long() for t in parts], k)


def knn_predict_sharded(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int,
    temperature: float = 0.1,
    chunk_size: int = 1024,
    bank_chunk_size: int = 65536,
    world: int = 1,
) -> torch.Tensor:
    """Weighted-kNN classes of ``query`` against a bank split over ``world`` ranks (this rank
    holds ``bank``, a shard, possibly empty); every rank passes the same queries and gets the
    same predictions. Call on every rank (one all-gather per query chunk when ``world > 1``).

    Memory beyond the inputs: one ``chunk_size x bank_chunk_size`` float32 similarity block,
    one ``bank_chunk_size x D`` float32 normalised bank block and ``O(chunk_size x k)``
    candidates.

    Shape:
        query ``(Q, D)``, bank ``(N_rank, D)``, bank_labels ``(N_rank,)`` -> ``(Q,)`` long.
    """
    out = []
    for q in query.split(chunk_size):
        v, y = knn_candidates(q, bank, bank_labels, k, bank_chunk_size)
        v, y = merge_candidates(v, y, k, world)
        out.append(knn_vote(v, y, num_classes, temperature))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=query.device)


def knn_classify(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
    bank_chunk_size: int = 65536,
) -> torch.Tensor:
    """Predicted classes by weighted kNN with cosine similarity (one process, whole bank).

    Each of the ``k`` nearest bank features votes for its class with weight
    ``exp(cos / temperature)`` (Wu et al. 2018, InstDisc; MoCo's monitor); votes are summed
    per class, as ``lightly.utils.benchmarking.knn_predict``. Queries are processed
    ``chunk_size`` at a time against ``bank_chunk_size`` bank rows at a time (see
    :func:`knn_predict_sharded`): the bank is never copied, normalised or transposed whole.

    Shape:
        query ``(Q, D)``, bank ``(N, D)``, bank_labels ``(N,)`` -> ``(Q,)`` long.

    Raises:
        ValueError: ``k`` is larger than the bank (no silent clamping).
    """
    if k > bank.shape[0]:
        raise ValueError(f"k={k} is larger than the kNN feature bank ({bank.shape[0]} samples): lower k")
    return knn_predict_sharded(query, bank, bank_labels, num_classes, k, temperature, chunk_size, bank_chunk_size)


class KNNMonitor(pl.Callback):
    """Logs ``knn_top1`` (%) every ``every_n_epochs`` pretraining epochs.

    The bank is the provider's labelled train split without augmentation
    (``labeled_train_dataloader(augment=False, shuffle=False)``), queries are
    ``labeled_val_dataloader()``; features stay on the module's device. Explicit loaders
    override the provider. Under DDP each rank extracts and keeps its shard of the bank only
    and the ranks merge per-query top-k candidates (see the module docstring); every rank gets
    the single-process value.

    ``k`` left unset is the protocol's 200 (:data:`DEFAULT_K`); on a bank smaller than that
    (the 64-image demo set) the whole bank is used, said once in the log and recorded in
    :attr:`k_used` and as the logged metric ``<name>_k``. An explicit ``k`` larger than the
    bank raises ``ValueError`` (STYLE principle 14: a value the user set is never clamped).

    Args:
        k: neighbours (``None``: 200, or the bank size when the bank is smaller).
        temperature: vote temperature (0.1).
        every_n_epochs: period in training epochs.
        chunk_size: queries per similarity chunk.
        bank_chunk_size: bank rows per similarity block.
        bank_dtype: storage dtype of each rank's bank shard: ``"auto"`` (bf16 on a CUDA device
            that supports it, else fp16 on CUDA; float32 elsewhere), or ``"float32"``,
            ``"bfloat16"``, ``"float16"``. Similarities are float32 whatever the storage.
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
        bank_chunk_size: int = 65536,
        bank_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
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
        check_int("bank_chunk_size", bank_chunk_size, 1)
        if bank_dtype not in BANK_DTYPES:
            raise ValueError(f"bank_dtype must be one of {BANK_DTYPES}, got {bank_dtype!r}")
        if (train_dataloader is None) != (val_dataloader is None):
            raise ValueError("give both train_dataloader and val_dataloader, or neither")
        if train_dataloader is not None and num_classes is None:
            raise ValueError("num_classes is required with explicit dataloaders, got None")
        self.k, self.temperature, self.every_n_epochs, self.chunk_size = k, temperature, every_n_epochs, chunk_size
        self.bank_chunk_size, self.bank_dtype = bank_chunk_size, bank_dtype
        self.provider, self.num_classes, self.batch_size, self.name = provider, num_classes, batch_size, name
        self.train_loader, self.val_loader = train_dataloader, val_dataloader
        self.k_used: int | None = None  # the k of the last evaluation
        self.history: list[tuple[int, float]] = []
        self.last_device: str | None = None  # where the last evaluation computed its features
        self.last_bank_dtype: torch.dtype | None = None  # how the last evaluation stored its bank shard

    def storage_dtype(self, device: torch.device) -> torch.dtype:
        """The bank shard's dtype on ``device`` (``bank_dtype``, ``"auto"`` resolved)."""
        if self.bank_dtype != "auto":
            return getattr(torch, self.bank_dtype)
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32

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
        self.last_device, self.last_bank_dtype = str(device), self.storage_dtype(device)
        bank, bank_y = _shard_features(pl_module, shard_loader(bank_loader, world, rank), device, self.last_bank_dtype)
        q, q_y = _shard_features(pl_module, shard_loader(val_loader, world, rank), device, torch.float32)
        if world > 1:  # the queries are small: every rank gets all of them (the bank stays sharded)
            q, q_y = _cat_nonempty(all_gather_rows(q, world)), _cat_nonempty(all_gather_rows(q_y, world))
        pred = knn_predict_sharded(q, bank, bank_y, c, k, self.temperature, self.chunk_size, self.bank_chunk_size, world)
        return 100.0 * float((pred == q_y).sum()) / max(len(q_y), 1)  # all queries on every rank: equal everywhere

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


def _shard_features(
    pl_module: Any, loader: DataLoader, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(n, D)`` in ``dtype`` and labels ``(n,)`` of the ``n`` samples of a shard
    loader, written batch by batch into one preallocated tensor (no list of float32 batches
    concatenated: the shard is held once, in its storage dtype). The backbone runs at the
    module's precision (:func:`~ssl_cropmix.evaluation.data.precision_inputs`)."""
    n = len(loader.sampler) if loader.sampler is not None else len(loader.dataset)  # type: ignore[arg-type]
    feats = torch.zeros(0, 0, dtype=dtype, device=device)
    labels = torch.zeros(n, dtype=torch.long, device=device)
    at = 0
    with frozen(get_backbone(pl_module)), precision_inputs(pl_module) as convert:
        for x, y in loader:
            f = extract_features(pl_module, convert(x.to(device, non_blocking=True)))
            if at == 0:
                feats = torch.empty(n, f.shape[1], dtype=dtype, device=device)
            feats[at:at + len(f)] = f
            labels[at:at + len(f)] = y.to(device)
            at += len(f)
    return feats[:at], labels[:at]


def _cat_nonempty(parts: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` of the gathered rank parts, skipping empty shards (their ``(0, 0)`` shape
    does not match the others' feature dimension)."""
    full = [t for t in parts if t.numel()]
    return torch.cat(full) if full else parts[0]
