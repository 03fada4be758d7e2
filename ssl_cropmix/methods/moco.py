"""MoCoCropMix: asymmetric MoCo v2 (Han et al. 2022, Sec. 5 and App. B.2; Asym-Siam's
improved MoCo v2, Wang et al. 2022) as a LightningModule, built from lightly's parts.

The query view (CropMix / ScaleMix / plain) goes through the query encoder, the key view
(plain MoCo v2 augmentation) through the momentum encoder; InfoNCE against a queue of K
keys. Batch format: ``((query, key), labels)``; labels are ignored.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from lightly.models.utils import (
    batch_shuffle,
    batch_unshuffle,
    deactivate_requires_grad,
    update_momentum,
)
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from ssl_cropmix.losses.infonce import infonce_queue_loss
from ssl_cropmix.models.backbones import build_backbone
from ssl_cropmix.models.heads import asym_moco_projection_head
from ssl_cropmix.models.queue import MomentumQueue
from ssl_cropmix.methods.scaling import batch_size_of, log_lr_scaling, scaled_lr, warmup_cosine
from ssl_cropmix.validation import check_bools
from ssl_cropmix.methods.stem import warn_imagenet_stem_on_small_images

OptimizerCallable = Callable[[Iterable[Any]], torch.optim.Optimizer]

#: Smallest InfoNCE temperature accepted (logit scale 1/T <= 1000).
MIN_TEMPERATURE = 1e-3


def _is_vit(backbone: str | nn.Module) -> bool:
    """A ViT name (``timm/vit_*``, ``deit``, ...) or module (it has a ``patch_embed``)."""
    if isinstance(backbone, str):
        name = backbone.lower().removeprefix("timm/")
        return name.startswith(("vit", "deit", "beit", "eva", "swin", "cait", "xcit"))
    return any(hasattr(m, "patch_embed") for m in backbone.modules())


class MoCoCropMix(pl.LightningModule):
    """Asymmetric MoCo v2 with a CropMix (or any) query view.

    Args:
        backbone: torchvision/timm ResNet name (see ``build_backbone``) or an ``nn.Module``.
        small_image: 3x3 stride-1 stem without max-pool for 32-px images.
        proj_hidden_dim: hidden width of the projection head (2048).
        out_dim: embedding dimension (128).
        momentum: key-encoder momentum m (0.999, MoCo).
        momentum_schedule: ``"constant"`` or ``"cosine"`` (m -> 1.0 over training, BYOL-style).
        queue_size: number of negative keys K (65536).
        temperature: InfoNCE temperature (0.2, MoCo v2), at least :data:`MIN_TEMPERATURE`
            (1e-3: logits of 1/T = 1000; below that the loss only measures numerical noise).
        symmetric: also use the key view as a query (and the query view as a key).
        bn_mode: ``"shuffle"`` (shuffle-BN across processes for the key encoder; a no-op on
            one device), ``"sync"`` (convert batch norms to SyncBatchNorm when
            world size > 1) or ``"none"``.
        base_lr: learning rate for a global batch of 256; ``lr = base_lr * global_batch / 256``.
        lr: absolute learning rate; overrides ``base_lr`` scaling when given.
        sgd_momentum: SGD momentum (0.9).
        weight_decay: weight decay (1e-4).
        cosine_lr: cosine-decay the learning rate per step over the whole run.
        optimizer: optional ``OptimizerCallable`` (LightningCLI style) called with the
            parameters; its own lr is then used unchanged.
        pretrained: load ImageNet weights for a named backbone.

    Shape:
        batch: ``((query (B,3,H,W), key (B,3,H,W)), labels (B,))``.
    """

    def __init__(
        self,
        backbone: str | nn.Module = "resnet50",
        small_image: bool = False,
        proj_hidden_dim: int = 2048,
        out_dim: int = 128,
        momentum: float = 0.999,
        momentum_schedule: Literal["constant", "cosine"] = "constant",
        queue_size: int = 65536,
        temperature: float = 0.2,
        symmetric: bool = False,
        bn_mode: Literal["shuffle", "sync", "none"] = "shuffle",
        base_lr: float = 0.03,
        lr: float | None = None,
        sgd_momentum: float = 0.9,
        weight_decay: float = 1e-4,
        cosine_lr: bool = True,
        optimizer: OptimizerCallable | None = None,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        check_bools(small_image=small_image, symmetric=symmetric, cosine_lr=cosine_lr, pretrained=pretrained)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        if momentum_schedule not in ("constant", "cosine"):
            raise ValueError(f"momentum_schedule must be 'constant' or 'cosine', got {momentum_schedule!r}")
        if bn_mode not in ("shuffle", "sync", "none"):
            raise ValueError(f"bn_mode must be 'shuffle', 'sync' or 'none', got {bn_mode!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not (
            MIN_TEMPERATURE <= temperature < math.inf
        ):
            raise ValueError(f"temperature must be a finite number >= {MIN_TEMPERATURE}, got {temperature!r}")
        for name, value, hi in (("sgd_momentum", sgd_momentum, 1.0), ("weight_decay", weight_decay, math.inf)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < hi:
                raise ValueError(f"{name} must be a number in [0, {hi}), got {value!r}")
        if isinstance(backbone, (str, nn.Module)) and _is_vit(backbone):
            raise ValueError(
                f"MoCoCropMix takes a ResNet backbone (BN projection head, paper Sec. 5), got a ViT "
                f"backbone={backbone if isinstance(backbone, str) else type(backbone).__name__!r}; "
                "use MAECropMix for ViTs"
            )
        if not isinstance(queue_size, int) or isinstance(queue_size, bool) or queue_size < 1:
            raise ValueError(f"queue_size must be a positive int, got {queue_size!r}")
        if not base_lr > 0 or (lr is not None and not lr > 0):
            raise ValueError(f"base_lr and lr must be > 0, got base_lr={base_lr!r}, lr={lr!r}")
        ignore = ["optimizer"] + (["backbone"] if isinstance(backbone, nn.Module) else [])
        self.save_hyperparameters(ignore=ignore)
        self.backbone, self.feature_dim = build_backbone(backbone, small_image=small_image, pretrained=pretrained)
        self.projection_head = asym_moco_projection_head(self.feature_dim, proj_hidden_dim, out_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.queue = MomentumQueue(queue_size, out_dim, gather_distributed=True)
        # Every rank fills its queue with the same all-gathered keys: DDP need not re-broadcast
        # its K x out_dim floats from rank 0 every step (``broadcast_buffers``). DDP skips the
        # names listed here (also in its initial sync: ``on_fit_start`` broadcasts the queue once).
        self._ddp_params_and_buffers_to_ignore = [f"queue.{n}" for n, _ in self.queue.named_buffers()]
        self.optimizer_callable = optimizer
        self._shuffle_distributed = False

    # ------------------------------------------------------------------ forward passes
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features. Shape: ``(B,3,H,W) -> (B, feature_dim)``."""
        return self.backbone(x)

    def query_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (B, D), embedding (B, out_dim))`` of the query encoder."""
        feats = self.backbone(x).flatten(1)
        return feats, self.projection_head(feats)

    @torch.no_grad()
    def key_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised momentum-encoder embedding ``(B, out_dim)``, with shuffle-BN across
        processes."""
        distributed = self._shuffle_distributed
        if distributed:
            x, shuffle = batch_shuffle(x, distributed=True)
        k = self.projection_head_momentum(self.backbone_momentum(x).flatten(1))
        if distributed:
            k = batch_unshuffle(k, shuffle, distributed=True)
        # L2-normalised here, as in the reference MoCo: these keys go into the queue, and the
        # loss only normalises what it is given (unnormalised negatives make it unbounded).
        return nn.functional.normalize(k, dim=1).detach()

    def current_momentum(self) -> float:
        """Key-encoder momentum at the current step (constant or cosine to 1.0)."""
        m = float(self.hparams.momentum)
        if self.hparams.momentum_schedule == "constant" or self._trainer is None:
            return m
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total <= 0:
            return m
        return cosine_schedule(min(self.global_step, int(total)), int(total), m, 1.0)

    # ------------------------------------------------------------------ checks
    def setup(self, stage: str) -> None:
        world = self.trainer.world_size if self._trainer is not None else 1
        self._shuffle_distributed = self.hparams.bn_mode == "shuffle" and world > 1
        if self.hparams.bn_mode == "sync" and world > 1:
            self.backbone = nn.SyncBatchNorm.convert_sync_batchnorm(self.backbone)
            self.projection_head = nn.SyncBatchNorm.convert_sync_batchnorm(self.projection_head)
            self.backbone_momentum = nn.SyncBatchNorm.convert_sync_batchnorm(self.backbone_momentum)
            self.projection_head_momentum = nn.SyncBatchNorm.convert_sync_batchnorm(
                self.projection_head_momentum
            )
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        bs = getattr(dm, "batch_size", None)
        if stage == "fit" and isinstance(bs, int):
            self._check_batch(bs)

    def on_fit_start(self) -> None:
        """Under DDP, give every rank rank 0's queue once (DDP's own start-up sync skips the
        queue, see ``_ddp_params_and_buffers_to_ignore``); from then on every rank enqueues
        the same gathered keys, so the queues stay identical without per-step broadcasts."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for buf in self.queue.buffers():
                dist.broadcast(buf, src=0)

    def on_train_start(self) -> None:
        bs = batch_size_of(self.trainer.train_dataloader)
        if bs is not None:
            self._check_batch(bs)
        log_lr_scaling(self)

    def _check_batch(self, per_device: int) -> None:
        """Reject batch sizes MoCo cannot train with (raised at setup / train start)."""
        if per_device < 2:
            raise ValueError(
                f"MoCoCropMix needs a per-device batch size >= 2 (batch norm in the projection "
                f"head), got batch_size={per_device}"
            )
        g = per_device * max(1, self.trainer.world_size)
        per_step = 2 * g if self.hparams.symmetric else g  # symmetric enqueues both key sets
        if per_step > self.hparams.queue_size:
            raise ValueError(
                f"{per_step} keys per step (global batch {g} = {per_device} x {self.trainer.world_size} "
                f"devices{', x2 for symmetric=True' if self.hparams.symmetric else ''}) exceed "
                f"queue_size={self.hparams.queue_size}; raise queue_size or lower batch_size"
            )
        # queue_size not divisible by the global batch is handled: the queue wraps around.

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        (x_q, x_k), _ = batch  # labels never used
        if x_q.shape[0] < 2:
            raise ValueError(
                f"step {self.global_step}: got a batch of {x_q.shape[0]} sample; MoCoCropMix needs >= 2 "
                "per device (use drop_last=True in the train DataLoader)"
            )
        if batch_idx == 0 and self.current_epoch == 0:  # once per fit: the first batch's size
            warn_imagenet_stem_on_small_images(type(self).__name__, self.backbone, int(x_q.shape[-2]))
        m = self.current_momentum()
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)
        feats, q = self.query_embedding(x_q)
        k = self.key_embedding(x_k)
        negatives = self.queue.queue.clone()
        loss = infonce_queue_loss(q, k, negatives, self.hparams.temperature)
        keys = k
        if self.hparams.symmetric:
            _, q2 = self.query_embedding(x_k)
            k2 = self.key_embedding(x_q)
            loss = 0.5 * (loss + infonce_queue_loss(q2, k2, negatives, self.hparams.temperature))
            keys = torch.cat([k, k2])
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"MoCoCropMix: non-finite loss {loss.item()} at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}); lower the learning rate or "
                "check the inputs"
            )
        self.queue.enqueue(keys)
        self.log("train/loss", loss, prog_bar=True, batch_size=x_q.shape[0], sync_dist=False)
        self.log("train/momentum", m, batch_size=x_q.shape[0])
        return {"loss": loss, "features": feats.detach(), "keys": k}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """No validation loss: the val loop exists so evaluation callbacks (online probe,
        kNN) can run on the validation loader."""
        return None

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store torch's RNG streams (Lightning does not), so a resumed run draws the same
        shuffles and augmentations as an uninterrupted one. The queue, its pointer and the
        momentum encoder are buffers/parameters and travel in ``state_dict``. Non-finite
        weights are never saved (``checkpoints.check_finite_state``)."""
        from ssl_cropmix.checkpoints import check_finite_state

        check_finite_state(checkpoint.get("state_dict", {}), self.global_step, type(self).__name__)
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["moco_rng_state"] = rng

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the RNG streams when a single-process ``fit`` resumes. Not when the module
        is merely loaded (``load_from_checkpoint`` must not reset the caller's RNG), and not
        with several processes: only rank 0's streams are saved, and giving them to every
        rank would make all ranks augment alike (they are reseeded by
        ``seed_everything(..., workers=True)`` instead)."""
        rng = checkpoint.get("moco_rng_state")
        trainer = self._trainer
        if rng is None or trainer is None or trainer.state.fn != "fit" or trainer.world_size > 1:
            return
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_callable is not None:
            opt = self.optimizer_callable(params)
        else:
            effective, lr = scaled_lr("MoCoCropMix", self.trainer, self.hparams.base_lr, self.hparams.lr)
            self.effective_batch_size, self.scaled_lr = effective, lr
            opt = torch.optim.SGD(
                params, lr=lr, momentum=self.hparams.sgd_momentum, weight_decay=self.hparams.weight_decay
            )
        if not self.hparams.cosine_lr:
            return opt
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total <= 0:
            return opt
        total = int(total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
