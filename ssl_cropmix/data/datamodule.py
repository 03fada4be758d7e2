"""``CropMixDataModule``: one LightningDataModule for pretraining, probing and fine-tuning.

Batches (``docs/architecture.md``):

* ``train_dataloader()``: ``views="moco"`` -> ``((query, key), labels)``; ``views="mae"``
  and ``views="supervised"`` -> ``(images, labels)``. Pretraining methods ignore labels.
* ``val_dataloader()``: ``(images, labels)`` with the evaluation transform.
* The **labelled-data provider protocol** read by the evaluation callbacks:
  ``num_classes``, ``labeled_train_dataloader(augment, batch_size, label_fraction,
  subset_file, shuffle)`` and ``labeled_val_dataloader(batch_size)``. A user's own
  DataModule only needs these three members to work with every callback.

All images are ``(B, 3, image_size, image_size)`` float32, normalised once.

``augment_on="device"``: the training loader's workers only decode (uint8, padded batches,
:class:`~ssl_cropmix.data.device_views.RawImages`) and the MoCo / MAE views are built batched
on the training device in :meth:`CropMixDataModule.on_after_batch_transfer`
(:class:`~ssl_cropmix.data.device_views.DeviceViews`); the val / labelled loaders are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from ssl_cropmix.data import views as V
from ssl_cropmix.data.datasets import DEFAULT_MAX_PIXELS
from ssl_cropmix.data.demo import check_demo_data_dir, demo_root
from ssl_cropmix.validation import check_bool, check_int
from ssl_cropmix.data.datasets import (
    BadImageWarning,
    ImageFolderDataset,
    TorchvisionSource,
    ViewDataset,
    _check_policy,
    _Source,
    label_fraction_indices,
    read_subset_file,
    subset_from_list,
    visible_subdirs,
)

DATASETS = ("folder", "demo", "cifar10", "cifar100", "stl10", "shards")
VIEWS = ("moco", "mae", "supervised")
AUGMENT_ON = ("workers", "device")
_TV_CLASSES = {"cifar10": 10, "cifar100": 100, "stl10": 10}
_TV_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "stl10": "stl10_binary"}


def _check_one_subset(label_fraction: float | None, subset_file: str | None) -> None:
    if label_fraction is not None and subset_file is not None:
        raise ValueError(
            f"give label_fraction or subset_file, not both (got {label_fraction!r} and {subset_file!r})"
        )


#: Smallest ``image_size`` accepted (see ``CropMixDataModule``).
MIN_IMAGE_SIZE = 8


class CropMixDataModule(pl.LightningDataModule):
    """Images from an ImageFolder tree or torchvision's CIFAR-10/100 / STL-10, served as
    MoCo / MAE / supervised training views plus labelled loaders for evaluation.

    Args:
        data_dir: ``dataset="folder"``: the folder holding the split directories
            (``<data_dir>/<train_split>/<class>/<images>``), or the CIFAR-10 JPEG archive
            ``cifar10-jpeg.tar.gz`` / a folder containing it (extracted once, see
            :func:`~ssl_cropmix.data.cifar.resolve_cifar10`; its val split is ``"test"``).
            torchvision datasets: their ``root`` (default ``~/.cache/ssl_cropmix/torchvision``).
            ``dataset="shards"``: a local folder or URI whose ``<train_split>`` / ``<val_split>``
            sub-folders hold shards written by ``ssl-cropmix optimize``.
        dataset: ``"folder"``, ``"demo"`` (a built-in set cut from the photos bundled with
            scikit-image, 8 classes, written once to the package's cache, never to a
            ``data_dir``; see :func:`~ssl_cropmix.data.demo.demo_root`; needs no download),
            ``"cifar10"``, ``"cifar100"``, ``"stl10"`` or ``"shards"`` (LitData shards read
            through ``StreamingDataset`` / ``StreamingDataLoader``, see
            :mod:`ssl_cropmix.data.streaming`; needs ``pip install 'ssl_cropmix[streaming]'``).
        train_split: split for training. CIFAR: ``"train"``; STL-10: ``"train"``,
            ``"unlabeled"`` or ``"train+unlabeled"`` (the labelled loaders always use
            ``"train"``).
        val_split: split for validation / evaluation (CIFAR and STL-10: ``"val"`` and
            ``"test"`` both mean the test set). ``None``: no validation loader (the online
            probe / kNN monitor then have nothing to read).
        views: ``"moco"`` (query/key pairs), ``"mae"`` (one view) or ``"supervised"``
            (supervised classification with ``CropMixClassifier``, see ``supervised_view``).
        query: MoCo query: ``"contrastive"`` (default: the paper's contrastive CropMix
            preset, App. A), ``"scalemix"`` (Asym-Siam's ScaleMix baseline), ``"plain"``
            (the MoCo v2 key augmentation) or ``"cropmix"`` (generic Mixup CropMix, not
            used by the paper for contrastive learning); or a transform (from YAML: a
            ``class_path``). See :func:`~ssl_cropmix.data.views.moco_query`.
        mae_view: ``"cropmix_mixup"`` (default: the paper's CropMix MAE input, Mixup,
            n in {2, 3, 4}, the official code's defaults and the 10 %-data recipe),
            ``"cropmix_cutmix"`` (n = 2, CutMix) or ``"rrc"`` (plain MAE). See
            :func:`~ssl_cropmix.data.views.mae_view`.
        supervised_view: ``views="supervised"`` training view (paper Sec. 4):
            ``"cropmix"`` (default: CropMix with Mixup and channel permutation),
            ``"rrc"`` (the RandomResizedCrop baseline), ``"resizemix"`` (CropMix with the
            ResizeMix op) or ``"plain"`` (the probe augmentation). See
            :func:`~ssl_cropmix.data.views.supervised_view`.
        supervised_crop_scale: crop-scale range of the supervised view (default: (0.01, 1)
            for CropMix, (0.08, 1) for RRC; the CIFAR table uses (0.75, 1), (0.25, 1),
            (0.01, 1) for both).
        supervised_num_crops: CropMix ``n`` of the supervised view (default: 2 for small
            images, n in {2, 3, 4} otherwise).
        auto_augment: ``"trivialaugment"`` / ``"randaugment"`` in the supervised view (the
            stronger ImageNet recipes), or ``None``.
        random_erasing: random-erasing probability of the supervised view.
        image_size: output side of every view, at least :data:`MIN_IMAGE_SIZE` (8 px: below
            that 2-4 crops of distinct scales are the same few pixels, and a ResNet's
            stride-2 stages or a ViT's patches leave nothing to learn from).
        small_image: small-image (CIFAR) variants: no blur in MoCo views, no centre crop in
            evaluation. ``None``: ``image_size <= 64``.
        batch_size: batch size of every loader (callbacks may ask for another).
        val_batch_size: batch size of the val / labelled loaders (default ``batch_size``).
        num_workers: DataLoader worker processes.
        label_fraction: train on a seeded class-balanced fraction of the training split
            (e.g. 0.1 for "MAE on 10 % of ImageNet", 0.01 for 1 % fine-tuning).
        subset_file: or a SimCLR-style list (``1percent.txt``) of the files to keep.
        fraction_seed: seed of ``label_fraction``.
        on_bad_image: ``"skip"`` (warn once per file, count, replace) or ``"raise"``.
        download: let torchvision download CIFAR / STL-10 (needs network).
        pin_memory: ``None``: when CUDA is available.
        persistent_workers: keep training / val workers alive between epochs.
        drop_last: drop the last incomplete training batch (pretraining loader only).
        mean, std: normalisation statistics (ImageNet's by default).
        max_image_pixels: folder images whose header claims more pixels (width x height) are
            skipped (or raise) without being decoded; ``None``: no limit of ours. Default
            ``datasets.DEFAULT_MAX_PIXELS`` (89.5 Mpx, PIL's warning threshold).
        augment_on: ``"workers"`` (every view built per image in the loader workers) or
            ``"device"`` (workers only decode; the training views are built batched on the
            training device, see :mod:`ssl_cropmix.data.device_views`; MoCo and MAE views).
        device_max_size: ``augment_on="device"``: longest image side the workers keep
            (larger images are downscaled, aspect kept; default ``2 * image_size``).

    Raises:
        ValueError: invalid argument values (the message names the argument and value).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        dataset: Literal["folder", "demo", "cifar10", "cifar100", "stl10", "shards"] = "folder",
        train_split: str = "train",
        val_split: str | None = "val",
        views: Literal["moco", "mae", "supervised"] = "moco",
        query: V.QueryName | Callable[[Any], Any] = "contrastive",
        mae_view: Literal["rrc", "cropmix_mixup", "cropmix_cutmix"] = "cropmix_mixup",
        supervised_view: Literal["cropmix", "rrc", "resizemix", "plain"] = "cropmix",
        supervised_crop_scale: tuple[float, float] | None = None,
        supervised_num_crops: int | list[int] | None = None,
        auto_augment: Literal["trivialaugment", "randaugment"] | None = None,
        random_erasing: float = 0.0,
        image_size: int = 224,
        small_image: bool | None = None,
        batch_size: int = 256,
        val_batch_size: int | None = None,
        num_workers: int = 8,
        label_fraction: float | None = None,
        subset_file: str | None = None,
        fraction_seed: int = 0,
        on_bad_image: Literal["skip", "raise"] = "skip",
        download: bool = False,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        drop_last: bool = True,
        mean: tuple[float, float, float] = V.IMAGENET_MEAN,
        std: tuple[float, float, float] = V.IMAGENET_STD,
        max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
        augment_on: Literal["workers", "device"] = "workers",
        device_max_size: int | None = None,
    ) -> None:
        super().__init__()
        if augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {augment_on!r}")
        if augment_on == "device" and (views == "supervised" or callable(query)):
            what = f"views={views!r}" if views == "supervised" else f"query={query!r}"
            raise ValueError(f"augment_on='device' builds MoCo and MAE views with the named queries, got {what}")
        if device_max_size is not None:
            check_int("device_max_size", device_max_size, 1)
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
        if views not in VIEWS:
            raise ValueError(f"views must be one of {VIEWS}, got {views!r}")
        if not callable(query) and query not in V.QUERIES:
            raise ValueError(f"query must be one of {V.QUERIES} or a transform, got {query!r}")
        if mae_view not in V.MAE_VIEWS:
            raise ValueError(f"mae_view must be one of {V.MAE_VIEWS}, got {mae_view!r}")
        if supervised_view not in V.SUPERVISED_VIEWS:
            raise ValueError(f"supervised_view must be one of {V.SUPERVISED_VIEWS}, got {supervised_view!r}")
        _check_policy(on_bad_image)
        if label_fraction is not None and not (
            isinstance(label_fraction, (int, float)) and 0 < label_fraction <= 1
        ):
            raise ValueError(f"label_fraction must be in (0, 1] or None, got {label_fraction!r}")
        _check_one_subset(label_fraction, subset_file)
        if subset_file is not None and dataset not in ("folder", "demo"):
            raise ValueError(f"subset_file needs dataset='folder', got dataset={dataset!r}")
        if dataset == "demo":
            check_demo_data_dir(data_dir)
        if dataset in ("folder", "shards") and data_dir is None:
            raise ValueError(f"data_dir is required for dataset={dataset!r}, got None")
        self.data_dir = data_dir
        self.dataset = dataset
        self.train_split = train_split
        self.val_split = val_split
        self.views = views
        self.query = query
        self.mae_view = mae_view
        self.supervised_view = supervised_view
        self.supervised_crop_scale = supervised_crop_scale
        self.supervised_num_crops = supervised_num_crops
        self.auto_augment = auto_augment
        self.random_erasing = random_erasing
        self.image_size = check_int("image_size", image_size, MIN_IMAGE_SIZE)
        self.small_image = image_size <= V.SMALL_IMAGE_MAX if small_image is None else check_bool("small_image", small_image)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.val_batch_size = check_int("val_batch_size", val_batch_size or batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.label_fraction = label_fraction
        self.subset_file = subset_file
        self.fraction_seed = check_int("fraction_seed", fraction_seed)
        self.on_bad_image = on_bad_image
        self.max_image_pixels = check_int("max_image_pixels", max_image_pixels, 1, optional=True)
        self.download = check_bool("download", download)
        self.pin_memory = check_bool("pin_memory", pin_memory, optional=True)
        self.persistent_workers = check_bool("persistent_workers", persistent_workers)
        self.drop_last = check_bool("drop_last", drop_last)
        self.mean = V._check_stats("mean", mean)
        self.std = V._check_stats("std", std)
        self.augment_on = augment_on
        self.device_max_size = device_max_size
        self._device_views: Any = None
        self._device_params: Any = None
        if views == "supervised":  # build once: invalid combinations fail at construction
            self.train_transform()
        self._sources: dict[str, _Source] = {}
        self._num_classes: int | None = None
        # ``small_image=None`` (derived from image_size) is left out of the hparams: Lightning
        # merges model and data hparams for logging and refuses a shared key with different
        # values (MoCoCropMix's own ``small_image`` is about its stem, not the views). An
        # explicit value is kept; reloading re-derives the default from ``image_size``.
        ignore = (["query"] if callable(query) else []) + (["small_image"] if small_image is None else [])
        self.save_hyperparameters(ignore=ignore or None)
        if small_image is None:  # LightningCLI passes config values even when unset
            self.hparams.pop("small_image", None)
            self._hparams_initial.pop("small_image", None)

    # ------------------------------------------------------------------ class count
    @property
    def num_classes(self) -> int:
        """Number of classes (folder: class directories of the training split)."""
        if self._num_classes is None:
            if self.dataset == "demo":
                from ssl_cropmix.data.demo import DEMO_NAMES

                self._num_classes = len(DEMO_NAMES)
            elif self.dataset in _TV_CLASSES:
                self._num_classes = _TV_CLASSES[self.dataset]
            elif self.dataset == "shards":
                self._num_classes = self.source(self._labeled_train_split()).num_classes
            else:
                root = self._split_root(self._labeled_train_split())
                self._num_classes = len(visible_subdirs(root))
        return self._num_classes

    @classmethod
    def infer_num_classes(cls, **init_args: Any) -> int | None:
        """Class count from ``__init__`` arguments alone (used by the CLI to link
        ``data.num_classes`` into a model's ``num_classes``). ``None`` when unknown."""
        try:
            return cls(**init_args).num_classes
        except (OSError, ValueError, TypeError):
            return None

    # ------------------------------------------------------------------ sources
    def _root(self) -> Path:
        if self.data_dir is None:
            from ssl_cropmix.data.cifar import cache_dir

            return cache_dir() / "torchvision"
        return Path(self.data_dir).expanduser()

    def _folder_base(self) -> Path:
        if self.dataset == "demo":  # built-in data: the package's cache, never a user's data_dir
            return demo_root()
        p = self._root()
        from ssl_cropmix.data.cifar import ARCHIVE_NAME, resolve_cifar10

        looks_cifar = p.is_file() or (
            not (p / self.train_split).is_dir() and ((p / ARCHIVE_NAME).is_file() or (p / "cifar10").is_dir())
        )
        return resolve_cifar10(p) if looks_cifar else p

    def _split_root(self, split: str) -> Path:
        base = self._folder_base()
        if not base.is_dir():
            raise FileNotFoundError(f"data_dir {str(base)!r} does not exist")
        root = base / split
        if not root.is_dir():
            found = visible_subdirs(base)
            which = "val_split" if split == self.val_split else "train_split"
            raise FileNotFoundError(
                f"split {split!r} not found: {str(root)!r} does not exist (splits found in "
                f"{str(base)!r}: {', '.join(found) or 'none'}); pass {which}=<one of them>"
            )
        return root

    def _labeled_train_split(self) -> str:
        return "train" if self.dataset == "stl10" else self.train_split

    def prepare_data(self) -> None:
        """Download torchvision datasets when ``download=True`` (rank 0 only)."""
        if self.dataset in _TV_CLASSES and self.download:
            for split in {self.train_split, self._labeled_train_split(), self.val_split} - {None}:
                self._torchvision(split, download=True)

    def _torchvision(self, split: str, download: bool = False) -> Any:
        import torchvision.datasets as tvd

        root = self._root()
        name = self.dataset
        if not download and not (root / _TV_FOLDERS[name]).is_dir():
            raise FileNotFoundError(
                f"{name} not found under data_dir={str(root)!r} (expected {_TV_FOLDERS[name]}/ there): "
                f"pass data_dir=<the folder that contains {_TV_FOLDERS[name]}/>, or download=True "
                "when the network is reachable"
                + (
                    "; the CIFAR-10 JPEG archive is read with dataset='folder', "
                    "data_dir=<path to cifar10-jpeg.tar.gz>, val_split='test'"
                    if name == "cifar10"
                    else ""
                )
            )
        try:
            if name in ("cifar10", "cifar100"):
                if split not in ("train", "val", "test"):
                    raise ValueError(f"{name} splits are 'train' and 'test' (or 'val'), got {split!r}")
                cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
                return cls(str(root), train=split == "train", download=download)
            if split not in ("train", "test", "val", "unlabeled", "train+unlabeled"):
                raise ValueError(
                    f"stl10 splits are 'train', 'test' ('val'), 'unlabeled', 'train+unlabeled', got {split!r}"
                )
            return tvd.STL10(str(root), split="test" if split == "val" else split, download=download)
        except (OSError, RuntimeError) as e:  # URLError is an OSError
            raise RuntimeError(
                f"could not {'download' if download else 'read'} {name} into {str(root)!r} ({e}); "
                f"download it where the network is reachable and pass data_dir=<folder containing "
                f"{_TV_FOLDERS[name]}/> with download=False"
            ) from e

    def source(self, split: str) -> _Source:
        """The (cached) un-transformed dataset of ``split``: ``load(i) -> (PIL RGB, label)``."""
        if split not in self._sources:
            if self.dataset == "shards":
                from ssl_cropmix.data.streaming import StreamingShards, join_uri

                self._sources[split] = StreamingShards(join_uri(self.data_dir, split))
            elif self.dataset in ("folder", "demo"):
                train = self._labeled_train_split()  # other splits are labelled with train's class index
                self._sources[split] = ImageFolderDataset(
                    self._split_root(split), on_bad_image=self.on_bad_image, max_pixels=self.max_image_pixels,
                    classes=None if split == train else self.source(train).classes,
                )
            else:
                self._sources[split] = TorchvisionSource(self._torchvision(split))
        return self._sources[split]

    def _subset(
        self, src: _Source, label_fraction: float | None, subset_file: str | None
    ) -> list[int] | None:
        if subset_file is not None:
            if not isinstance(src, ImageFolderDataset):
                raise ValueError(f"subset_file needs dataset='folder', got dataset={self.dataset!r}")
            return subset_from_list(src, read_subset_file(subset_file), list_name=repr(str(subset_file)))
        if label_fraction is not None:
            if min(src.targets) < 0:
                raise ValueError(
                    "label_fraction needs labelled images; this split has unlabelled ones (STL-10 'unlabeled')"
                )
            return label_fraction_indices(src.targets, label_fraction, self.fraction_seed, src.num_classes)
        return None

    # ------------------------------------------------------------------ transforms
    def train_transform(self) -> Callable[[Any], Any]:
        """The training view of ``views`` (see :mod:`ssl_cropmix.data.views`); with
        ``augment_on="device"`` the device path draws from the same distributions."""
        kw = dict(mean=self.mean, std=self.std)
        if self.views == "moco":
            return V.moco_views(self.query, self.image_size, self.small_image, **kw)
        if self.views == "mae":
            return V.mae_view(self.mae_view, self.image_size, **kw)
        return V.supervised_view(
            self.supervised_view,
            self.image_size,
            self.small_image,
            crop_scale=self.supervised_crop_scale,
            num_crops=self.supervised_num_crops,
            auto_augment=self.auto_augment,
            random_erasing=self.random_erasing,
            **kw,
        )

    def eval_transforms(self) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
        """``(probe_train, val)`` transforms (:func:`~ssl_cropmix.data.views.probe_views`)."""
        return V.probe_views(self.image_size, self.small_image, mean=self.mean, std=self.std)

    # ------------------------------------------------------------------ datasets / loaders
    def setup(self, stage: str | None = None) -> None:
        """Scan / open the splits needed by ``stage`` (all when ``None``)."""
        if stage in (None, "fit"):
            self.source(self.train_split)
        if stage in (None, "fit", "validate", "test") and self.val_split is not None:
            self.source(self.val_split)

    def train_dataset(self) -> ViewDataset:
        src = self.source(self.train_split)
        idx = self._subset(src, self.label_fraction, self.subset_file)
        if self.augment_on == "device":  # workers only decode; views in on_after_batch_transfer
            from ssl_cropmix.data.device_views import DecodeToUint8

            return ViewDataset(src, DecodeToUint8(self.device_max_size or 2 * self.image_size), idx)
        return ViewDataset(src, self.train_transform(), idx)

    def val_dataset(self) -> ViewDataset:
        if self.val_split is None:
            raise ValueError("val_split is None: this data module has no validation data")
        return ViewDataset(self.source(self.val_split), self.eval_transforms()[1])

    def _loader(
        self,
        ds: ViewDataset,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        persistent: bool,
        collate_fn: Callable | None = None,
    ) -> DataLoader:
        import torch

        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=pin,
            drop_last=drop_last,
            persistent_workers=persistent and self.num_workers > 0,
            collate_fn=collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        """Pretraining batches: ``((query, key), labels)`` (MoCo) or ``(images, labels)``."""
        if self.dataset == "shards":
            return self._streaming_loader(self.train_split, train=True)
        ds = self.train_dataset()
        if self.drop_last and len(ds) < self.batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the training set ({len(ds)} images) "
                "and drop_last=True would give no batch: lower batch_size"
            )
        collate = None
        if self.augment_on == "device":
            from ssl_cropmix.data.device_views import pad_collate

            collate = pad_collate
        return self._loader(ds, self.batch_size, True, self.drop_last, self.persistent_workers, collate)

    def _streaming_loader(self, split: str, train: bool) -> Any:
        """``dataset="shards"``: a ``StreamingDataLoader`` (even per-rank splits, its position
        saved in checkpoints) with the same views, label fraction and collation as the
        folder path. The shuffle seed is torch's initial seed (``seed_everything``)."""
        import torch

        src = self.source(split)
        if not train:
            return src.loader(self.eval_transforms()[1], self.val_batch_size, drop_last=False,
                              num_workers=self.num_workers, pin_memory=self._pin(),
                              persistent_workers=self.persistent_workers and self.num_workers > 0)
        idx = self._subset(src, self.label_fraction, self.subset_file)
        collate = None
        if self.augment_on == "device":
            from ssl_cropmix.data.device_views import DecodeToUint8, pad_collate

            view: Any = DecodeToUint8(self.device_max_size or 2 * self.image_size)
            collate = pad_collate
        else:
            view = self.train_transform()
        n = len(src) if idx is None else len(idx)
        if self.drop_last and n < self.batch_size:
            raise ValueError(f"batch_size={self.batch_size} is larger than the training set ({n} images) "
                             "and drop_last=True would give no batch: lower batch_size")
        return src.loader(view, self.batch_size, indices=idx, shuffle=True, seed=torch.initial_seed() % 2**32,
                          drop_last=self.drop_last or None, num_workers=self.num_workers, collate_fn=collate,
                          pin_memory=self._pin(), persistent_workers=self.persistent_workers and self.num_workers > 0)

    def _pin(self) -> bool:
        import torch

        return torch.cuda.is_available() if self.pin_memory is None else bool(self.pin_memory)

    # ------------------------------------------------------------------ device views
    @property
    def device_views(self) -> Any:
        """The :class:`~ssl_cropmix.data.device_views.DeviceViews` of ``augment_on="device"``
        (``None`` on the worker path)."""
        if self.augment_on != "device":
            return None
        if self._device_views is None:
            from ssl_cropmix.data.device_views import DeviceViews

            self._device_views = DeviceViews(
                views=self.views,  # type: ignore[arg-type]
                query=self.query,
                mae_view=self.mae_view,
                size=self.image_size,
                small_image=self.small_image,
                mean=self.mean,
                std=self.std,
            )
        return self._device_views

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """``augment_on="device"``: draw the batch's view parameters on the CPU while the
        sizes are still there (no host-device synchronisation); other batches pass.
        The generator is seeded on first use from torch's global RNG and the global rank, so
        each DDP rank augments its own batch differently and a seeded run repeats."""
        from ssl_cropmix.data.device_views import RawImages

        if isinstance(batch, RawImages):
            self._device_params = self._sample_device_params(batch.sizes)
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """``augment_on="device"``: turn a decoded training batch (already on the training
        device) into ``((query, key), labels)`` / ``(images, labels)`` with the parameters
        drawn in :meth:`on_before_batch_transfer`; other batches pass."""
        from ssl_cropmix.data.device_views import RawImages

        if not isinstance(batch, RawImages):
            return batch
        params, self._device_params = self._device_params, None
        if params is None:  # called without the "before" hook (e.g. by hand)
            params = self._sample_device_params(batch.sizes)
        views = self.device_views.apply(batch.images, params)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:  # Lightning converted the uint8 batch before these views existed:
            views = trainer.precision_plugin.convert_input(views)  # bf16 / fp16 for "*-true"
        return views, batch.labels

    def _sample_device_params(self, sizes: Any) -> Any:
        """``device_views.sample(sizes)``, seeding its generator for the trainer's global rank
        on first use."""
        dv = self.device_views
        if dv.generator is None:
            dv.seed_for_rank(int(getattr(getattr(self, "trainer", None), "global_rank", 0) or 0))
        return dv.sample(sizes)

    def val_dataloader(self) -> DataLoader | list:
        """``(images, labels)`` of ``val_split`` with the evaluation transform (no shuffle);
        ``[]`` (no validation) when ``val_split`` is ``None``."""
        if self.val_split is None:
            return []
        if self.dataset == "shards":
            return self._streaming_loader(self.val_split, train=False)
        return self._loader(self.val_dataset(), self.val_batch_size, False, False, self.persistent_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    # ------------------------------------------------------------------ provider protocol
    def labeled_train_dataloader(
        self,
        augment: bool = True,
        batch_size: int | None = None,
        label_fraction: float | None = None,
        subset_file: str | None = None,
        shuffle: bool = True,
    ) -> DataLoader:
        """Labelled training images for probes / fine-tuning: ``(images, labels)``.

        Args:
            augment: probe-train augmentation (RRC + flip; small images: pad-crop + flip);
                ``False`` uses the deterministic evaluation transform (feature banks).
            batch_size: default ``val_batch_size``.
            label_fraction: seeded class-balanced fraction (``fraction_seed``) of the
                labelled training split; ``None`` (and no ``subset_file``) = all of it. The
                DataModule's own ``label_fraction`` applies to ``train_dataloader`` only.
            subset_file: SimCLR-style list file instead of ``label_fraction``.
            shuffle: shuffle every epoch. Never drops the last batch.

        Shape:
            batches ``(B, 3, image_size, image_size)`` float32 normalised, ``(B,)`` int64.
        """
        _check_one_subset(label_fraction, subset_file)
        src = self.source(self._labeled_train_split())
        idx = self._subset(src, label_fraction, subset_file)
        train_tf, val_tf = self.eval_transforms()
        ds = ViewDataset(src, train_tf if augment else val_tf, idx)
        return self._loader(ds, batch_size or self.val_batch_size, shuffle, False, False)

    def labeled_val_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """Labelled validation images ``(images, labels)``, evaluation transform, in order."""
        return self._loader(self.val_dataset(), batch_size or self.val_batch_size, False, False, False)

    # ------------------------------------------------------------------ bad images
    @property
    def bad_image_count(self) -> int:
        """Skips so far, over every split and worker process (each unreadable file once per
        pass over a loader; see ``datasets._Source.skipped``)."""
        return sum(s.skipped for s in self._sources.values())

    @property
    def bad_files(self) -> list[str]:
        """Files found unreadable so far."""
        return [f for s in self._sources.values() for f in s.bad_files]


class BadImageCounter(pl.Callback):
    """Logs ``data/bad_images`` (skips during the epoch, all splits and workers) at the end of
    every training epoch and warns when it is non-zero, so a long run never loses images
    silently. Works with any DataModule that has a ``bad_image_count`` attribute.

    Attributes:
        history: the per-epoch counts.
    """

    def __init__(self, name: str = "data/bad_images") -> None:
        super().__init__()
        self.name = name
        self.history: list[int] = []
        self._last = 0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        total = int(getattr(dm, "bad_image_count", 0) or 0)
        count, self._last = total - self._last, total
        self.history.append(count)
        pl_module.log(self.name, float(count), on_epoch=True, on_step=False, rank_zero_only=True)
        if count:
            rank_zero_warn(
                f"epoch {trainer.current_epoch}: {count} unreadable image(s) skipped "
                f"({total} so far); files: {', '.join(getattr(dm, 'bad_files', [])[:5])}",
                category=BadImageWarning,
            )

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
