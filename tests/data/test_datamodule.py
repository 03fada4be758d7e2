"""CropMixDataModule: batches, provider protocol, errors, label fractions, seeding, bad images."""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_lightning import seed_everything

from ssl_cropmix.data.datamodule import BadImageCounter, CropMixDataModule
from ssl_cropmix.data.datasets import BadImageError, BadImageWarning
from ssl_cropmix.data.recipes import MAEViews, MoCoViews
from ssl_cropmix.data.sources import CIFAR10Source, CIFAR100Source, ImageFolderSource
from data_fixtures import make_tree, write_bad_kinds


_SOURCE_ARGS = ("train_split", "val_split", "on_bad_image", "max_image_pixels")


def _dm(root, views=None, **kw):
    """An ImageFolderSource at ``root`` (its own arguments picked out of ``kw``) + ``views``."""
    src = {k: kw.pop(k) for k in _SOURCE_ARGS if k in kw}
    base = dict(image_size=32, batch_size=4, num_workers=0)
    base.update(kw)
    return CropMixDataModule(ImageFolderSource(str(root), **src), views, **base)


@pytest.fixture
def splits(tmp_path):
    make_tree(tmp_path / "train")
    make_tree(tmp_path / "val", per_class=(2, 2, 2))
    return tmp_path


def test_batches_and_provider_protocol(splits):
    dm = _dm(splits)
    assert dm.num_classes == 3 and CropMixDataModule.infer_num_classes(source=ImageFolderSource(str(splits))) == 3
    (q, k), y = next(iter(dm.train_dataloader()))
    assert q.shape == k.shape == (4, 3, 32, 32) and q.dtype == torch.float32 and y.dtype == torch.int64
    assert len(dm.train_dataloader()) == 15 // 4  # drop_last for pretraining
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 0, 1, 1]
    lt = dm.labeled_train_dataloader(batch_size=5, shuffle=False)
    assert sum(len(b[1]) for b in lt) == 15  # no drop_last, all labels
    ys = torch.cat([b[1] for b in dm.labeled_train_dataloader(label_fraction=0.5, shuffle=False)])
    assert Counter(ys.tolist()) == {0: 3, 1: 3, 2: 2}  # round-half-up of 3, 2.5, 2
    plain = torch.cat([b[0] for b in dm.labeled_train_dataloader(augment=False, shuffle=False)])
    again = torch.cat([b[0] for b in dm.labeled_train_dataloader(augment=False, shuffle=False)])
    assert torch.equal(plain, again)  # augment=False is deterministic
    xv, yv = next(iter(dm.labeled_val_dataloader(batch_size=6)))
    assert xv.shape == (6, 3, 32, 32) and yv.tolist() == [0, 0, 1, 1, 2, 2]
    x, y = next(iter(_dm(splits, MAEViews("cropmix_mixup")).train_dataloader()))
    assert x.shape == (4, 3, 32, 32)


def test_label_fraction_and_subset_file_on_train(splits, tmp_path):
    dm = _dm(splits, label_fraction=0.25, fraction_seed=1)
    ds = dm.train_dataset()
    assert Counter(ds.targets) == {0: 2, 1: 1, 2: 1}  # 1.5 -> 2, 1.25 -> 1, 1.0 -> 1
    assert ds.indices == _dm(splits, label_fraction=0.25, fraction_seed=1).train_dataset().indices
    lst = tmp_path / "1percent.txt"
    lst.write_text("cat_0.jpg\ndog_3.jpg\n\nfox_1.jpg\n")
    ds = _dm(splits, subset_file=str(lst), batch_size=2).train_dataset()
    assert sorted(Path(ds.source.samples[i][0]).name for i in ds.indices) == ["cat_0.jpg", "dog_3.jpg", "fox_1.jpg"]
    lst.write_text("cat_0.jpg\ndog_3.jpg\n")
    with pytest.raises(ValueError, match="zero images after sub-setting .*fox"):
        _dm(splits, subset_file=str(lst)).train_dataset()
    with pytest.raises(ValueError, match="larger than the training set"):
        _dm(splits, label_fraction=0.1, batch_size=8).train_dataloader()


def test_errors_say_what_is_missing_and_where(splits, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"split 'test' not found.*splits found in .*: train, val\); pass val_split="):
        _dm(splits, val_split="test").val_dataloader()
    with pytest.raises(FileNotFoundError, match="root .* does not exist"):
        _dm(tmp_path / "nowhere").train_dataloader()
    # root set to the train split itself: its subfolders are classes, and the error says so
    # (it used to advise train_split=<a class folder>)
    with pytest.raises(FileNotFoundError, match=r"look like class folders: .* is a split itself; set root to the "
                                                r"folder that holds train/ \(here '" + re.escape(str(splits)) + "'"):
        _dm(splits / "train").train_dataloader()
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no class sub-directories"):
        _dm(tmp_path / "empty").train_dataloader()
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*download=True.*ImageFolderSource"):
        CropMixDataModule(CIFAR10Source(str(tmp_path)), num_workers=0).train_dataloader()
    assert CropMixDataModule.infer_num_classes(source=CIFAR100Source()) == 100
    assert CropMixDataModule.infer_num_classes(
        source={"class_path": "ssl_cropmix.data.sources.CIFAR100Source", "init_args": {}}) == 100
    with pytest.raises(ValueError, match=r"label_fraction must be in \(0, 1\] or None, got 1.5"):
        _dm(splits, label_fraction=1.5)
    with pytest.raises(ValueError, match="query must be one of .* got 'mix'"):
        MoCoViews(query="mix")
    with pytest.raises(TypeError, match="source must be a ssl_cropmix.data.sources.Source"):
        CropMixDataModule(str(splits))  # the flat arguments of ssl_cropmix < 0.2 are gone
    with pytest.raises(TypeError, match="views must be a ssl_cropmix.data.recipes.ViewRecipe"):
        CropMixDataModule(ImageFolderSource(str(splits)), "moco")


def test_cifar_archive_and_folder(cifar10_root):
    archive = cifar10_root  # the extracted folder works; so does the shared archive itself
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    for d in filter(Path.exists, [archive, shared / "cifar10-jpeg.tar.gz", shared]):
        dm = _dm(d, val_split="test")
        assert dm.num_classes == 10 and dm.source.base() == cifar10_root
    x, y = next(iter(dm.labeled_val_dataloader(batch_size=8)))
    assert x.shape == (8, 3, 32, 32) and len(dm.reader("test")) == 10000


def _epochs(dm, n=2):
    loader = dm.train_dataloader()
    return [[q.clone() for (q, _), _ in loader] for _ in range(n)]


def test_worker_seeding_reproducible_and_distinct(tmp_path):
    """Identical images: any difference between batches comes from the RNG alone."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    (tmp_path / "train" / "a").mkdir(parents=True)
    for i in range(8):
        img.save(tmp_path / "train" / "a" / f"a_{i}.png")
    kw = dict(batch_size=2, num_workers=2, persistent_workers=False, views=MoCoViews("cropmix"))
    seed_everything(5, workers=True)
    run1 = _epochs(_dm(tmp_path, **kw))
    seed_everything(5, workers=True)
    run2 = _epochs(_dm(tmp_path, **kw))
    assert all(torch.equal(a, b) for e1, e2 in zip(run1, run2) for a, b in zip(e1, e2))
    crops = [c for epoch in run1 for batch in epoch for c in batch]  # 2 epochs x 8 samples
    assert len(crops) == 16
    for i in range(16):  # batches 0/2 come from worker 0, 1/3 from worker 1; epochs differ
        for j in range(i + 1, 16):
            assert not torch.equal(crops[i], crops[j]), (i, j)


def test_bad_images_in_workers_are_counted_and_raise_mode(tmp_path):
    make_tree(tmp_path / "train", classes=("clean",), per_class=(5,))
    write_bad_kinds(tmp_path / "train" / "odd")
    dm = _dm(tmp_path, MoCoViews("plain"), batch_size=3, num_workers=2, persistent_workers=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)  # worker processes inherit this
        n = sum(len(y) for _, y in dm.train_dataloader())
    assert n == 15 and dm.bad_image_count == 3  # counted in workers, read in the main process
    assert sorted(Path(f).name for f in dm.bad_files) == ["corrupt.png", "text.jpg", "truncated.jpg"]
    dm = _dm(tmp_path, MoCoViews("plain"), batch_size=15, on_bad_image="raise")
    with pytest.raises(BadImageError, match="cannot read image .*(corrupt.png|text.jpg|truncated.jpg)"):
        next(iter(dm.train_dataloader()))


def test_bad_image_counter_logs_each_epoch(tmp_path):
    import pytorch_lightning as pl

    make_tree(tmp_path / "train", classes=("clean",), per_class=(5,))
    write_bad_kinds(tmp_path / "train" / "odd")

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, _):
            (q, k), y = batch
            return (self.w * q.mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    counter = BadImageCounter()
    trainer = pl.Trainer(
        max_epochs=2, callbacks=[counter], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )
    dm = _dm(tmp_path, MoCoViews("plain"), batch_size=5, val_split=None)
    assert dm.val_dataloader() == []
    with pytest.warns(BadImageWarning):
        trainer.fit(Tiny(), datamodule=dm)
    assert counter.history == [3, 3]
    assert trainer.callback_metrics["data/bad_images"].item() == 3.0
