"""kNN of one fixed module on fixed data, as rank RANK of WORLD (gloo) or alone (WORLD=1).

``python knn_ddp_script.py RANK WORLD PORT OUT`` writes ``OUT`` = {"acc": ..., "bank": N}.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ssl_cropmix.callbacks.knn import KNNMonitor


def data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 5, (n,), generator=g)
    centers = torch.randn(5, 3, generator=torch.Generator().manual_seed(99))
    x = centers[y][:, :, None, None] + 1.5 * torch.randn(n, 3, 4, 4, generator=g)  # overlapping classes
    return TensorDataset(x, y)


def main(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)  # two processes on a small shared machine: no oversubscription
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=90))
    torch.manual_seed(0)
    holder = nn.Module()
    holder.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    knn = KNNMonitor(k=7, train_dataloader=DataLoader(data(101, 1), batch_size=10),
                     val_dataloader=DataLoader(data(37, 2), batch_size=6), num_classes=5)
    acc = knn.evaluate(holder)
    with open(out, "w") as f:
        json.dump({"acc": acc}, f)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
