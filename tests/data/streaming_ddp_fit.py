"""One rank of the 2-process DDP fit of ``test_streaming.py`` (launched with torchrun's
environment variables): MoCo on the shards for 2 epochs; writes the labels (= sample ids)
this rank saw per epoch to ``argv[2]``."""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import pytorch_lightning as pl
from cli_fixtures import TinyTrunk
from pytorch_lightning.strategies import DDPStrategy

from ssl_cropmix.data.datamodule import CropMixDataModule
from ssl_cropmix.data.recipes import MoCoViews
from ssl_cropmix.data.sources import ShardsSource
from ssl_cropmix.methods.moco import MoCoCropMix


class Seen(pl.Callback):
    def __init__(self) -> None:
        self.epochs: list[list[int]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append([])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.epochs[-1].extend(batch[1].tolist())


def main(out: str, seen_file: str) -> None:
    pl.seed_everything(0, workers=True)
    dm = CropMixDataModule(ShardsSource(out, val_split=None), MoCoViews("cropmix"), image_size=16, batch_size=2,
                           num_workers=0, persistent_workers=False)
    seen = Seen()
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=60)),
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[seen], limit_val_batches=0,
    )
    model = MoCoCropMix(backbone=TinyTrunk(), proj_hidden_dim=16, out_dim=8, queue_size=16, lr=0.05)
    trainer.fit(model, datamodule=dm)
    with open(seen_file, "w") as f:
        json.dump(seen.epochs, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
