"""The built-in demo set: real photos cut into disjoint train/val tiles, one class each."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ssl_cropmix.data.datamodule import CropMixDataModule
from ssl_cropmix.data.sources import DemoSource, source_from_flat
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


def test_datamodule_demo_source_serves_moco_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    dm = CropMixDataModule(DemoSource(), image_size=32, batch_size=8, num_workers=0, persistent_workers=False)
    assert dm.num_classes == len(DEMO_NAMES)
    dm.setup("fit")
    (q, k), y = next(iter(dm.train_dataloader()))
    assert q.shape == k.shape == (8, 3, 32, 32)
    assert y.dtype.is_floating_point is False and int(y.max()) < len(DEMO_NAMES)
    assert len(dm.labeled_val_dataloader().dataset) == 8 * len(DEMO_NAMES)


def test_demo_is_written_to_the_cache_never_to_a_data_dir(tmp_path, monkeypatch):
    """Issue 22, case 1: ``dataset="demo"`` used to write its 8 classes into ``data_dir`` (the
    user's own ImageFolder when it came from a checkpoint); now only the cache is written, and a
    ``data_dir`` is refused. The cache follows $SSL_CROPMIX_CACHE, else $XDG_CACHE_HOME."""
    monkeypatch.delenv("SSL_CROPMIX_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    dm = CropMixDataModule(DemoSource(), image_size=32, batch_size=8, num_workers=0, persistent_workers=False)
    dm.setup("fit")
    assert dm.reader("train").root == tmp_path / "xdg" / "ssl_cropmix" / "demo" / "train"
    with pytest.raises(TypeError):  # DemoSource takes no folder at all
        DemoSource(root=str(tmp_path / "mine"))  # type: ignore[call-arg]
    # the task commands' --dataset demo --data-dir ... (and pre-0.2 checkpoint records) say why
    with pytest.raises(ValueError, match=r"^data_dir must be None with dataset='demo', got '.*mine': the built-in"):
        source_from_flat("demo", str(tmp_path / "mine"))
    assert not (tmp_path / "mine").exists()
