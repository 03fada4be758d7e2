"""MAECropMix: masked autoencoding (He et al., 2022) on CropMix inputs (Han et al. 2022,
Sec. 6 and App. B.3), as a LightningModule built from lightly's masked-ViT parts.

The encoder sees only the visible patches of the (CropMix / plain RRC) image; a light
decoder inserts mask tokens, adds fixed sine-cosine position embeddings and predicts the
pixels of the masked patches; the loss is the MSE on masked patches (``norm_pix_loss``).
Batch format: ``(images, labels)``; labels are ignored.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import pytorch_lightning as pl
import torch
from lightly.models.modules import MaskedVisionTransformerDecoderTIMM, MaskedVisionTransformerTIMM
from lightly.models.utils import get_at_index, patchify, repeat_token, set_at_index
from timm.optim import param_groups_weight_decay
from torch import nn

from ssl_cropmix.losses.reconstruction import masked_reconstruction_loss
from ssl_cropmix.methods.scaling import log_lr_scaling, scaled_lr, warmup_cosine
from ssl_cropmix.models.vit import build_vit
from ssl_cropmix.validation import check_bools

def random_patch_mask(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    num_prefix_tokens: int = 1,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random patch masking, MAE's ``random_masking`` as sequence indices.

    Exactly ``num_patches - int(num_patches * (1 - mask_ratio))`` patches are masked in every
    sample (196 -> 147 at 0.75); prefix tokens (class/register) are always kept.
    Hand-written instead of lightly's ``random_token_mask`` because that one takes no
    ``generator`` and handles a single prefix token only.

    Returns:
        ``(idx_keep, idx_mask)``: indices into the token sequence (prefix tokens first).

    Shape:
        idx_keep: ``(B, num_prefix_tokens + num_keep)``; idx_mask: ``(B, num_patches - num_keep)``.
    """
    num_keep = int(num_patches * (1 - mask_ratio))
    gen_device = generator.device if generator is not None else device
    noise = torch.rand(batch_size, num_patches, device=gen_device, generator=generator).to(device)
    order = torch.argsort(noise, dim=1) + num_prefix_tokens
    prefix = torch.arange(num_prefix_tokens, device=order.device).expand(batch_size, -1)
    idx_keep = torch.cat([prefix, order[:, :num_keep]], dim=1)
    return idx_keep, order[:, num_keep:]


class MAECropMix(pl.LightningModule):
    """Masked autoencoder with a timm ViT encoder, for CropMix (or plain RRC) inputs.

    Args:
        model_name: timm ViT name (``vit_base_patch16_224``: the paper's ViT-B/16).
        img_size: input resolution override for the ViT (e.g. 32 for CIFAR).
        patch_size: patch size override (e.g. 4 at 32 px).
        vit_kwargs: extra ``timm.create_model`` arguments (e.g. ``{"depth": 6}``).
        decoder_dim: decoder width (512, MAE).
        decoder_depth: decoder blocks (8).
        decoder_num_heads: decoder attention heads (16).
        mask_ratio: fraction of patches masked, in (0, 1) (0.75).
        norm_pix_loss: per-patch normalised pixel targets (MAE reference default).
        base_lr: lr for an effective batch of 256; ``lr = base_lr * effective / 256`` with
            effective = per-device batch x world size x ``accumulate_grad_batches``.
        lr: absolute learning rate; overrides the ``base_lr`` scaling when given.
        betas: AdamW betas ((0.9, 0.95)).
        weight_decay: AdamW weight decay (0.05). As MAE (``main_pretrain.py``: timm 0.3.2's
            ``add_weight_decay`` with no skip list): every trainable parameter is decayed
            except 1-d ones (norms) and biases; the class and mask tokens *are* decayed, the
            position embeddings are fixed sine-cosine (not trained).
        warmup_epochs: linear warmup length (per step) before the cosine decay.

    Shape:
        batch: ``(images (B,3,H,W), labels (B,))``; ``self.backbone(images) -> (B, D)``.
    """

    def __init__(
        self,
        model_name: str = "vit_base_patch16_224",
        img_size: int | None = None,
        patch_size: int | None = None,
        vit_kwargs: dict[str, Any] | None = None,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        base_lr: float = 1.5e-4,
        lr: float | None = None,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.05,
        warmup_epochs: float = 40,
    ) -> None:
        super().__init__()
        check_bools(norm_pix_loss=norm_pix_loss)
        if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, numbers.Real) or not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio!r}")
        for name, value in (("decoder_dim", decoder_dim), ("decoder_depth", decoder_depth),
                            ("decoder_num_heads", decoder_num_heads)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if decoder_dim % decoder_num_heads != 0:
            raise ValueError(
                f"decoder_dim {decoder_dim} must be divisible by decoder_num_heads {decoder_num_heads}"
            )
        if decoder_dim % 4 != 0:
            raise ValueError(f"decoder_dim must be divisible by 4 (2-D sine-cosine position embedding), got {decoder_dim}")
        if not base_lr > 0 or (lr is not None and not lr > 0):
            raise ValueError(f"base_lr and lr must be > 0, got base_lr={base_lr!r}, lr={lr!r}")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real) or not (
            0 <= weight_decay < math.inf
        ):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        if (
            not isinstance(betas, (tuple, list))
            or len(betas) != 2
            or not all(isinstance(b, numbers.Real) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in betas)
        ):
            raise ValueError(f"betas must be a pair (beta1, beta2) of numbers in [0, 1), got {betas!r}")
        if not warmup_epochs >= 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs!r}")
        self.save_hyperparameters()
        vit = build_vit(model_name, img_size=img_size, patch_size=patch_size, vit_kwargs=vit_kwargs)
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        # The encoder only ever sees kept tokens (idx_keep); its mask token is unused and
        # frozen so DDP does not complain about parameters without gradients.
        self.backbone.mask_token.requires_grad_(False)
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.num_patches = int(vit.patch_embed.num_patches)
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        if int(self.num_patches * (1 - mask_ratio)) < 1:
            raise ValueError(
                f"mask_ratio={mask_ratio!r} leaves no visible patch of the {self.num_patches} "
                f"(keeps int({self.num_patches} * (1 - mask_ratio)) = 0); lower mask_ratio"
            )
        self.sequence_length = self.backbone.sequence_length
        self.decoder_embed = nn.Linear(vit.embed_dim, decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=self.num_patches,
            embed_dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_num_heads,
            num_prefix_tokens=self.num_prefix_tokens,
        )
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * 3)
        # MAE's ``_init_weights`` for every nn.Linear (lightly already does it for the encoder
        # and decoder blocks): xavier-uniform weights, zero biases.
        for layer in (self.decoder_embed, self.decoder_pred):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.effective_batch_size: int | None = None
        self.scaled_lr: float | None = None

    # ------------------------------------------------------------------ forward passes
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class-token features of the full (unmasked) image. Shape: ``(B,3,H,W) -> (B, D)``."""
        return self.backbone(x)

    def sample_mask(
        self, batch_size: int, device: torch.device | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(idx_keep, idx_mask)`` for a batch (see :func:`random_patch_mask`)."""
        return random_patch_mask(
            batch_size, self.num_patches, float(self.hparams.mask_ratio), self.num_prefix_tokens,
            device=device, generator=generator,
        )

    def predict_masked(
        self, images: torch.Tensor, idx_keep: torch.Tensor, idx_mask: torch.Tensor
    ) -> torch.Tensor:
        """Predicted pixels of the masked patches.

        Shape:
            images ``(B,3,H,W)``, idx_keep ``(B,K)``, idx_mask ``(B,M)`` -> ``(B, M, p*p*3)``.
        """
        x = self.backbone.encode(images, idx_keep=idx_keep)
        x = self.decoder_embed(x)
        b = x.shape[0]
        x_full = repeat_token(x.new_zeros(1, 1, x.shape[-1]), (b, self.sequence_length))
        x_full = set_at_index(x_full, idx_keep, x)
        x_dec = self.decoder(x_full, idx_mask=idx_mask)
        return self.decoder_pred(get_at_index(x_dec, idx_mask))

    def masked_target(self, images: torch.Tensor, idx_mask: torch.Tensor) -> torch.Tensor:
        """Raw pixels of the masked patches. Shape: ``(B,3,H,W) -> (B, M, p*p*3)``."""
        return get_at_index(patchify(images, self.patch_size), idx_mask - self.num_prefix_tokens)

    def reconstruction_loss(
        self,
        images: torch.Tensor,
        idx_keep: torch.Tensor | None = None,
        idx_mask: torch.Tensor | None = None,
        target_images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MAE loss for a batch; a mask is drawn (torch RNG) unless given.

        ``target_images`` (default: ``images``) are the pixels to reconstruct; tests use it
        to show that visible-patch pixels do not enter the loss.
        """
        if idx_keep is None or idx_mask is None:
            idx_keep, idx_mask = self.sample_mask(images.shape[0], device=images.device)
        pred = self.predict_masked(images, idx_keep, idx_mask)
        target = self.masked_target(images if target_images is None else target_images, idx_mask)
        return masked_reconstruction_loss(pred.float(), target.float(), norm_pix=bool(self.hparams.norm_pix_loss))

    @torch.no_grad()
    def reconstruct(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked, reconstruction)`` images for visualisation.

        ``masked`` has masked patches set to 0; ``reconstruction`` keeps visible patches and
        fills masked ones with the prediction (de-normalised with the true patch mean/std
        when ``norm_pix_loss``, as in MAE's demo).

        Shape:
            ``(B,3,H,W) -> ((B,3,H,W), (B,3,H,W))``.
        """
        from lightly.models.utils import unpatchify

        b = images.shape[0]
        idx_keep, idx_mask = self.sample_mask(b, device=images.device, generator=generator)
        pred = self.predict_masked(images, idx_keep, idx_mask).float()
        patches = patchify(images.float(), self.patch_size)
        target = get_at_index(patches, idx_mask - self.num_prefix_tokens)
        if self.hparams.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
            pred = pred * std + mean
        patch_idx = idx_mask - self.num_prefix_tokens
        masked = set_at_index(patches.clone(), patch_idx, torch.zeros_like(target))
        recon = set_at_index(patches.clone(), patch_idx, pred)
        return unpatchify(masked, self.patch_size), unpatchify(recon, self.patch_size)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        images, _ = batch  # labels never used
        loss = self.reconstruction_loss(images)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"MAECropMix: non-finite loss {loss.item()} at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}); lower the learning rate or "
                "check the inputs"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return {"loss": loss}

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """``val/loss``: the reconstruction loss of the validation images under a fixed mask
        per batch (a CPU generator seeded with the batch index), so epochs are compared on
        the same masks and the training RNG stream is not touched."""
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        idx_keep, idx_mask = self.sample_mask(images.shape[0], generator=torch.Generator().manual_seed(int(batch_idx)))
        loss = self.reconstruction_loss(images, idx_keep.to(images.device), idx_mask.to(images.device))
        self.log("val/loss", loss, batch_size=images.shape[0], sync_dist=True)
        return loss

    def setup(self, stage: str) -> None:
        """Refuse data whose image size is not the ViT's (clear error naming both values)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_size = getattr(dm, "image_size", None)
        vit_size = tuple(int(v) for v in self.backbone.vit.patch_embed.img_size)
        if isinstance(data_size, int) and (data_size, data_size) != vit_size:
            raise ValueError(
                f"MAECropMix img_size={vit_size[0] if vit_size[0] == vit_size[1] else vit_size} does not match "
                f"the data's image_size={data_size}; set model img_size to {data_size} (and a patch_size "
                "dividing it) or data image_size to the ViT's"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Non-finite weights are never saved (``checkpoints.check_finite_state``)."""
        from ssl_cropmix.checkpoints import check_finite_state

        check_finite_state(checkpoint.get("state_dict", {}), self.global_step, type(self).__name__)

    def on_train_start(self) -> None:
        log_lr_scaling(self)

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups as MAE's: no decay for 1-d parameters (norms) and biases, decay for
        everything else that is trained (including ``cls_token`` and ``mask_token``).
        Frozen parameters (the fixed position embeddings, the encoder's unused mask token)
        are left out."""
        return [g for g in param_groups_weight_decay(self, weight_decay) if g["params"]]

    def configure_optimizers(self) -> Any:
        effective, lr = scaled_lr("MAECropMix", self.trainer, self.hparams.base_lr, self.hparams.lr)
        self.effective_batch_size, self.scaled_lr = effective, lr
        opt = torch.optim.AdamW(
            self.parameter_groups(self.hparams.weight_decay), lr=lr, betas=tuple(self.hparams.betas)
        )
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total <= 0:
            return opt
        total = int(total)
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs > 0:
            warmup = int(round(total * self.hparams.warmup_epochs / max_epochs))
        else:
            warmup = 0
        warmup = min(warmup, total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, total, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
