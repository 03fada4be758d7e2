"""Training-step time of ``MAECropMix`` vs. a minimal MAE written from lightly blocks.

Both use the same timm ViT (same name / size / patch / depth), decoder size, mask ratio,
batch and input tensors, and AdamW. One *step* is: random mask, encoder on visible
patches, decoder with mask tokens, masked-patch MSE with norm_pix target, backward, AdamW.

- ``reference``: lightly's MAE example (``examples/pytorch/mae.py``) with the non-deprecated
  decoder: ``MaskedVisionTransformerTIMM``, ``MaskedVisionTransformerDecoderTIMM``,
  ``random_token_mask``, ``patchify``, a plain ``nn.MSELoss`` on normalised patches.
- ``MAECropMix``: ``model.training_step`` + backward + AdamW step, outside a Trainer.

Methods are interleaved: each repeat times ``--steps`` steps of each, in alternating order;
the table shows the median / min per-step time and the ratio (median of per-repeat ratios,
and min over min). Target: ratio <= 1.05.

Usage:
    python benchmarks/mae_step.py                   # CPU: ViT-Tiny, 2 blocks, 32 px, patch 4, batch 32
    python benchmarks/mae_step.py --device cuda --model vit_base_patch16_224 \\
        --decoder-dim 512 --decoder-depth 8 --decoder-heads 16 --batch-size 128 --amp  # ViT-B/16, 224 px
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import interleaved_times
from lightly.models import utils
from lightly.models.modules import MaskedVisionTransformerDecoderTIMM, MaskedVisionTransformerTIMM
from torch import nn

from ssl_cropmix.methods.mae import MAECropMix
from ssl_cropmix.models.vit import build_vit


class ReferenceMAE(nn.Module):
    """lightly's MAE example, decoder via ``MaskedVisionTransformerDecoderTIMM``."""

    def __init__(self, vit: nn.Module, decoder_dim: int, decoder_depth: int, decoder_heads: int, ratio: float):
        super().__init__()
        self.mask_ratio = ratio
        self.patch_size = vit.patch_embed.patch_size[0]
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        self.sequence_length = self.backbone.sequence_length
        self.decoder_embed = nn.Linear(vit.embed_dim, decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=vit.patch_embed.num_patches, embed_dim=decoder_dim, depth=decoder_depth,
            num_heads=decoder_heads, num_prefix_tokens=vit.num_prefix_tokens,
        )
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * 3)
        self.criterion = nn.MSELoss()

    def step(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        idx_keep, idx_mask = utils.random_token_mask((b, self.sequence_length), self.mask_ratio, device=images.device)
        x = self.decoder_embed(self.backbone.encode(images, idx_keep=idx_keep))
        x_full = utils.repeat_token(x.new_zeros(1, 1, x.shape[-1]), (b, self.sequence_length))
        x_full = utils.set_at_index(x_full, idx_keep, x)
        pred = self.decoder_pred(utils.get_at_index(self.decoder(x_full, idx_mask=idx_mask), idx_mask))
        target = utils.get_at_index(utils.patchify(images, self.patch_size), idx_mask - 1)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        return self.criterion(pred.float(), ((target - mean) / (var + 1e-6) ** 0.5).float())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="vit_tiny_patch16_224")
    p.add_argument("--image-size", type=int, default=None, help="default: 32 for the tiny default model, else the model's")
    p.add_argument("--patch-size", type=int, default=None, help="default: 4 for the tiny default model, else the model's")
    p.add_argument("--depth", type=int, default=None, help="encoder blocks; default: 2 for the tiny default model")
    p.add_argument("--decoder-dim", type=int, default=128)
    p.add_argument("--decoder-depth", type=int, default=2)
    p.add_argument("--decoder-heads", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="steps per repeat and method")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    a = p.parse_args()
    dev = torch.device(a.device)
    if a.model == "vit_tiny_patch16_224":  # tiny CPU default
        a.image_size, a.patch_size = a.image_size or 32, a.patch_size or 4
        a.depth = a.depth or 2
    torch.manual_seed(0)
    vit_kwargs = {"depth": a.depth} if a.depth else {}
    ref = ReferenceMAE(
        build_vit(a.model, img_size=a.image_size, patch_size=a.patch_size, vit_kwargs=vit_kwargs),
        a.decoder_dim, a.decoder_depth, a.decoder_heads, 0.75,
    ).to(dev)
    ours = MAECropMix(a.model, img_size=a.image_size, patch_size=a.patch_size, vit_kwargs=vit_kwargs,
                      decoder_dim=a.decoder_dim, decoder_depth=a.decoder_depth, decoder_num_heads=a.decoder_heads).to(dev)
    ours.log = lambda *args, **kw: None  # outside a Trainer
    opt_ref = torch.optim.AdamW([q for q in ref.parameters() if q.requires_grad], lr=1e-4, betas=(0.9, 0.95))
    opt_ours = torch.optim.AdamW(ours.parameter_groups(0.05), lr=1e-4, betas=(0.9, 0.95))
    size = ours.backbone.vit.patch_embed.img_size[0]
    x = torch.rand(a.batch_size, 3, size, size, device=dev)
    labels = torch.zeros(a.batch_size, dtype=torch.long, device=dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.amp)

    def run_ref() -> None:
        with autocast():
            loss = ref.step(x)
        opt_ref.zero_grad(set_to_none=True)
        loss.backward()
        opt_ref.step()

    def run_ours() -> None:
        with autocast():
            loss = ours.training_step((x, labels), 0)["loss"]
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    runs = {"reference (lightly blocks)": run_ref, "MAECropMix": run_ours}
    times = {k: [t * 1000 for t in v] for k, v in interleaved_times(
        runs, a.steps, a.repeats, a.warmup, sync).items()}
    print(f"device={dev} model={a.model} img={a.image_size} patch={a.patch_size} depth={a.depth} "
          f"decoder={a.decoder_dim}x{a.decoder_depth} batch={a.batch_size} amp={a.amp} "
          f"steps={a.steps} repeats={a.repeats}")
    print("| method | median ms/step | min ms/step | ratio (median) | ratio (min/min) |")
    print("|---|---|---|---|---|")
    base = times["reference (lightly blocks)"]
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, base)]
        print(f"| {name} | {statistics.median(ts):.1f} | {min(ts):.1f} | {statistics.median(ratios):.3f} | "
              f"{min(ts) / min(base):.3f} |")


if __name__ == "__main__":
    main()
