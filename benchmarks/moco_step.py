"""Training-step time of ``MoCoCropMix`` vs. a minimal MoCo v2 written from lightly blocks.

Both models use the same backbone (``build_backbone``), the same projection head layout,
queue size, batch and input tensors, and plain SGD. One *step* is: momentum update, query
forward, key forward (no grad), InfoNCE against the queue, queue update, backward, SGD step.

- ``reference``: lightly only: ``update_momentum``, ``batch_shuffle``/``batch_unshuffle``,
  ``NTXentLoss(memory_bank_size=(K, dim))`` (the memory bank inside the loss).
- ``MoCoCropMix``: ``model.training_step`` + backward + SGD step, outside a Trainer (so
  Lightning's loop overhead, the same for any LightningModule, is not counted).

Methods are interleaved: each repeat times ``--steps`` steps of each, in alternating
order; the table shows the median / min per-step time and the ratio (median of the
per-repeat ratios, and min over min).

Usage:
    python benchmarks/moco_step.py                               # CPU: resnet18, batch 32, 32 px
    python benchmarks/moco_step.py --device cuda --backbone resnet50 --batch-size 256 \\
        --image-size 224 --queue-size 65536 --amp                # one GPU, the paper's sizes
"""

from __future__ import annotations

import argparse
import copy
import statistics
import warnings

import torch
from timing import interleaved_times
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import batch_shuffle, batch_unshuffle, deactivate_requires_grad, update_momentum
from torch import nn

from ssl_cropmix.methods.moco import MoCoCropMix
from ssl_cropmix.models.backbones import build_backbone


class ReferenceMoCo(nn.Module):
    """MoCo v2 as in lightly's examples, with the Asym-Siam head layout."""

    def __init__(self, backbone: str, small_image: bool, hidden: int, out: int, queue: int, m: float) -> None:
        super().__init__()
        self.backbone, d = build_backbone(backbone, small_image=small_image)
        self.head = nn.Sequential(
            nn.Linear(d, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            MoCoProjectionHead(hidden, hidden, out, num_layers=2, batch_norm=False),
        )
        self.backbone_m = copy.deepcopy(self.backbone)
        self.head_m = copy.deepcopy(self.head)
        deactivate_requires_grad(self.backbone_m)
        deactivate_requires_grad(self.head_m)
        self.criterion = NTXentLoss(temperature=0.2, memory_bank_size=(queue, out))
        self.m = m

    def step(self, x_q: torch.Tensor, x_k: torch.Tensor) -> torch.Tensor:
        update_momentum(self.backbone, self.backbone_m, self.m)
        update_momentum(self.head, self.head_m, self.m)
        q = self.head(self.backbone(x_q))
        with torch.no_grad():
            xs, shuffle = batch_shuffle(x_k)
            k = batch_unshuffle(self.head_m(self.backbone_m(xs)), shuffle)
        return self.criterion(q, k)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--small-image", action=argparse.BooleanOptionalAction, default=None,
                   help="small-image stem (default: on when image size <= 64)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--queue-size", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--steps", type=int, default=5, help="timed steps per method per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (cuda)")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore", message=".*self.log.*")
    small = a.image_size <= 64 if a.small_image is None else a.small_image
    dev = torch.device(a.device)
    torch.manual_seed(0)
    ref = ReferenceMoCo(a.backbone, small, a.hidden, 128, a.queue_size, 0.999).to(dev)
    ours = MoCoCropMix(backbone=a.backbone, small_image=small, proj_hidden_dim=a.hidden, queue_size=a.queue_size,
                       cosine_lr=False, lr=0.03).to(dev)
    ours.load_state_dict({**ours.state_dict(), **{  # same initial weights
        k.replace("head", "projection_head", 1) if k.startswith("head") else k: v
        for k, v in ref.state_dict().items() if k.startswith(("backbone.", "head."))}}, strict=False)
    sgd = dict(lr=0.03, momentum=0.9, weight_decay=1e-4)
    opt_ref = torch.optim.SGD([q for q in ref.parameters() if q.requires_grad], **sgd)
    opt_ours = torch.optim.SGD([q for q in ours.parameters() if q.requires_grad], **sgd)
    g = torch.Generator().manual_seed(0)
    x_q = torch.rand(a.batch_size, 3, a.image_size, a.image_size, generator=g).to(dev)
    x_k = torch.rand(a.batch_size, 3, a.image_size, a.image_size, generator=g).to(dev)
    y = torch.zeros(a.batch_size, dtype=torch.long, device=dev)
    ref.train()
    ours.train()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def run_ref() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.amp):
            loss = ref.step(x_q, x_k)
        opt_ref.zero_grad(set_to_none=True)
        loss.backward()
        opt_ref.step()

    def run_ours() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.amp):
            loss = ours.training_step(((x_q, x_k), y), 0)["loss"]
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    methods = {"reference (lightly blocks)": run_ref, "MoCoCropMix": run_ours}
    times = interleaved_times(methods, a.steps, a.repeats, a.warmup, sync)
    base = "reference (lightly blocks)"
    ratios = [o / b for o, b in zip(times["MoCoCropMix"], times[base])]
    print(f"device={dev} backbone={a.backbone} small_image={small} batch={a.batch_size} "
          f"size={a.image_size} queue={a.queue_size} amp={a.amp} steps={a.steps} repeats={a.repeats}\n")
    print("| method | median ms/step | min ms/step | ratio (median) | ratio (min/min) |")
    print("|---|---|---|---|---|")
    for name, ts in times.items():
        med, mn = statistics.median(ts) * 1e3, min(ts) * 1e3
        if name == base:
            print(f"| {name} | {med:.1f} | {mn:.1f} | 1.00 | 1.00 |")
        else:
            print(f"| {name} | {med:.1f} | {mn:.1f} | {statistics.median(ratios):.3f} | "
                  f"{min(ts) / min(times[base]):.3f} |")


if __name__ == "__main__":
    main()
