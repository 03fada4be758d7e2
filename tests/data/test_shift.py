"""Readers of the shift / corruption test sets: wnid -> ImageNet index, subsets, errors."""

from __future__ import annotations

import pickle
import pkgutil

import numpy as np
import pytest
from PIL import Image

from ssl_cropmix.data import shift


def _timm(name: str) -> list[str]:
    return pkgutil.get_data("timm.data", f"_info/{name}").decode().split()


def _tree(root, wnids, n=2, ext=".jpg"):
    rng = np.random.default_rng(0)
    for w in wnids:
        (root / w).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(root / w / f"{i}{ext}")
    return root


def test_imagenet_wnids_from_timm_file_and_train_folder_agree(tmp_path):
    wnids = shift.imagenet_wnids()
    assert len(wnids) == 1000 and wnids == sorted(wnids) and wnids[0] == "n01440764"
    f = tmp_path / "synsets.txt"
    f.write_text("\n".join(f"{w} some lemma" for w in reversed(wnids)))  # extra column, any order
    assert shift.imagenet_wnids(f) == wnids
    train = tmp_path / "train"
    for w in wnids:
        (train / w).mkdir(parents=True)
    assert shift.imagenet_wnids(train) == wnids
    with pytest.raises(ValueError, match="expected 1000"):
        shift.imagenet_wnids(wnids[:999])
    with pytest.raises(FileNotFoundError, match="neither a file nor a folder"):
        shift.imagenet_wnids(tmp_path / "nope")


@pytest.mark.parametrize("name,reader,indices_file",
                         [("imagenet-r", shift.imagenet_r, "imagenet_r_indices.txt"),
                          ("imagenet-a", shift.imagenet_a, "imagenet_a_indices.txt")])
def test_three_of_the_200_wnids_map_to_their_imagenet_indices(tmp_path, name, reader, indices_file):
    official = _timm(name.replace("-", "_") + "_synsets.txt")
    official_idx = [int(i) for i in _timm(indices_file)]  # timm's independent index list
    picks = [official[5], official[77], official[199]]
    root = _tree(tmp_path / name, picks)
    ds = reader(root)
    assert len(ds.class_indices) == 200
    assert list(ds.class_indices) == sorted(official_idx)
    all_wnids = _timm("imagenet_synsets.txt")
    for k, (img, label) in enumerate(ds[i] for i in range(len(ds))):
        w = picks[k // 2]
        assert ds.class_indices[label] == all_wnids.index(w) == official_idx[official.index(w)]
        assert isinstance(img, Image.Image)
    # the archive's top folder is accepted too
    assert reader(tmp_path).class_indices == ds.class_indices


def test_sketch_is_1000_way_and_unknown_or_missing_folders_fail_clearly(tmp_path):
    wnids = shift.imagenet_wnids()
    _tree(tmp_path / "sketch", [wnids[0], wnids[999]], ext=".JPEG")
    ds = shift.imagenet_sketch(tmp_path)  # parent of sketch/
    assert ds.class_indices is None and sorted(set(ds.targets)) == [0, 999]
    _tree(tmp_path / "bad", ["n99999999"])
    with pytest.raises(ValueError, match="not ImageNet-1k wnids.*n99999999"):
        shift.imagenet_sketch(tmp_path / "bad")
    _tree(tmp_path / "r", [wnids[0]])  # tench is not one of ImageNet-R's 200 classes
    with pytest.raises(ValueError, match="not in the 200-class subset"):
        shift.imagenet_r(tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        shift.imagenet_a(tmp_path / "missing")


def test_comixup_pickles_are_read_without_running_code(tmp_path):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(3)]
    with open(tmp_path / "input.pkl", "wb") as f:
        pickle.dump(imgs, f)
    with open(tmp_path / "label.pkl", "wb") as f:
        pickle.dump(np.array([5, 999, 0]), f)
    ds = shift.comixup_set(tmp_path)
    assert isinstance(ds, shift.CoMixupPickleSet) and ds.targets == [5, 999, 0]
    img, y = ds[1]
    assert y == 999 and np.array_equal(np.asarray(img), imgs[1])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil"
    bad.mkdir()
    with open(bad / "input.pkl", "wb") as f:
        pickle.dump([Evil()], f)
    with open(bad / "label.pkl", "wb") as f:
        pickle.dump([1], f)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        shift.comixup_set(bad)
    with pytest.raises(FileNotFoundError):
        shift.comixup_set(tmp_path / "missing")
