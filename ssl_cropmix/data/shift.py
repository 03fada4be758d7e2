"""Readers for the distribution-shift and corruption test sets of the paper's robustness study.

Paper Sec. 4.2, Tables 2, 4 and 7 (Han et al. 2022) evaluate an ImageNet classifier on

* **ImageNet-A** (Hendrycks et al., natural adversarial examples) and **ImageNet-R**
  (renditions): 200-class subsets of ImageNet. As in their official evaluation
  (``indices_in_1k`` / PixMix's ``imagenet_r_mask``) the 1000 logits are restricted to the
  subset's 200 classes before the arg-max, and a label is the image's position among them.
* **ImageNet-Sketch** (Wang et al.): all 1000 classes, ``sketch/<wnid>/*.JPEG``.
* **Co-Mixup's background corruptions** (Kim et al. 2021): the ImageNet validation images with
  the background (outside the ground-truth boxes) replaced by another image ("Replace") or
  perturbed with Gaussian noise ("Noise"). Building them needs foreground boxes; **they are
  not generated here**: prepare them with Co-Mixup's ``comix-localization/data/download_data.sh``
  (folders holding ``input.pkl`` / ``label.pkl``) or as an ImageFolder tree ``<wnid>/<image>``.

The class index of a wnid is its position in the **sorted** list of the 1000 ImageNet-1k
wnids, the order of ``torchvision.datasets.ImageFolder`` on an ImageNet train tree (and of
every torchvision / timm ImageNet model). :func:`imagenet_wnids` reads that list from timm's
bundled ``imagenet_synsets.txt``, a text file, or the class folders of the user's ImageNet
train directory.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ssl_cropmix.data.datasets import ImageFolderDataset, to_rgb, visible_subdirs

_WNID = re.compile(r"^n\d{8}$")
NUM_IMAGENET_CLASSES = 1000


# --------------------------------------------------------------------------- wnid lists
def _timm_list(name: str) -> list[str] | None:
    """A wnid list bundled with the installed timm (``timm/data/_info/<name>``), if any."""
    import pkgutil

    try:
        data = pkgutil.get_data("timm.data", f"_info/{name}")
    except (ImportError, OSError):
        return None
    if data is None:
        return None
    return [ln.split()[0] for ln in data.decode("utf-8").splitlines() if ln.strip()]


def _check_wnids(wnids: Sequence[str], what: str, expected: int | None) -> list[str]:
    bad = [w for w in wnids if not _WNID.match(w)]
    if bad:
        raise ValueError(f"{what}: not WordNet ids (n + 8 digits): {bad[:5]}")
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"{what}: duplicate wnids")
    if expected is not None and len(wnids) != expected:
        raise ValueError(f"{what}: expected {expected} wnids, got {len(wnids)}")
    return sorted(wnids)


def imagenet_wnids(source: str | os.PathLike | Sequence[str] | None = None) -> list[str]:
    """The 1000 ImageNet-1k wnids, sorted: position = class index of ImageNet models.

    Args:
        source: ``None`` (timm's bundled ``imagenet_synsets.txt``), a text file with one wnid
            per line (extra columns, as in ``LOC_synset_mapping.txt``, are ignored), a
            directory whose class sub-folders are the wnids (an ImageNet ``train`` tree), or
            a sequence of wnids.

    Raises:
        FileNotFoundError: ``source`` does not exist, or is ``None`` and timm ships no list.
        ValueError: not exactly 1000 distinct wnids.
    """
    if source is None:
        wnids = _timm_list("imagenet_synsets.txt")
        if wnids is None:
            raise FileNotFoundError(
                "the installed timm ships no imagenet_synsets.txt; pass imagenet_wnids as a file "
                "(one wnid per line) or your ImageNet train folder"
            )
        what = "timm imagenet_synsets.txt"
    elif isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            wnids = visible_subdirs(p)
        elif p.is_file():
            wnids = [ln.split()[0] for ln in p.read_text().splitlines() if ln.strip()]
        else:
            raise FileNotFoundError(f"imagenet_wnids {str(p)!r} is neither a file nor a folder")
        what = f"imagenet_wnids={str(p)!r}"
    else:
        wnids, what = list(source), "imagenet_wnids"
    return _check_wnids(wnids, what, NUM_IMAGENET_CLASSES)


_imagenet_wnids = imagenet_wnids  # for functions whose argument shadows the name


def subset_wnids(name: str) -> list[str] | None:
    """The official 200 wnids of ``"imagenet-a"`` / ``"imagenet-r"`` as bundled with timm
    (sorted), or ``None`` when the installed timm has no such list."""
    files = {"imagenet-a": "imagenet_a_synsets.txt", "imagenet-r": "imagenet_r_synsets.txt"}
    if name not in files:
        raise ValueError(f"name must be one of {sorted(files)}, got {name!r}")
    wnids = _timm_list(files[name])
    return None if wnids is None else _check_wnids(wnids, f"timm {files[name]}", 200)


# --------------------------------------------------------------------------- datasets
class WnidFolderDataset(Dataset):
    """An ImageFolder tree ``root/<wnid>/<image>`` labelled in ImageNet's class space.

    ``class_indices`` are the ImageNet-1k indices of the logits the evaluation keeps, in
    increasing order; a sample's label is its wnid's position in ``class_indices``. For a
    1000-class set (ImageNet-Sketch, a corrupted ImageNet val) ``class_indices`` is ``None``
    and labels are ImageNet indices.

    Args:
        root: the folder whose sub-folders are wnids.
        transform: applied to the RGB PIL image.
        imagenet_wnids: see :func:`imagenet_wnids` (``None``: timm's list).
        subset: ``None`` (1000 classes), or the wnids whose logits are kept (e.g. the official
            200 of ImageNet-R); every folder must be one of them.
        on_bad_image: as in :class:`~ssl_cropmix.data.datasets.ImageFolderDataset`.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no class folders with images.
        ValueError: a folder name is not a known ImageNet wnid, or not in ``subset``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[Image.Image], Any] | None = None,
        imagenet_wnids: str | os.PathLike | Sequence[str] | None = None,
        subset: Sequence[str] | None = None,
        on_bad_image: str = "skip",
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"test-set folder {str(self.root)!r} does not exist")
        self.folder = ImageFolderDataset(self.root, transform=transform, on_bad_image=on_bad_image)  # type: ignore[arg-type]
        all_wnids = _imagenet_wnids(imagenet_wnids)
        index_of = {w: i for i, w in enumerate(all_wnids)}
        unknown = [w for w in self.folder.classes if w not in index_of]
        if unknown:
            raise ValueError(
                f"{len(unknown)} folder(s) under {str(self.root)!r} are not ImageNet-1k wnids: "
                f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}"
            )
        if subset is None:
            self.class_indices: tuple[int, ...] | None = None
            self.wnids = list(all_wnids)
            label_of = {w: index_of[w] for w in self.folder.classes}
        else:
            sub = _check_wnids(list(subset), "subset", None)
            missing = [w for w in sub if w not in index_of]
            if missing:
                raise ValueError(f"subset wnids that are not ImageNet-1k wnids: {missing[:5]}")
            outside = [w for w in self.folder.classes if w not in set(sub)]
            if outside:
                raise ValueError(
                    f"{len(outside)} folder(s) under {str(self.root)!r} are not in the {len(sub)}-class "
                    f"subset: {outside[:5]}"
                )
            self.wnids = sub  # sorted wnids <-> increasing ImageNet indices
            self.class_indices = tuple(index_of[w] for w in sub)
            pos = {w: j for j, w in enumerate(sub)}
            label_of = {w: pos[w] for w in self.folder.classes}
        self._label = [label_of[c] for c in self.folder.classes]
        self.targets = [self._label[t] for t in self.folder.targets]

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        x, t = self.folder[index]
        return x, self._label[t]


def _subset_root(root: str | os.PathLike, name: str, inner: str) -> Path:
    """``root`` itself, or ``root/<inner>`` when ``root`` only wraps the archive's top folder."""
    p = Path(root)
    if not p.is_dir():
        raise FileNotFoundError(f"{name} folder {str(p)!r} does not exist")
    if not any(_WNID.match(d) for d in visible_subdirs(p)) and (p / inner).is_dir():
        return p / inner
    return p


def imagenet_a(
    root: str | os.PathLike,
    transform: Callable[[Image.Image], Any] | None = None,
    imagenet_wnids: str | os.PathLike | Sequence[str] | None = None,
    subset: Sequence[str] | None = None,
) -> WnidFolderDataset:
    """ImageNet-A (``imagenet-a/<wnid>/*.jpg``), logits restricted to its 200 classes.

    ``subset=None`` uses the official 200 wnids bundled with timm; without them, the folder
    names (a complete download has all 200).
    """
    root = _subset_root(root, "ImageNet-A", "imagenet-a")
    return _subset_set(root, transform, imagenet_wnids, subset, "imagenet-a")


def imagenet_r(
    root: str | os.PathLike,
    transform: Callable[[Image.Image], Any] | None = None,
    imagenet_wnids: str | os.PathLike | Sequence[str] | None = None,
    subset: Sequence[str] | None = None,
) -> WnidFolderDataset:
    """ImageNet-R (``imagenet-r/<wnid>/*.jpg``), logits restricted to its 200 classes."""
    root = _subset_root(root, "ImageNet-R", "imagenet-r")
    return _subset_set(root, transform, imagenet_wnids, subset, "imagenet-r")


def _subset_set(root: Path, transform: Any, wnids: Any, subset: Sequence[str] | None, name: str) -> WnidFolderDataset:
    if subset is None:
        subset = subset_wnids(name) or visible_subdirs(root)
    return WnidFolderDataset(root, transform, imagenet_wnids=wnids, subset=subset)


def imagenet_sketch(
    root: str | os.PathLike,
    transform: Callable[[Image.Image], Any] | None = None,
    imagenet_wnids: str | os.PathLike | Sequence[str] | None = None,
) -> WnidFolderDataset:
    """ImageNet-Sketch (``sketch/<wnid>/*.JPEG``, ``root`` may be ``sketch/`` or its parent),
    all 1000 classes."""
    return WnidFolderDataset(_subset_root(root, "ImageNet-Sketch", "sketch"), transform, imagenet_wnids)


class _ArraysOnly(pickle.Unpickler):
    """Unpickler that rebuilds lists / dicts / numbers / numpy arrays and nothing else:
    a pickle cannot run code while being read (the same policy as ``weights_only=True``)."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")


def _read_arrays_pickle(path: Path) -> Any:
    with open(path, "rb") as f:
        return _ArraysOnly(f).load()


class CoMixupPickleSet(Dataset):
    """A Co-Mixup robustness set as distributed: ``root/input.pkl`` (list of ``(H, W, 3)``
    uint8 arrays) and ``root/label.pkl`` (ImageNet-1k indices); ``bbox.pkl`` is not needed.

    The pickles are read with an unpickler that only rebuilds numpy arrays.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: lengths differ, or a label is outside [0, 1000).
    """

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.root = Path(root)
        for name in ("input.pkl", "label.pkl"):
            if not (self.root / name).is_file():
                raise FileNotFoundError(f"Co-Mixup set {str(self.root)!r} has no {name}")
        self.images = _read_arrays_pickle(self.root / "input.pkl")
        labels = np.asarray(_read_arrays_pickle(self.root / "label.pkl")).reshape(-1)
        if len(self.images) != len(labels):
            raise ValueError(f"{str(self.root)!r}: {len(self.images)} images but {len(labels)} labels")
        if labels.size and (labels.min() < 0 or labels.max() >= NUM_IMAGENET_CLASSES):
            raise ValueError(f"{str(self.root)!r}: labels must be ImageNet indices in [0, 1000)")
        self.targets = [int(t) for t in labels]
        self.transform = transform
        self.class_indices = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        a = np.asarray(self.images[index])
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"{str(self.root)!r} image {index}: expected (H, W, 3) uint8, got {a.shape} {a.dtype}")
        img = to_rgb(Image.fromarray(a))
        return (self.transform(img) if self.transform is not None else img), self.targets[index]


def comixup_set(
    root: str | os.PathLike,
    transform: Callable[[Image.Image], Any] | None = None,
    imagenet_wnids: str | os.PathLike | Sequence[str] | None = None,
) -> Dataset:
    """Co-Mixup's "Replace" (``data/rep``) or "Noise" (``data/noise``) set, prepared by the user.

    ``root`` holds either Co-Mixup's pickles (:class:`CoMixupPickleSet`) or an ImageFolder tree
    ``<wnid>/<image>`` (1000-class :class:`WnidFolderDataset`).
    """
    p = Path(root)
    if not p.is_dir():
        raise FileNotFoundError(f"Co-Mixup set folder {str(p)!r} does not exist")
    if (p / "input.pkl").is_file():
        return CoMixupPickleSet(p, transform)
    return WnidFolderDataset(p, transform, imagenet_wnids)
