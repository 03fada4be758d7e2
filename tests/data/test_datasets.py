"""Robust loading, bad-input errors and label fractions (ssl_cropmix/data/datasets.py)."""

from __future__ import annotations

import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_cropmix.data.datasets import (
    BadImageError,
    BadImageWarning,
    ImageFolderDataset,
    ViewDataset,
    label_fraction_indices,
    load_rgb,
    per_class_count,
    to_rgb,
    subset_from_list,
)


def _px(img, xy):
    return tuple(int(v) for v in np.asarray(img)[xy[1], xy[0]])


def test_modes_become_correct_rgb(bad_tree):
    _, k = bad_tree
    assert _px(load_rgb(k["gray"]), (3, 3)) == (100, 100, 100)
    pal = load_rgb(k["palette"])
    assert _px(pal, (2, 5)) == (255, 0, 0) and _px(pal, (15, 5)) == (255, 255, 255)
    rgba = load_rgb(k["rgba"])  # transparent black pixels are composited onto white
    assert _px(rgba, (2, 5)) == (255, 0, 0) and _px(rgba, (15, 5)) == (255, 255, 255)
    cmyk = np.asarray(load_rgb(k["cmyk"])).reshape(-1, 3).mean(0)
    assert cmyk[0] < 10 and cmyk[1] > 245 and cmyk[2] > 245  # pure cyan
    g16 = np.asarray(load_rgb(k["gray16"]))
    assert g16.dtype == np.uint8 and g16[0, :, 0].tolist() == [0, 4, 128, 255]  # v/257, not clipped
    ex = load_rgb(k["exif"])
    assert ex.size == (20, 40)  # rotated upright: stored 40x20 with orientation 6
    top, bottom = np.asarray(ex)[:15].reshape(-1, 3).mean(0), np.asarray(ex)[25:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50
    assert load_rgb(k["tiny"]).mode == "RGB"
    # to_rgb on a caller's image rotates a copy and leaves the caller's image as it was
    with Image.open(k["exif"]) as own:
        own.load()
        assert to_rgb(own).size == (20, 40) and own.size == (40, 20)


def test_scan_ignores_non_image_files_with_one_warning(bad_tree):
    root, _ = bad_tree
    with pytest.warns(BadImageWarning, match="notes.txt"):
        ds = ImageFolderDataset(root)
    assert ds.classes == ["clean", "odd"]
    assert len(ds) == 4 + 10 and Counter(ds.targets) == {0: 4, 1: 10}
    assert not any(p.endswith("notes.txt") for p, _ in ds.samples)


def test_skip_warns_once_per_file_counts_and_returns_valid_sample(bad_tree):
    root, k = bad_tree
    with pytest.warns(BadImageWarning):
        ds = ImageFolderDataset(root)
    idx = {Path(p).name: i for i, (p, _) in enumerate(ds.samples)}
    bad = ["corrupt.png", "text.jpg", "truncated.jpg"]
    for name in bad:
        with pytest.warns(BadImageWarning, match=name):
            img, y = ds[idx[name]]
        # replaced by the next readable sample (cyclically): truncated.jpg is the last file
        assert img.mode == "RGB" and y == (0 if name == "truncated.jpg" else 1)
    assert ds.skipped == 3 and sorted(Path(p).name for p in ds.bad_files) == bad
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # second epoch: no new warning, still counted
        for name in bad:
            ds[idx[name]]
    assert ds.skipped == 6
    # every good sample of the odd class loads
    for name in ["gray.png", "palette.png", "cmyk.jpg", "rgba.png", "gray16.png", "exif.jpg", "tiny.png"]:
        assert ds[idx[name]][0].mode == "RGB"


def test_skip_replacement_stays_inside_subset(bad_tree):
    root, _ = bad_tree
    with pytest.warns(BadImageWarning):
        ds = ImageFolderDataset(root)
    idx = {Path(p).name: i for i, (p, _) in enumerate(ds.samples)}
    view = ViewDataset(ds, transform=lambda im: im.size, indices=[idx["text.jpg"], idx["gray.png"], idx["tiny.png"]])
    with pytest.warns(BadImageWarning, match="text.jpg"):
        assert view[0] == ((24, 20), 1)  # next in the subset, not the next file on disk


def test_raise_policy_names_the_file(bad_tree):
    root, _ = bad_tree
    with pytest.warns(BadImageWarning):
        ds = ImageFolderDataset(root, on_bad_image="raise")
    i = [j for j, (p, _) in enumerate(ds.samples) if p.endswith("truncated.jpg")][0]
    with pytest.raises(BadImageError, match="truncated.jpg"):
        ds[i]
    with pytest.raises(ValueError, match="on_bad_image must be 'skip' or 'raise', got 'ignore'"):
        ImageFolderDataset(root, on_bad_image="ignore")


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no class sub-directories"):
        ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "split" / "a").mkdir(parents=True)
    (tmp_path / "split" / "b").mkdir()
    (tmp_path / "split" / "b" / "x.jpg").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="contain no image files.*: a$"):
        ImageFolderDataset(tmp_path / "split")


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.1, [1, 1, 1, 1]), (0.25, [3, 2, 1, 1]), (0.5, [5, 4, 2, 1]), (1.0, [10, 7, 3, 1])],
)
def test_per_class_counts_are_exact(fraction, expected):
    targets = [0] * 10 + [1] * 7 + [2] * 3 + [3] * 1
    assert [per_class_count(n, fraction) for n in (10, 7, 3, 1)] == expected
    idx = label_fraction_indices(targets, fraction, seed=1)
    assert [Counter(targets[i] for i in idx)[c] for c in range(4)] == expected
    assert idx == sorted(set(idx))


def test_label_fraction_seeded_and_imagenet_size():
    targets = [c for c in range(20) for _ in range(100)]
    a, b, c = (label_fraction_indices(targets, 0.1, seed=s) for s in (3, 3, 4))
    assert a == b and a != c and len(a) == 200
    # chosen images are spread over each class (not the first k files)
    assert max(i % 100 for i in a) > 50
    # 1 % of ImageNet-sized classes (1300 images) keeps 13 per class
    assert per_class_count(1300, 0.01) == 13 and per_class_count(732, 0.01) == 7
    with pytest.raises(ValueError, match=r"label_fraction must be in \(0, 1\], got 0"):
        label_fraction_indices(targets, 0)
    with pytest.raises(ValueError, match=r"classes \[1\] have no images"):
        label_fraction_indices([0, 2], 0.5, num_classes=3)


def test_subset_list(tree, tmp_path):
    ds = ImageFolderDataset(tree)
    idx = subset_from_list(ds, ["cat_1.jpg", "dog_0.jpg", "fox/fox_3.jpg"])
    assert [Path(ds.samples[i][0]).name for i in idx] == ["cat_1.jpg", "dog_0.jpg", "fox_3.jpg"]
    missing = [f"cat_{i}.jpg" for i in range(10, 17)]
    with pytest.raises(FileNotFoundError, match=r"7 of 9 files .* cat_10.jpg, cat_11.jpg, cat_12.jpg, cat_13.jpg, cat_14.jpg \.\.\."):
        subset_from_list(ds, ["cat_1.jpg", "dog_0.jpg", *missing])
    with pytest.raises(ValueError, match="1 class\\(es\\) .* zero images after sub-setting .*: fox"):
        subset_from_list(ds, ["cat_1.jpg", "dog_0.jpg"])


def test_subset_list_resolves_a_shared_file_name_by_prefix_or_refuses(tree):
    shutil.copy(tree / "cat" / "cat_1.jpg", tree / "dog" / "cat_1.jpg")  # same name in cat and dog
    shutil.copy(tree / "cat" / "cat_2.jpg", tree / "dog" / "x_2.jpg")
    shutil.copy(tree / "cat" / "cat_2.jpg", tree / "fox" / "x_2.jpg")  # same name, prefix matches neither
    ds = ImageFolderDataset(tree)
    idx = subset_from_list(ds, ["cat_1.jpg", "dog_0.jpg", "fox_0.jpg"])
    assert [ds.classes[ds.targets[i]] for i in idx] == ["cat", "dog", "fox"]  # cat_1 from cat/
    with pytest.raises(ValueError, match="1 names in subset list match files in several classes .*: x_2.jpg"):
        subset_from_list(ds, ["x_2.jpg", "dog_0.jpg", "fox_0.jpg"])
    idx = subset_from_list(ds, ["dog/x_2.jpg", "cat_1.jpg", "fox_0.jpg"])  # a path is never ambiguous
    assert sorted(ds.samples[i][0].split("/")[-2] for i in idx) == ["cat", "dog", "fox"]
