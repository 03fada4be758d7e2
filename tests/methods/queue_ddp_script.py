"""MoCo's queue under 2-process gloo DDP, kept out of DDP's buffer broadcast.

``python queue_ddp_script.py OUT_DIR`` fits 3 steps, then resumes from the checkpoint for 3
more (Lightning's fork launcher: one interpreter start). Each rank's queue is re-drawn differently
before the fit starts (a callback's ``setup``), so the ranks start from different random queues: only the
module's own start-up broadcast makes them equal, DDP's start-up sync and per-step
``broadcast_buffers`` skip the queue. Every rank writes ``OUT_DIR/fit<f>_rank<r>.json``:
its queue after every step and the buffer names DDP broadcasts.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ssl_cropmix.methods.moco import MoCoCropMix


class Pairs(Dataset):
    def __len__(self) -> int:
        return 48

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return (torch.rand(3, 8, 8, generator=g), torch.rand(3, 8, 8, generator=g)), 0


class Record(pl.Callback):
    def __init__(self, out: Path, fit: int) -> None:
        self.out, self.fit, self.queues = out, fit, []

    def setup(self, trainer: pl.Trainer, pl_module: MoCoCropMix, stage: str) -> None:
        g = torch.Generator().manual_seed(100 + trainer.global_rank)  # each rank its own random queue
        pl_module.queue.queue.copy_(torch.randn(pl_module.queue.queue.shape, generator=g))

    def on_train_start(self, trainer: pl.Trainer, pl_module: MoCoCropMix) -> None:
        self.queues.append(pl_module.queue.queue.tolist())  # after the module's broadcast (on_fit_start)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: MoCoCropMix, outputs, batch, batch_idx: int) -> None:
        self.queues.append(pl_module.queue.queue.tolist())

    def on_train_end(self, trainer: pl.Trainer, pl_module: MoCoCropMix) -> None:
        ddp = trainer.strategy.model
        record = {"queues": self.queues, "ptr": int(pl_module.queue.ptr), "broadcast": sorted(ddp.named_module_buffers)}
        (self.out / f"fit{self.fit}_rank{trainer.global_rank}.json").write_text(json.dumps(record))


def fit(out: Path, n: int, ckpt: str | None) -> None:
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, max_epochs=n, limit_train_batches=3, callbacks=[Record(out, n)],
        strategy=DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=60), start_method="fork"),
        default_root_dir=out, logger=False, enable_progress_bar=False, enable_model_summary=False,
    )

    trainer.fit(_Module(), DataLoader(Pairs(), batch_size=4, drop_last=True), ckpt_path=ckpt)


class _Module(MoCoCropMix):
    def __init__(self) -> None:
        torch.manual_seed(0)
        trunk = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        super().__init__(backbone=trunk, proj_hidden_dim=16, out_dim=8, queue_size=20, lr=0.1)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    fit(out, 1, None)
    fit(out, 2, str(next(out.glob("**/*.ckpt"))))
