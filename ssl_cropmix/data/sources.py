"""Data sources: where the images come from, one small class each.

A source knows how to list and read its samples (:meth:`Source.open` returns the split's
reader: ``classes``, ``targets``, ``load(i) -> (PIL RGB, label)``), its class index (one for
all splits: every split is labelled with the training split's ``classes``), its splits and
its bad-image policy; nothing else. Views, loaders and label fractions belong to the
:class:`~ssl_cropmix.data.datamodule.CropMixDataModule` that is handed a source.

* :class:`ImageFolderSource`: an ImageFolder tree (``<root>/<split>/<class>/<images>``), or
  the CIFAR-10 JPEG archive (extracted once, see :func:`~ssl_cropmix.data.cifar.resolve_cifar10`).
* :class:`DemoSource`: the built-in demo set (tiles of the photos bundled with scikit-image,
  8 classes), written once to the package's cache.
* :class:`CIFAR10Source`, :class:`CIFAR100Source`, :class:`STL10Source`: torchvision's sets.
* :class:`ShardsSource`: LitData shards written by ``ssl-cropmix optimize``, read through
  ``StreamingDataset`` / ``StreamingDataLoader`` (:mod:`ssl_cropmix.data.streaming`).

From YAML (LightningCLI): ``data.init_args.source: {class_path: ImageFolderSource,
init_args: {root: ..., val_split: test}}``; ``ssl-cropmix fit --data.source.help
ImageFolderSource`` lists one source's arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from ssl_cropmix.data.datasets import (
    DEFAULT_MAX_PIXELS,
    IMG_EXTENSIONS,
    BadImagePolicy,
    ImageFolderDataset,
    TorchvisionSplit,
    _check_policy,
    _Source,
    visible_subdirs,
)
from ssl_cropmix.validation import check_bool, check_int


def _check_split(name: str, value: Any, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty split name{' or None' if optional else ''}, got {value!r}")
    return value


class Source:
    """Base of the data sources (see the module docstring).

    Args:
        train_split: the split trained on.
        val_split: the split validated / evaluated on; ``None``: no validation loader.

    Attributes:
        streaming: the source brings its own loader (:class:`ShardsSource`).
    """

    streaming: ClassVar[bool] = False
    #: takes a SimCLR-style ``subset_file`` (a list of file names): file-based sources only.
    has_files: ClassVar[bool] = False

    def __init__(self, train_split: str = "train", val_split: str | None = "val") -> None:
        self.train_split = _check_split("train_split", train_split)
        self.val_split = _check_split("val_split", val_split, optional=True)

    @property
    def labeled_split(self) -> str:
        """The split the labelled loaders (probes, fine-tuning) read, and whose class index
        labels every split (the training split unless it has unlabelled images)."""
        return self.train_split

    @property
    def num_classes(self) -> int:
        """Class count, known without reading images where the source allows it."""
        return self.open(self.labeled_split).num_classes

    def prepare(self) -> None:
        """Download what is needed (called once, on rank 0); nothing by default."""

    def open(self, split: str, classes: list[str] | None = None) -> _Source:
        """The reader of ``split`` (``classes``: the class index to label it with, the
        labelled split's; ``None`` for that split itself)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line naming the data, for error messages and run records."""
        return type(self).__name__

    def init_args(self) -> dict[str, Any]:
        """The ``__init__`` arguments, plain values (recorded in checkpoints' hparams)."""
        return {"train_split": self.train_split, "val_split": self.val_split}

    def config(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": ...}``: what LightningCLI writes and reads."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": self.init_args()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.init_args().items())
        return f"{type(self).__name__}({args})"


def _holds_images_directly(folder: Path) -> bool:
    """Whether ``folder`` has an image file (one of ``IMG_EXTENSIONS``) at its top level."""
    return any(f.suffix.lower() in IMG_EXTENSIONS for f in folder.iterdir() if f.is_file())


class _FolderSource(Source):
    """An ImageFolder tree under :meth:`base` (the shared part of folder and demo)."""

    has_files = True

    def __init__(self, train_split: str = "train", val_split: str | None = "val",
                 on_bad_image: BadImagePolicy = "skip", max_image_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(train_split, val_split)
        _check_policy(on_bad_image)
        self.on_bad_image = on_bad_image
        self.max_image_pixels = check_int("max_image_pixels", max_image_pixels, 1, optional=True)

    def base(self) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    def split_root(self, split: str) -> Path:
        """``<base>/<split>``, or an error naming the splits there."""
        base = self.base()
        if not base.is_dir():
            raise FileNotFoundError(f"root {str(base)!r} does not exist")
        root = base / split
        if not root.is_dir():
            found = visible_subdirs(base)
            which = "val_split" if split == self.val_split else "train_split"
            hint = f"pass {which}=<one of them>"
            if found and all(_holds_images_directly(base / d) for d in found):
                # The subfolders are classes, not splits: root was set to a split folder itself.
                hint = (f"those hold images directly, so they look like class folders: {str(base)!r} is a split "
                        f"itself; set root to the folder that holds {split}/ (here {str(base.parent)!r})")
            raise FileNotFoundError(
                f"split {split!r} not found: {str(root)!r} does not exist (splits found in "
                f"{str(base)!r}: {', '.join(found) or 'none'}); {hint}"
            )
        return root

    @property
    def num_classes(self) -> int:
        return len(visible_subdirs(self.split_root(self.labeled_split)))

    def open(self, split: str, classes: list[str] | None = None) -> ImageFolderDataset:
        return ImageFolderDataset(self.split_root(split), on_bad_image=self.on_bad_image,
                                  max_pixels=self.max_image_pixels, classes=classes)

    def init_args(self) -> dict[str, Any]:
        return {**super().init_args(), "on_bad_image": self.on_bad_image, "max_image_pixels": self.max_image_pixels}


class ImageFolderSource(_FolderSource):
    """An ImageFolder tree ``<root>/<split>/<class>/**/<image>`` (ImageNet's layout).

    Args:
        root: the folder holding the split directories, or the CIFAR-10 JPEG archive
            ``cifar10-jpeg.tar.gz`` / a folder containing it (extracted once, see
            :func:`~ssl_cropmix.data.cifar.resolve_cifar10`; its val split is ``"test"``).
        train_split: split directory trained on.
        val_split: split directory validated on (``None``: no validation).
        on_bad_image: ``"skip"`` (warn once per file, count, replace) or ``"raise"``.
        max_image_pixels: images whose header claims more pixels (width x height) are
            skipped (or raise) without being decoded; ``None``: no limit of ours. Default
            ``datasets.DEFAULT_MAX_PIXELS`` (89.5 Mpx, PIL's warning threshold).
    """

    def __init__(self, root: str, train_split: str = "train", val_split: str | None = "val",
                 on_bad_image: BadImagePolicy = "skip", max_image_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(train_split, val_split, on_bad_image, max_image_pixels)
        if not isinstance(root, (str, os.PathLike)) or not str(root):
            raise ValueError(f"root must be a folder or archive path, got {root!r}")
        self.root = str(root)

    def base(self) -> Path:
        from ssl_cropmix.data.cifar import ARCHIVE_NAME, resolve_cifar10

        p = Path(self.root).expanduser()
        looks_cifar = p.is_file() or (
            not (p / self.train_split).is_dir() and ((p / ARCHIVE_NAME).is_file() or (p / "cifar10").is_dir())
        )
        return resolve_cifar10(p) if looks_cifar else p

    def describe(self) -> str:
        return f"ImageFolderSource(root={self.root!r})"

    def init_args(self) -> dict[str, Any]:
        return {"root": self.root, **super().init_args()}


class DemoSource(_FolderSource):
    """The built-in demo set: tiles of the photos bundled with scikit-image (8 classes, 64
    train / 64 val images), written once to the package's cache (``$SSL_CROPMIX_CACHE``,
    see :func:`~ssl_cropmix.data.demo.demo_root`), never into a data folder; no download."""

    def __init__(self, on_bad_image: BadImagePolicy = "skip") -> None:
        super().__init__("train", "val", on_bad_image)

    @property
    def num_classes(self) -> int:
        from ssl_cropmix.data.demo import DEMO_NAMES

        return len(DEMO_NAMES)

    def base(self) -> Path:
        from ssl_cropmix.data.demo import demo_root

        return demo_root()

    def init_args(self) -> dict[str, Any]:
        return {"on_bad_image": self.on_bad_image}


class _TorchvisionSource(Source):
    """A torchvision dataset (read from ``root``; downloaded there only when asked)."""

    name: ClassVar[str]
    folder: ClassVar[str]
    class_count: ClassVar[int]
    splits: ClassVar[tuple[str, ...]] = ("train", "test", "val")

    def __init__(self, root: str | None = None, train_split: str = "train", val_split: str | None = "test",
                 download: bool = False) -> None:
        super().__init__(train_split, val_split)
        for which, split in (("train_split", train_split), ("val_split", val_split)):
            if split is not None and split not in self.splits:
                raise ValueError(f"{which} must be one of {self.splits} for {self.name}, got {split!r}")
        self.root = None if root is None else str(root)
        self.download = check_bool("download", download)

    @property
    def num_classes(self) -> int:
        return self.class_count

    def root_dir(self) -> Path:
        if self.root is None:
            from ssl_cropmix.data.cifar import cache_dir

            return cache_dir() / "torchvision"
        return Path(self.root).expanduser()

    def prepare(self) -> None:
        """Download every split used when ``download=True``."""
        if self.download:
            for split in {self.train_split, self.labeled_split, self.val_split} - {None}:
                self._dataset(split, download=True)

    def open(self, split: str, classes: list[str] | None = None) -> TorchvisionSplit:
        return TorchvisionSplit(self._dataset(split))

    def _build(self, root: str, split: str, download: bool) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _dataset(self, split: str, download: bool = False) -> Any:
        root = self.root_dir()
        if not download and not (root / self.folder).is_dir():
            raise FileNotFoundError(
                f"{self.name} not found under root={str(root)!r} (expected {self.folder}/ there): pass "
                f"root=<the folder that contains {self.folder}/>, or download=True when the network is reachable"
                + ("; the CIFAR-10 JPEG archive is read with ImageFolderSource(root=<path to cifar10-jpeg.tar.gz>, "
                   "val_split='test')" if self.name == "cifar10" else "")
            )
        try:
            return self._build(str(root), split, download)
        except (OSError, RuntimeError) as e:  # URLError is an OSError
            raise RuntimeError(
                f"could not {'download' if download else 'read'} {self.name} into {str(root)!r} ({e}); download it "
                f"where the network is reachable and pass root=<folder containing {self.folder}/> with download=False"
            ) from e

    def describe(self) -> str:
        return f"{type(self).__name__}(root={self.root!r})"

    def init_args(self) -> dict[str, Any]:
        return {"root": self.root, **super().init_args(), "download": self.download}


class CIFAR10Source(_TorchvisionSource):
    """torchvision's CIFAR-10 (the python pickles; the JPEG archive is an :class:`ImageFolderSource`).

    Args:
        root: folder containing ``cifar-10-batches-py/`` (default
            ``<cache>/torchvision``).
        train_split: ``"train"``.
        val_split: ``"test"`` (``"val"`` means the test set too) or ``None``.
        download: let torchvision download it (needs the network).
    """

    name, folder, class_count = "cifar10", "cifar-10-batches-py", 10

    def _build(self, root: str, split: str, download: bool) -> Any:
        import torchvision.datasets as tvd

        return tvd.CIFAR10(root, train=split == "train", download=download)


class CIFAR100Source(CIFAR10Source):
    """torchvision's CIFAR-100 (arguments as :class:`CIFAR10Source`; ``cifar-100-python/``)."""

    name, folder, class_count = "cifar100", "cifar-100-python", 100

    def _build(self, root: str, split: str, download: bool) -> Any:
        import torchvision.datasets as tvd

        return tvd.CIFAR100(root, train=split == "train", download=download)


class STL10Source(_TorchvisionSource):
    """torchvision's STL-10.

    Args:
        root: folder containing ``stl10_binary/`` (default ``<cache>/torchvision``).
        train_split: ``"train"``, ``"unlabeled"`` or ``"train+unlabeled"`` (the labelled
            loaders always read ``"train"``).
        val_split: ``"test"`` (``"val"`` means the test set too) or ``None``.
        download: let torchvision download it (needs the network).
    """

    name, folder, class_count = "stl10", "stl10_binary", 10
    splits = ("train", "test", "val", "unlabeled", "train+unlabeled")

    @property
    def labeled_split(self) -> str:
        return "train"

    def _build(self, root: str, split: str, download: bool) -> Any:
        import torchvision.datasets as tvd

        return tvd.STL10(root, split="test" if split == "val" else split, download=download)


class ShardsSource(Source):
    """LitData shards written by ``ssl-cropmix optimize`` (``<uri>/<split>/`` per split),
    read through ``StreamingDataset`` / ``StreamingDataLoader``: even per-rank splits, the
    loader's position saved in checkpoints (:mod:`ssl_cropmix.data.streaming`). The bad-image
    policy was applied once, by ``optimize``. Needs ``pip install 'ssl_cropmix[streaming]'``.

    Args:
        uri: local folder or URI (``s3://bucket/imagenet``) holding the split folders.
        train_split: split folder trained on.
        val_split: split folder validated on (``None``: no validation).
        cache_dir: where LitData caches remote chunks (default: LitData's).
    """

    streaming = True

    def __init__(self, uri: str, train_split: str = "train", val_split: str | None = "val",
                 cache_dir: str | None = None) -> None:
        super().__init__(train_split, val_split)
        if not isinstance(uri, (str, os.PathLike)) or not str(uri):
            raise ValueError(f"uri must be a folder or URI, got {uri!r}")
        self.uri = str(uri)
        self.cache_dir = cache_dir

    def open(self, split: str, classes: list[str] | None = None) -> _Source:
        from ssl_cropmix.data.streaming import StreamingShards, join_uri

        return StreamingShards(join_uri(self.uri, split), cache_dir=self.cache_dir)

    def describe(self) -> str:
        return f"ShardsSource(uri={self.uri!r})"

    def init_args(self) -> dict[str, Any]:
        return {"uri": self.uri, **super().init_args(), "cache_dir": self.cache_dir}


#: ``ssl-cropmix probe|finetune --dataset NAME`` and checkpoints written before the sources
#: (flat ``dataset=`` / ``data_dir=`` hyper-parameters): the source class of each name.
SOURCES_BY_NAME: dict[str, type[Source]] = {
    "folder": ImageFolderSource, "demo": DemoSource, "cifar10": CIFAR10Source, "cifar100": CIFAR100Source,
    "stl10": STL10Source, "shards": ShardsSource,
}

SourceName = Literal["folder", "demo", "cifar10", "cifar100", "stl10", "shards"]


def source_from_flat(dataset: str = "folder", data_dir: str | None = None, train_split: str | None = None,
                     val_split: str | None = "", **policy: Any) -> Source:
    """The source that the flat arguments of ssl_cropmix < 0.2 (``dataset=``, ``data_dir=``,
    ``train_split=``, ``val_split=``, ``download=``, ``on_bad_image=``, ``max_image_pixels=``)
    described: used by the task commands' ``--dataset`` / ``--data-dir`` flags and to read
    the data record of checkpoints written before the sources (see CHANGELOG.md).

    Args:
        val_split: ``""`` (default): the source's own default.

    Raises:
        ValueError: an unknown ``dataset`` or a path it cannot take, naming them.
    """
    if dataset not in SOURCES_BY_NAME:
        raise ValueError(f"dataset must be one of {tuple(SOURCES_BY_NAME)}, got {dataset!r}")
    cls = SOURCES_BY_NAME[dataset]
    if dataset == "demo":
        if data_dir is not None:
            raise ValueError(f"data_dir must be None with dataset='demo', got {str(data_dir)!r}: the built-in demo set "
                             "is written to the package's cache (set $SSL_CROPMIX_CACHE to move it)")
        return DemoSource(**{k: v for k, v in policy.items() if k == "on_bad_image"})
    kw: dict[str, Any] = {}
    if train_split is not None:
        kw["train_split"] = train_split
    if val_split != "":
        kw["val_split"] = val_split
    if dataset in ("folder", "shards"):
        if data_dir is None:
            raise ValueError(f"data_dir is required for dataset={dataset!r}, got None")
        kw["root" if dataset == "folder" else "uri"] = str(data_dir)
        if dataset == "folder":
            kw.update({k: v for k, v in policy.items() if k in ("on_bad_image", "max_image_pixels")})
    else:
        kw["root"] = None if data_dir is None else str(data_dir)
        kw.update({k: v for k, v in policy.items() if k == "download"})
        if kw.get("val_split") == "val":
            kw["val_split"] = "test"
    return cls(**kw)
