"""Online linear probe: representation quality during pretraining, labels never touching
the backbone (the "online linear evaluation" of solo-learn / lightly benchmarks)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ssl_cropmix.evaluation.protocol import extract_features, frozen, get_backbone
from ssl_cropmix.validation import check_int


def _images_of(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(images, labels)`` from ``(images, labels)`` or ``((view, ...), labels)`` batches.

    For multi-view batches the first view is used (the query view for MoCo).
    """
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        x, y = batch
        if isinstance(x, (list, tuple)):
            x = x[0]
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and y.ndim == 1:
            return x, y
        if isinstance(x, torch.Tensor):
            return x, None
    return batch, None


class OnlineLinearProbe(pl.Callback):
    """Linear classifier trained on detached backbone features, with its own SGD.

    During training batches that carry labels ``(B,)``, the head takes one optimizer step
    on ``features.detach()`` (the features are taken from the training step's output dict
    under ``"features"`` when present, otherwise computed via
    ``evaluation.protocol.extract_features`` under ``no_grad`` with the backbone in eval mode).
    On the validation loader it logs ``online_probe/val_top1`` and ``val_top5`` (%).
    Under DDP the head's gradients are averaged over processes.

    Args:
        num_classes: class count; ``None`` reads ``trainer.datamodule.num_classes``.
        lr: SGD learning rate of the head.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        top_k: the second accuracy reported (5); clipped to ``num_classes``.
        seed: seeds the head's own ``torch.Generator`` (nn.Linear's default init drawn from
            it). The head is built on the first features seen (their width and device), and
            building it never draws from the global RNG, so a run resumed from a checkpoint
            (which restores that stream) continues exactly as the uninterrupted one.

    Shape:
        features ``(B, D)`` -> logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        top_k: int = 5,
        seed: int = 0,
    ) -> None:
        check_int("num_classes", num_classes, 2, optional=True)
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        check_int("top_k", top_k, 1)
        self.num_classes = num_classes
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.top_k = top_k
        check_int("seed", seed)
        self.seed = seed
        self.head: nn.Linear | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.num_classes is None:
            n = getattr(trainer.datamodule, "num_classes", None) if trainer.datamodule is not None else None
            if n is None:
                raise ValueError(
                    "OnlineLinearProbe needs num_classes: pass it, or use a DataModule with `num_classes`"
                )
            self.num_classes = int(n)
        k = min(self.top_k, self.num_classes)
        self.top1 = MulticlassAccuracy(self.num_classes, top_k=1, average="micro")
        self.topk = MulticlassAccuracy(self.num_classes, top_k=k, average="micro")

    def _ensure_head(self, feats: torch.Tensor) -> nn.Linear:
        """Create the head on the first features seen (feature dim and device from them),
        restoring a checkpointed state if one is pending."""
        if self.head is None:
            assert self.num_classes is not None
            self.head = self._new_head(feats.shape[1], self.num_classes).to(feats.device)
            self.optimizer = torch.optim.SGD(
                self.head.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
            if self._pending_state is not None:
                self._apply_state(self._pending_state)
                self._pending_state = None
        self._to_device(feats.device)
        return self.head

    def _new_head(self, in_features: int, out_features: int) -> nn.Linear:
        """``nn.Linear`` with its own default init, drawn from the CPU RNG seeded with
        ``seed`` inside ``torch.random.fork_rng`` (the global stream is restored after)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return nn.Linear(in_features, out_features)

    def _to_device(self, device: torch.device) -> None:
        assert self.head is not None and self.optimizer is not None
        if self.head.weight.device != device:
            self.head.to(device)
            for state in self.optimizer.state.values():
                for key, v in state.items():
                    if isinstance(v, torch.Tensor):
                        state[key] = v.to(device)
        self.top1.to(device)
        self.topk.to(device)

    @torch.no_grad()
    def _features(self, pl_module: pl.LightningModule, x: torch.Tensor) -> torch.Tensor:
        with frozen(get_backbone(pl_module)):  # no batch-norm updates, no autograd graph
            return extract_features(pl_module, x)

    # ------------------------------------------------------------------ training
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        x, y = _images_of(batch)
        if y is None:
            return
        feats = outputs.get("features") if isinstance(outputs, dict) else None
        if feats is None or feats.shape[0] != y.shape[0]:
            feats = self._features(pl_module, x)
        feats = feats.detach().float().flatten(1)
        head = self._ensure_head(feats)
        assert self.optimizer is not None
        with torch.enable_grad():
            loss = F.cross_entropy(head(feats), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for p in head.parameters():
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()
        self.optimizer.step()
        pl_module.log("online_probe/train_loss", loss.detach(), batch_size=y.shape[0])

    # ------------------------------------------------------------------ validation
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        x, y = _images_of(batch)
        if y is None:
            return
        feats = self._features(pl_module, x).float().flatten(1)
        with torch.no_grad():
            logits = self._ensure_head(feats)(feats)
        self.top1.update(logits, y)
        self.topk.update(logits, y)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.head is None or self.top1.update_count == 0:
            return
        pl_module.log("online_probe/val_top1", 100.0 * self.top1.compute(), sync_dist=False)
        pl_module.log(f"online_probe/val_top{self.topk.top_k}", 100.0 * self.topk.compute(), sync_dist=False)
        self.top1.reset()
        self.topk.reset()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        if self.head is None or self.optimizer is None:
            return {}
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.head is None:
            self._pending_state = state_dict
        else:
            self._apply_state(state_dict)

    def _apply_state(self, state: dict[str, Any]) -> None:
        assert self.head is not None and self.optimizer is not None
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
