"""One class index per dataset (issue 22, case 2): validation labels use the training split's
classes. Before, ``train/{a,b,c}`` + ``val/{a,c}`` labelled val's ``c`` as 1 (train's ``b``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from ssl_cropmix.data.datamodule import CropMixDataModule
from ssl_cropmix.data.recipes import SupervisedViews
from ssl_cropmix.data.sources import ImageFolderSource
from ssl_cropmix.data.datasets import ImageFolderDataset, MissingClassWarning


def _tree(root: Path, splits: dict[str, tuple[str, ...]]) -> Path:
    for split, classes in splits.items():
        for c in classes:
            (root / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8), (ord(c[0]) % 255, 0, 0)).save(root / split / c / f"{c}.png")
    return root


def _dm(root: Path) -> CropMixDataModule:
    return CropMixDataModule(ImageFolderSource(str(root)), SupervisedViews("plain"), image_size=8,
                             batch_size=2, num_workers=0, persistent_workers=False)


def test_val_labels_use_the_training_class_index(tmp_path):
    dm = _dm(_tree(tmp_path, {"train": ("a", "b", "c"), "val": ("a", "c")}))
    with pytest.warns(MissingClassWarning, match=r"has no folder for 1 of the 3 training classes: 'b'"):
        dm.setup("fit")
    val = dm.reader("val")
    assert val.classes == ["a", "b", "c"] and val.num_classes == 3
    labels = {Path(p).parent.name: t for p, t in val.samples}
    assert labels == {"a": 0, "c": 2}  # c is train's c, not val's second folder
    _, y = next(iter(dm.labeled_val_dataloader()))
    assert sorted(y.tolist()) == [0, 2]


def test_val_class_absent_from_train_is_an_error_naming_it(tmp_path):
    dm = _dm(_tree(tmp_path, {"train": ("a", "b"), "val": ("a", "b", "zebra")}))
    with pytest.raises(ValueError, match=r"val' has 1 class folder\(s\) that the training split does not have: "
                       r"'zebra'; its labels would not match the training classes \(2: a, b\)"):
        dm.setup("fit")


def test_same_classes_unchanged_and_explicit_index(tmp_path):
    _tree(tmp_path, {"train": ("a", "b"), "val": ("a", "b")})
    assert ImageFolderDataset(tmp_path / "val").targets == [0, 1]
    assert ImageFolderDataset(tmp_path / "val", classes=["x", "a", "b"]).targets == [1, 2]
