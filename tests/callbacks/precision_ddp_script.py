"""bf16-true MoCo on the demo set with augment_on="device", kNN monitor and linear probe, as a
2-process gloo DDP fit. ``python precision_ddp_script.py DEMO_DIR OUT_DIR`` (Lightning's
fork launcher runs both ranks in forked children: one interpreter start); each rank writes
``OUT_DIR/rank<r>.json`` at the end of its fit, after the probe."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy
from torch import nn

from ssl_cropmix.callbacks import KNNMonitor, LinearProbe
from ssl_cropmix.data.datamodule import CropMixDataModule
from ssl_cropmix.data.recipes import MoCoViews
from ssl_cropmix.data.sources import DemoSource
from ssl_cropmix.methods.moco import MoCoCropMix


class Record(pl.Callback):
    """The dtypes of the training views; at the end (after the probe), what this rank saw."""

    def __init__(self, out: Path, knn: KNNMonitor, probe: LinearProbe) -> None:
        self.out, self.knn, self.probe, self.seen = out, knn, probe, set()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        (q, k), _ = batch
        self.seen |= {str(q.dtype), str(k.dtype)}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = {"rank": trainer.global_rank, "world": trainer.world_size, "views": sorted(self.seen),
                  "backbone": str(next(pl_module.backbone.parameters()).dtype), "knn": self.knn.history,
                  "k": self.knn.k_used, "loss": float(trainer.callback_metrics["train/loss"]),
                  "probe": [(r.top1, r.hardware["precision"], r.hardware["world_size"]) for r in self.probe.results]}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def main(demo_dir: str, out: Path) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    dm = CropMixDataModule(DemoSource(), MoCoViews(augment_on="device"), image_size=32, batch_size=8, num_workers=0,
                           persistent_workers=False)
    trunk = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    module = MoCoCropMix(backbone=trunk, proj_hidden_dim=16, out_dim=8, queue_size=64)
    knn, probe = KNNMonitor(every_n_epochs=1), LinearProbe(optimizer="sgd", base_lr=0.5, epochs=1, batch_size=16)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=60), start_method="fork"),
        precision="bf16-true", max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[knn, probe, Record(out, knn, probe)],
        default_root_dir=out, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
