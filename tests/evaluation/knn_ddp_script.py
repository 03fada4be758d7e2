"""kNN of one fixed module on fixed data: alone, then as 2 forked gloo ranks.

``python knn_ddp_script.py PORT OUT_DIR`` writes ``single.json``, ``r0.json``, ``r1.json``
(each ``{"acc": ..., "tiny": ...}``; ``tiny``: a one-image bank, so rank 1's bank shard is
empty). One interpreter start; the ranks are forked after the single run.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

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


def knn_acc(n_bank: int = 101, k: int = 7) -> float:
    torch.manual_seed(0)
    holder = nn.Module()
    holder.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    knn = KNNMonitor(k=k, train_dataloader=DataLoader(data(n_bank, 1), batch_size=10),
                     val_dataloader=DataLoader(data(37, 2), batch_size=6), num_classes=5)
    return knn.evaluate(holder)


def rank_main(rank: int, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=90))
    acc = knn_acc()
    tiny = knn_acc(n_bank=1, k=1)  # rank 1's bank shard is empty: it still takes part in the gathers
    (out / f"r{rank}.json").write_text(json.dumps({"acc": acc, "tiny": tiny}))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    port, out = int(sys.argv[1]), Path(sys.argv[2])
    (out / "single.json").write_text(json.dumps({"acc": knn_acc(), "tiny": knn_acc(n_bank=1, k=1)}))
    torch.multiprocessing.start_processes(rank_main, args=(port, out), nprocs=2, start_method="fork")
