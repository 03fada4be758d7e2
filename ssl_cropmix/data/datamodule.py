"""``CropMixDataModule``: one LightningDataModule for pretraining, probing and fine-tuning.

Batches (``docs/architecture.md``):

* ``train_dataloader()``: ``MoCoViews`` -> ``((query, key), labels)``; ``MAEViews`` and
  ``SupervisedViews`` -> ``(images, labels)``. Pretraining methods ignore labels.
* ``val_dataloader()``: ``(images, labels)`` with the evaluation transform.
* The **labelled-data provider protocol** read by the evaluation callbacks:
  ``num_classes``, ``labeled_train_dataloader(augment, batch_size, label_fraction,
  subset_file, shuffle)`` and ``labeled_val_dataloader(batch_size)``. A user's own
  DataModule only needs these three members to work with every callback.

All images are ``(B, 3, image_size, image_size)`` float32, normalised once.

The data module is composed of two typed parts (``docs/data.md``): a *source*
(:mod:`ssl_cropmix.data.sources`: which images, splits, class index, bad-image policy) and a
*view recipe* (:mod:`ssl_cropmix.data.recipes`: the training views and where they are built),
plus loader and label-fraction settings that mean the same for every combination.

``views=MoCoViews(augment_on="device")`` (or ``MAEViews``): the training loader's workers only decode (uint8, padded batches,
:class:`~ssl_cropmix.data.device_views.RawImages`) and the MoCo / MAE views are built batched
on the training device in :meth:`CropMixDataModule.on_after_batch_transfer`
(:class:`~ssl_cropmix.data.device_views.DeviceViews`); the val / labelled loaders are unchanged.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from ssl_cropmix.data import views as V
from ssl_cropmix.data.datasets import (
    BadImageWarning,
    ImageFolderDataset,
    ViewDataset,
    _Source,
    label_fraction_indices,
    read_subset_file,
    subset_from_list,
)
from ssl_cropmix.data.device_views import RawImages
from ssl_cropmix.data.recipes import MoCoViews, ViewRecipe
from ssl_cropmix.data.sources import Source
from ssl_cropmix.validation import check_bool, check_int


def build_part(value: Any, base: type, name: str) -> Any:
    """``value`` if it is a ``base`` already, else built from its ``{"class_path", "init_args"}``
    config (as LightningCLI writes it and checkpoints record it). Only classes of
    ``ssl_cropmix.data`` are built from a config.

    Raises:
        ValueError: a config naming a class outside ``ssl_cropmix.data`` or not a ``base``.
        TypeError: anything else.
    """
    if isinstance(value, base):
        return value
    if not hasattr(value, "get") or not value.get("class_path"):
        raise TypeError(f"{name} must be a {base.__name__} or its class_path / init_args config, got {value!r}")
    path = str(value["class_path"])
    mod, _, cls_name = path.rpartition(".")
    if not mod.startswith("ssl_cropmix.data."):
        raise ValueError(f"{name} class_path must name a class of ssl_cropmix.data, got {path!r}")
    cls = getattr(importlib.import_module(mod), cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{name} class_path must name a {base.__name__}, got {path!r}")
    return cls(**dict(value.get("init_args") or {}))


def _check_one_subset(label_fraction: float | None, subset_file: str | None) -> None:
    if label_fraction is not None and subset_file is not None:
        raise ValueError(
            f"give label_fraction or subset_file, not both (got {label_fraction!r} and {subset_file!r})"
        )


#: Smallest ``image_size`` accepted (see ``CropMixDataModule``).
MIN_IMAGE_SIZE = 8


class CropMixDataModule(pl.LightningDataModule):
    """Images of a :class:`~ssl_cropmix.data.sources.Source` served as the training views of a
    :class:`~ssl_cropmix.data.recipes.ViewRecipe`, plus labelled loaders for evaluation.

    Args:
        source: where the images come from, with its splits and bad-image policy:
            :class:`~ssl_cropmix.data.sources.ImageFolderSource` (any ImageFolder tree or the
            CIFAR-10 JPEG archive), ``DemoSource`` (built in, no download), ``CIFAR10Source``,
            ``CIFAR100Source``, ``STL10Source`` or ``ShardsSource`` (LitData shards).
        views: the training views: :class:`~ssl_cropmix.data.recipes.MoCoViews` (query/key
            pairs; the default ``None`` means ``MoCoViews()``), ``MAEViews`` (one view) or
            ``SupervisedViews`` (``CropMixClassifier``); each says where it is built
            (``augment_on``).
        image_size: output side of every view, at least :data:`MIN_IMAGE_SIZE` (8 px: below
            that 2-4 crops of distinct scales are the same few pixels, and a ResNet's
            stride-2 stages or a ViT's patches leave nothing to learn from).
        small_image: small-image (CIFAR) variants: no blur in MoCo views, no centre crop in
            evaluation. ``None``: ``image_size <= 64``.
        mean, std: normalisation statistics (ImageNet's by default).
        batch_size: batch size of every loader (callbacks may ask for another).
        val_batch_size: batch size of the val / labelled loaders (default ``batch_size``).
        num_workers: DataLoader worker processes.
        pin_memory: ``None``: when CUDA is available.
        persistent_workers: keep training / val workers alive between epochs.
        drop_last: drop the last incomplete training batch (pretraining loader only).
        label_fraction: train on a seeded class-balanced fraction of the training split
            (e.g. 0.1 for "MAE on 10 % of ImageNet", 0.01 for 1 % fine-tuning).
        subset_file: or a SimCLR-style list (``1percent.txt``) of the files to keep
            (file-based sources: ``ImageFolderSource``, ``DemoSource``).
        fraction_seed: seed of ``label_fraction``.

    Raises:
        ValueError: invalid argument values (the message names the argument and value).
        TypeError: ``source`` / ``views`` of the wrong kind.
    """

    def __init__(
        self,
        source: Source,
        views: ViewRecipe | None = None,
        image_size: int = 224,
        small_image: bool | None = None,
        mean: tuple[float, float, float] = V.IMAGENET_MEAN,
        std: tuple[float, float, float] = V.IMAGENET_STD,
        batch_size: int = 256,
        val_batch_size: int | None = None,
        num_workers: int = 8,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        drop_last: bool = True,
        label_fraction: float | None = None,
        subset_file: str | None = None,
        fraction_seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(source, Source):
            raise TypeError(f"source must be a ssl_cropmix.data.sources.Source (e.g. ImageFolderSource(root)), "
                            f"got {source!r}")
        views = MoCoViews() if views is None else views
        if not isinstance(views, ViewRecipe):
            raise TypeError(f"views must be a ssl_cropmix.data.recipes.ViewRecipe (MoCoViews, MAEViews, "
                            f"SupervisedViews), got {views!r}")
        if label_fraction is not None and not (
            isinstance(label_fraction, (int, float)) and 0 < label_fraction <= 1
        ):
            raise ValueError(f"label_fraction must be in (0, 1] or None, got {label_fraction!r}")
        _check_one_subset(label_fraction, subset_file)
        if subset_file is not None and not source.has_files:
            raise ValueError(f"subset_file needs a file-based source (ImageFolderSource, DemoSource), got {source!r}")
        self.source = source
        self.views = views
        self.image_size = check_int("image_size", image_size, MIN_IMAGE_SIZE)
        self.small_image = image_size <= V.SMALL_IMAGE_MAX if small_image is None else check_bool("small_image", small_image)
        self.mean = V._check_stats("mean", mean)
        self.std = V._check_stats("std", std)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.val_batch_size = check_int("val_batch_size", val_batch_size or batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.pin_memory = check_bool("pin_memory", pin_memory, optional=True)
        self.persistent_workers = check_bool("persistent_workers", persistent_workers)
        self.drop_last = check_bool("drop_last", drop_last)
        self.label_fraction = label_fraction
        self.subset_file = subset_file
        self.fraction_seed = check_int("fraction_seed", fraction_seed)
        self._device_views: Any = None
        self._device_params: Any = None
        self._readers: dict[str, _Source] = {}
        self._num_classes: int | None = None
        # Plain values only (checkpoints are read with weights_only=True): the source and the
        # recipe as class_path / init_args, as LightningCLI writes them. ``small_image=None``
        # (derived from image_size) is left out: Lightning merges model and data hparams for
        # logging and refuses a shared key with different values (MoCoCropMix's own
        # ``small_image`` is about its stem, not the views).
        hp = {"source": source.config(), "views": views.config(), "image_size": image_size, "small_image": small_image,
              "mean": list(self.mean), "std": list(self.std), "batch_size": batch_size, "val_batch_size": val_batch_size,
              "num_workers": num_workers, "pin_memory": pin_memory, "persistent_workers": persistent_workers,
              "drop_last": drop_last, "label_fraction": label_fraction, "subset_file": subset_file,
              "fraction_seed": fraction_seed}
        if small_image is None:
            hp.pop("small_image")
        self.save_hyperparameters(hp)
        if small_image is None:  # LightningCLI hands its config in as the hparams, unset values included
            self.hparams.pop("small_image", None)
            self._hparams_initial.pop("small_image", None)

    # ------------------------------------------------------------------ class count
    @property
    def num_classes(self) -> int:
        """Number of classes of the source (folder: class directories of the training split)."""
        if self._num_classes is None:
            self._num_classes = self.source.num_classes
        return self._num_classes

    @classmethod
    def infer_num_classes(cls, **init_args: Any) -> int | None:
        """Class count from ``__init__`` arguments alone (used by the CLI to link
        ``data.num_classes`` into a model's ``num_classes``; ``source`` may be given as its
        ``class_path`` / ``init_args`` config). ``None`` when unknown."""
        try:
            return build_part(init_args.get("source"), Source, "source").num_classes
        except (OSError, ValueError, TypeError):
            return None

    # ------------------------------------------------------------------ sources
    def prepare_data(self) -> None:
        """Download what the source needs (``download=True``; rank 0 only)."""
        self.source.prepare()

    def reader(self, split: str) -> _Source:
        """The (cached) un-transformed reader of ``split``: ``load(i) -> (PIL RGB, label)``;
        every split is labelled with the labelled split's class index."""
        if split not in self._readers:
            labeled = self.source.labeled_split
            classes = None if split == labeled else list(self.reader(labeled).classes)
            self._readers[split] = self.source.open(split, classes)
        return self._readers[split]

    def _subset(
        self, src: _Source, label_fraction: float | None, subset_file: str | None
    ) -> list[int] | None:
        if subset_file is not None:
            if not isinstance(src, ImageFolderDataset):
                raise ValueError(f"subset_file needs a file-based source, got {self.source!r}")
            return subset_from_list(src, read_subset_file(subset_file), list_name=repr(str(subset_file)))
        if label_fraction is not None:
            if min(src.targets) < 0:
                raise ValueError(
                    "label_fraction needs labelled images; this split has unlabelled ones (STL-10 'unlabeled')"
                )
            return label_fraction_indices(src.targets, label_fraction, self.fraction_seed, src.num_classes)
        return None

    # ------------------------------------------------------------------ transforms
    def _view_args(self) -> tuple[int, bool, tuple[float, ...], tuple[float, ...]]:
        return self.image_size, self.small_image, self.mean, self.std

    def train_transform(self) -> Callable[[Any], Any]:
        """The per-image training view of the recipe (``views.worker_transform``); with
        ``augment_on="device"`` the device path draws from the same distributions."""
        return self.views.worker_transform(*self._view_args())

    def eval_transforms(self) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
        """``(probe_train, val)`` transforms (:func:`~ssl_cropmix.data.views.probe_views`)."""
        return V.probe_views(self.image_size, self.small_image, mean=self.mean, std=self.std)

    # ------------------------------------------------------------------ datasets / loaders
    def setup(self, stage: str | None = None) -> None:
        """Scan / open the splits needed by ``stage`` (all when ``None``)."""
        if stage in (None, "fit"):
            self.reader(self.source.train_split)
        if stage in (None, "fit", "validate", "test") and self.source.val_split is not None:
            self.reader(self.source.val_split)

    def train_dataset(self) -> ViewDataset:
        """The training split (label fraction applied) with the recipe's worker transform
        (device path: the decode to uint8; the views come in ``on_after_batch_transfer``)."""
        src = self.reader(self.source.train_split)
        idx = self._subset(src, self.label_fraction, self.subset_file)
        return ViewDataset(src, self.views.train_transform(*self._view_args()), idx)

    def val_dataset(self) -> ViewDataset:
        if self.source.val_split is None:
            raise ValueError("val_split is None: this data module has no validation data")
        return ViewDataset(self.reader(self.source.val_split), self.eval_transforms()[1])

    def _pin(self) -> bool:
        import torch

        return torch.cuda.is_available() if self.pin_memory is None else bool(self.pin_memory)

    def _loader(
        self,
        ds: ViewDataset,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        persistent: bool,
        collate_fn: Callable | None = None,
    ) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self._pin(),
            drop_last=drop_last,
            persistent_workers=persistent and self.num_workers > 0,
            collate_fn=collate_fn,
        )

    def _check_batch_fits(self, n: int) -> None:
        if self.drop_last and n < self.batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the training set ({n} images) "
                "and drop_last=True would give no batch: lower batch_size"
            )

    def train_dataloader(self) -> DataLoader:
        """Pretraining batches: ``((query, key), labels)`` (MoCo) or ``(images, labels)``."""
        if self.source.streaming:
            return self._streaming_loader(self.source.train_split, train=True)
        ds = self.train_dataset()
        self._check_batch_fits(len(ds))
        return self._loader(ds, self.batch_size, True, self.drop_last, self.persistent_workers, self.views.collate_fn())

    def _streaming_loader(self, split: str, train: bool) -> Any:
        """A streaming source's ``StreamingDataLoader`` (even per-rank splits, its position
        saved in checkpoints) with the same views, label fraction and collation as the
        file path. The shuffle seed is torch's initial seed (``seed_everything``)."""
        import torch

        src: Any = self.reader(split)
        persistent = self.persistent_workers and self.num_workers > 0
        if not train:
            return src.loader(self.eval_transforms()[1], self.val_batch_size, drop_last=False,
                              num_workers=self.num_workers, pin_memory=self._pin(), persistent_workers=persistent)
        idx = self._subset(src, self.label_fraction, self.subset_file)
        self._check_batch_fits(len(src) if idx is None else len(idx))
        return src.loader(self.views.train_transform(*self._view_args()), self.batch_size, indices=idx, shuffle=True,
                          seed=torch.initial_seed() % 2**32, drop_last=self.drop_last or None,
                          num_workers=self.num_workers, collate_fn=self.views.collate_fn(), pin_memory=self._pin(),
                          persistent_workers=persistent)

    # ------------------------------------------------------------------ device views
    @property
    def device_views(self) -> Any:
        """The recipe's :class:`~ssl_cropmix.data.device_views.DeviceViews` of
        ``augment_on="device"`` (``None`` on the worker path)."""
        if self._device_views is None:
            self._device_views = self.views.device_views(*self._view_args())
        return self._device_views

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """``augment_on="device"``: draw the batch's view parameters on the CPU while the
        sizes are still there (no host-device synchronisation); other batches pass.
        The generator is seeded on first use from torch's global RNG and the global rank, so
        each DDP rank augments its own batch differently and a seeded run repeats."""
        if isinstance(batch, RawImages):
            self._device_params = self._sample_device_params(batch.sizes)
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """``augment_on="device"``: turn a decoded training batch (already on the training
        device) into ``((query, key), labels)`` / ``(images, labels)`` with the parameters
        drawn in :meth:`on_before_batch_transfer`; other batches pass."""
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
        if self.source.val_split is None:
            return []
        if self.source.streaming:
            return self._streaming_loader(self.source.val_split, train=False)
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
        src = self.reader(self.source.labeled_split)
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
        return sum(s.skipped for s in self._readers.values())

    @property
    def bad_files(self) -> list[str]:
        """Files found unreadable so far."""
        return [f for s in self._readers.values() for f in s.bad_files]


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
