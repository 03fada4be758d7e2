"""A 2-process gloo DDP fit with periodic + end-of-fit evaluation; every rank writes what it saw.

Run as ``python ddp_eval_script.py OUT_DIR`` (Lightning's popen launcher re-executes this file
for rank 1). Writes ``OUT_DIR/rank<r>.json``.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "callbacks"))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.strategies import DDPStrategy  # noqa: E402

from eval_fixtures import FakeProvider, UserModule  # noqa: E402
from ssl_cropmix.callbacks import KNNMonitor, LinearProbe, SemiSupervisedFineTune  # noqa: E402


def main(out: Path) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # two processes on a small shared machine: no oversubscription
    provider = FakeProvider(n_per_class=25, num_classes=4, batch_size=16)  # 100 train, 32 val (odd per-rank splits)
    probe_periodic = LinearProbe(optimizer="sgd", base_lr=2.0, epochs=3, batch_size=32, cached_features=True,
                                 every_n_epochs=1, provider=provider, key="linear_cached")
    probe_aug = LinearProbe(optimizer="sgd", base_lr=2.0, epochs=1, batch_size=32, cached_features=False, provider=provider)
    ft = SemiSupervisedFineTune("10pct", label_fraction=0.5, epochs=2, batch_size=16, provider=provider)
    knn = KNNMonitor(k=5, every_n_epochs=1, provider=provider)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=90)),
        max_epochs=2, limit_train_batches=2, callbacks=[probe_periodic, probe_aug, ft, knn], default_root_dir=out,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    t0 = time.perf_counter()
    trainer.fit(UserModule(), train_dataloaders=provider.labeled_train_dataloader())
    record = {
        "rank": trainer.global_rank,
        "seconds": time.perf_counter() - t0,
        "pretrain": {"accelerator": type(trainer.accelerator).__name__, "strategy": type(trainer.strategy).__name__,
                     "world_size": trainer.world_size, "precision": str(trainer.precision)},
        "results": [r.as_dict() for cb in (probe_periodic, probe_aug, ft) for r in cb.results],
        "knn": knn.history,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
