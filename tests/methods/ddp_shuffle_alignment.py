"""Standalone 2-process (gloo, CPU) check that shuffle-BN keeps every key matched to its query.

Run by ``test_moco.py::test_shuffle_bn_keeps_keys_aligned_across_two_processes`` as
``python ddp_shuffle_alignment.py <init_file>``; exits 0 when every check passes.

The encoders are per-sample maps (pool + Linear, no batch norm), so a key depends on its
own image only and can be recomputed without any shuffle: after ``batch_shuffle`` sends the
images to random processes and ``batch_unshuffle`` brings the keys back, key ``j`` of each
process must equal the key of that process's image ``j``. A missing unshuffle leaves the
keys in the shuffled order (the images of a random mix of both processes).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD, BATCH, STEPS = 2, 8, 3


def _worker(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from ssl_cropmix.methods.moco import MoCoCropMix

        torch.manual_seed(0)  # same initial weights on both ranks (as DDP broadcasts them)
        backbone = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(3 * 4 * 4, 16))
        model = MoCoCropMix(backbone=backbone, proj_hidden_dim=16, out_dim=8, queue_size=64, lr=0.1)
        model.projection_head = nn.Linear(16, 8)
        model.projection_head_momentum = nn.Linear(16, 8)
        model.projection_head_momentum.load_state_dict(model.projection_head.state_dict())
        with torch.no_grad():  # make the key encoder differ from the query encoder
            for p in model.backbone_momentum.parameters():
                p.add_(0.05 * torch.randn_like(p))
        model._shuffle_distributed = True  # what setup() sets for bn_mode="shuffle", world 2
        g = torch.Generator().manual_seed(100 + rank)  # different images on each rank
        shuffled_somewhere = False
        for step in range(STEPS):
            xq, xk = torch.rand(2, BATCH, 3, 8, 8, generator=g)
            keys = model.key_embedding(xk)
            with torch.no_grad():
                ref = nn.functional.normalize(model.projection_head_momentum(model.backbone_momentum(xk)), dim=1)
            assert keys.shape == ref.shape == (BATCH, 8)
            assert torch.allclose(keys, ref, atol=1e-6), f"rank {rank} step {step}: keys not aligned with their images"
            # through training_step (momentum update first, then the keys of the updated encoder)
            out = model.training_step(((xq, xk), torch.zeros(BATCH)), step)
            with torch.no_grad():
                ref = nn.functional.normalize(model.projection_head_momentum(model.backbone_momentum(xk)), dim=1)
            assert torch.allclose(out["keys"], ref, atol=1e-6), f"rank {rank} step {step}: training_step keys misaligned"
            # the queue holds both ranks' aligned keys in rank order
            gathered = [torch.empty_like(ref) for _ in range(WORLD)]
            dist.all_gather(gathered, ref)
            ptr = int(model.queue.ptr)
            assert torch.allclose(model.queue.queue[ptr - WORLD * BATCH : ptr], torch.cat(gathered), atol=1e-6)
            # the images did travel: the shuffled batch each rank encoded is not its own batch
            torch.manual_seed(1000 + step)  # same draw on both ranks; rank 0's is broadcast
            from lightly.models.utils import batch_shuffle

            moved, _ = batch_shuffle(xk, distributed=True)
            shuffled_somewhere |= not torch.equal(moved, xk)
        flag = torch.tensor([float(shuffled_somewhere)])
        dist.all_reduce(flag)
        assert flag.item() > 0, "batch_shuffle never moved an image: the test would not detect misalignment"
    except BaseException:
        dist.destroy_process_group()
        raise
    # Every check passed on this rank: leave together, then skip the interpreter's teardown.
    # gloo's worker threads can abort a process in that teardown ("terminate called without an
    # active exception", SIGABRT; seen once on a loaded 2-core CI machine after all checks had
    # passed), which says nothing about the alignment this script checks.
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank} aligned", flush=True)
    sys.stderr.flush()
    os._exit(0)


def main() -> int:
    init_file = sys.argv[1]
    mp.spawn(_worker, args=(init_file,), nprocs=WORLD, join=True)
    print("aligned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
