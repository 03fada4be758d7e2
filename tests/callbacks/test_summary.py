"""RunSummary: the README's main job (configs/smoke/moco_demo_cpu.yaml through the CLI)
ends with a summary naming the run directory, checkpoints, probe / kNN values, evaluation
results and wall time."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


def test_summary_lists_evaluation_results(tmp_path):
    import pytorch_lightning as pl

    from eval_fixtures import FakeProvider, UserModule
    from ssl_cropmix.callbacks import KNNMonitor, LinearProbe, RunSummary

    provider = FakeProvider()
    summary = RunSummary()
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=2, default_root_dir=tmp_path, logger=False,
        callbacks=[LinearProbe(optimizer="sgd", epochs=1, batch_size=32, cached_features=True, provider=provider),
                   KNNMonitor(k=5, provider=provider), summary],
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(UserModule(), train_dataloaders=provider.labeled_train_dataloader())
    text = "\n".join(summary.lines)
    assert re.search(r"eval/linear: top-1 [0-9.]+%, top-5 100.00% \(after epoch 1", text)
    assert re.search(r"knn_top1: [0-9.]+", text)
    ckpt = Path(trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path)
    assert str(ckpt) in text and ckpt.is_file()
    assert f"run directory:   {tmp_path}" in text



@pytest.mark.parametrize("num_workers", [0, 2])
def test_unreadable_class_warns_at_epoch_end_and_in_the_summary(num_workers, tmp_path, capsys):
    """Issue 22, case 4: with on_bad_image='skip' a class whose images were all unreadable used to
    end the epoch without a word (its samples silently replaced; only dm.bad_files knew). The
    flags are set inside the loader workers (num_workers=2) and read in the main process."""
    import pytorch_lightning as pl
    import torch
    from PIL import Image

    from ssl_cropmix.callbacks import RunSummary
    from ssl_cropmix.data.datamodule import CropMixDataModule
    from ssl_cropmix.data.recipes import SupervisedViews
    from ssl_cropmix.data.sources import ImageFolderSource
    from ssl_cropmix.data.datasets import UnreadableDataWarning

    for c in ("a", "b", "c"):
        (tmp_path / "data" / "train" / c).mkdir(parents=True)
        for i in range(4):
            p = tmp_path / "data" / "train" / c / f"{i}.png"
            if c == "c":
                p.write_bytes(b"not an image")
            else:
                Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(p)

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, _):
            x, _ = batch
            return (self.w * x.mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = CropMixDataModule(ImageFolderSource(str(tmp_path / "data"), val_split=None), SupervisedViews("plain"),
                           image_size=8, batch_size=4, num_workers=num_workers, persistent_workers=False)
    summary = RunSummary()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[summary],
                         default_root_dir=tmp_path)
    with pytest.warns(UnreadableDataWarning) as rec:
        trainer.fit(Tiny(), datamodule=dm)
    msgs = [str(w.message) for w in rec if w.category is UnreadableDataWarning]
    assert msgs == [f"epoch 0: {str(tmp_path / 'data' / 'train')!r}: class 'c': all 4 images unreadable; their "
                    "samples were replaced by other images of the split (on_bad_image='skip'), which biases the "
                    "run: fix or remove the files",
                    f"epoch 0: {str(tmp_path / 'data' / 'train')!r}: 4 of 12 images (33.3 %) unreadable, above "
                    "the 1 % limit (datasets.MAX_UNREADABLE_SHARE); their samples were replaced by other images "
                    "of the split (on_bad_image='skip'), which biases the run: fix or remove the files"]
    assert f"unreadable data: {str(tmp_path / 'data' / 'train')!r}: class 'c': all 4 images unreadable (epoch 0)" \
        in summary.lines
