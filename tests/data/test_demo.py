"""The built-in demo set: real photos cut into disjoint train/val tiles, one class each."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ssl_cropmix.data.datamodule import CropMixDataModule
from ssl_cropmix.data.demo import DEMO_NAMES, write_demo_folder


def test_demo_folder_layout_and_disjoint_tiles(tmp_path):
    root = write_demo_folder(tmp_path / "demo")
    for split in ("train", "val"):
        classes = sorted(p.name for p in (root / split).iterdir())
        assert classes == sorted(DEMO_NAMES)
        for c in classes:
            assert len(list((root / split / c).glob("*.jpg"))) == 8
    tr = {p.name for p in (root / "train").rglob("*.jpg")}
    va = {p.name for p in (root / "val").rglob("*.jpg")}
    assert not tr & va  # checkerboard: no tile in both splits
    # tiles are real photo content, not blank
    arr = np.asarray(Image.open(next((root / "train" / "astronaut").glob("*.jpg"))))
    assert arr.ndim == 3 and arr.std() > 10


def test_datamodule_demo_source_serves_moco_batches(tmp_path):
    dm = CropMixDataModule(
        dataset="demo", data_dir=str(tmp_path / "demo"), image_size=32, batch_size=8,
        num_workers=0, persistent_workers=False,
    )
    assert dm.num_classes == len(DEMO_NAMES)
    dm.setup("fit")
    (q, k), y = next(iter(dm.train_dataloader()))
    assert q.shape == k.shape == (8, 3, 32, 32)
    assert y.dtype.is_floating_point is False and int(y.max()) < len(DEMO_NAMES)
    assert len(dm.labeled_val_dataloader().dataset) == 8 * len(DEMO_NAMES)
