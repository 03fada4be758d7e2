"""View recipes: what a training batch is made of, one small class per kind of training.

A recipe takes only its own arguments and validates them at construction; given the data's
image size, small-image flag and normalisation it builds the training transform of the
loader workers (:meth:`ViewRecipe.worker_transform`, the functions of
:mod:`ssl_cropmix.data.views`) and, with ``augment_on="device"``, the batched device views
drawing from the same distributions (:meth:`ViewRecipe.device_views`,
:class:`~ssl_cropmix.data.device_views.DeviceViews`). The
:class:`~ssl_cropmix.data.datamodule.CropMixDataModule` that is handed a recipe asks it for
these and nothing else.

* :class:`MoCoViews`: ``((query, key), labels)`` batches (MoCoCropMix).
* :class:`MAEViews`: ``(images, labels)`` batches (MAECropMix).
* :class:`SupervisedViews`: ``(images, labels)`` batches (CropMixClassifier, paper Sec. 4);
  workers only.

From YAML (LightningCLI): ``data.init_args.views: {class_path: MoCoViews, init_args:
{query: scalemix}}``; ``ssl-cropmix fit --data.views.help MoCoViews`` lists one recipe's
arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

from ssl_cropmix.data import views as V
from ssl_cropmix.data.device_views import COLOUR_KERNELS, DecodeToUint8, DeviceViews, pad_collate
from ssl_cropmix.validation import check_bool, check_int

AUGMENT_ON = ("workers", "device")


class ViewRecipe:
    """Base of the view recipes (see the module docstring).

    Attributes:
        augment_on: ``"workers"`` (every view built per image in the loader workers) or
            ``"device"`` (workers only decode to uint8; the views are built batched on the
            training device, :mod:`ssl_cropmix.data.device_views`).
        device_max_size: ``augment_on="device"``: longest image side the workers keep
            (larger images are downscaled, aspect kept; ``None``: twice the image size).
        device_colour_kernel: ``augment_on="device"``: how the colour jitter, grayscale and
            blur run (:class:`~ssl_cropmix.data.device_views.DeviceViews`' ``colour_kernel``):
            ``"auto"`` (fused Triton kernels on CUDA after a first-batch check against the
            eager ops, eager elsewhere), ``"eager"`` or ``"fused"``.
        skip_invisible: the worker path's uint8 Mixup CropMix views (MoCo ``query="cropmix"``,
            MAE ``kind="cropmix_mixup"``) skip the crops they cannot show (within one 8-bit
            level of the full fold; :class:`~ssl_cropmix.transforms.CropMix`); ``False``
            renders every crop. Other views, and the device path, render every crop anyway.
    """

    augment_on: str = "workers"
    device_max_size: int | None = None
    device_colour_kernel: str = "auto"
    skip_invisible: bool = True
    #: the recipe's batches are ``((query, key), labels)``
    pairs: ClassVar[bool] = False

    def _set_skip_invisible(self, skip_invisible: bool, mixup: bool) -> None:
        """``skip_invisible=False`` where it changes nothing (no worker-path Mixup CropMix) is
        refused, naming what would use it."""
        self.skip_invisible = check_bool("skip_invisible", skip_invisible)
        if not self.skip_invisible and (not mixup or self.augment_on != "workers"):
            raise ValueError("skip_invisible=False is for the worker path's Mixup CropMix views (MoCoViews(query="
                             "'cropmix'), MAEViews(kind='cropmix_mixup'), augment_on='workers'); got "
                             f"{self!r}: every crop is rendered there already")

    def _set_device_path(self, augment_on: str, device_max_size: int | None, device_colour_kernel: str = "auto") -> None:
        if augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {augment_on!r}")
        if device_colour_kernel not in COLOUR_KERNELS:
            raise ValueError(f"device_colour_kernel must be one of {COLOUR_KERNELS}, got {device_colour_kernel!r}")
        if device_colour_kernel != "auto" and augment_on != "device":
            raise ValueError(f"device_colour_kernel is for augment_on='device', got device_colour_kernel="
                             f"{device_colour_kernel!r} with augment_on={augment_on!r}")
        self.device_colour_kernel = device_colour_kernel
        if device_max_size is not None:
            check_int("device_max_size", device_max_size, 1)
            if augment_on != "device":
                raise ValueError(f"device_max_size is for augment_on='device', got device_max_size={device_max_size!r} "
                                 f"with augment_on={augment_on!r}")
        self.augment_on = augment_on
        self.device_max_size = device_max_size

    def worker_transform(self, size: int, small_image: bool, mean: Sequence[float],
                         std: Sequence[float]) -> Callable[[Any], Any]:
        """The per-image training view (PIL RGB -> normalised float tensor(s))."""
        raise NotImplementedError

    def train_transform(self, size: int, small_image: bool, mean: Sequence[float],
                        std: Sequence[float]) -> Callable[[Any], Any]:
        """What the training loader's workers apply: the view, or (device path) the decode
        to uint8 ``(3, h, w)``."""
        if self.augment_on == "device":
            return DecodeToUint8(self.device_max_size or 2 * size)
        return self.worker_transform(size, small_image, mean, std)

    def collate_fn(self) -> Callable | None:
        """The training loader's collate function (device path: zero-padded uint8 batches)."""
        return pad_collate if self.augment_on == "device" else None

    def device_views(self, size: int, small_image: bool, mean: Sequence[float],
                     std: Sequence[float]) -> DeviceViews | None:
        """The batched device views of ``augment_on="device"`` (``None`` on the worker path)."""
        return None

    def init_args(self) -> dict[str, Any]:
        """The ``__init__`` arguments, plain values (recorded in checkpoints' hparams)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": ...}``: what LightningCLI writes and reads."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": self.init_args()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.init_args().items())})"


class MoCoViews(ViewRecipe):
    """MoCo pretraining pairs ``TwoViews(query, key)``: key = the MoCo v2 augmentation,
    query as chosen (:func:`~ssl_cropmix.data.views.moco_views`); no blur for small images.

    Args:
        query: ``"contrastive"`` (default: the paper's contrastive CropMix preset, App. A),
            ``"scalemix"`` (Asym-Siam's ScaleMix baseline), ``"plain"`` (the MoCo v2 key
            augmentation) or ``"cropmix"`` (generic Mixup CropMix); or a transform (from
            YAML: a ``class_path``; workers only). See :func:`~ssl_cropmix.data.views.moco_query`.
        augment_on: ``"workers"`` or ``"device"`` (see :class:`ViewRecipe`).
        device_max_size, device_colour_kernel, skip_invisible: see :class:`ViewRecipe`.

    Shape:
        PIL image -> ``((3, S, S), (3, S, S))`` float32 normalised (``S``: the image size).
    """

    pairs = True

    def __init__(self, query: V.QueryName | Callable[[Any], Any] = "contrastive",
                 augment_on: Literal["workers", "device"] = "workers", device_max_size: int | None = None,
                 device_colour_kernel: Literal["auto", "eager", "fused"] = "auto",
                 skip_invisible: bool = True) -> None:
        if not callable(query) and query not in V.QUERIES:
            raise ValueError(f"query must be one of {V.QUERIES} or a transform, got {query!r}")
        if augment_on == "device" and callable(query):
            raise ValueError(f"augment_on='device' builds the named queries {V.QUERIES}, got query={query!r}")
        self._set_device_path(augment_on, device_max_size, device_colour_kernel)
        self.query = query
        self._set_skip_invisible(skip_invisible, mixup=query == "cropmix")

    def worker_transform(self, size: int, small_image: bool, mean: Sequence[float],
                         std: Sequence[float]) -> Callable[[Any], Any]:
        return V.moco_views(self.query, size, small_image, mean=mean, std=std, skip_invisible=self.skip_invisible)

    def device_views(self, size: int, small_image: bool, mean: Sequence[float],
                     std: Sequence[float]) -> DeviceViews | None:
        if self.augment_on != "device":
            return None
        return DeviceViews(views="moco", query=str(self.query), size=size, small_image=small_image, mean=mean, std=std,
                           colour_kernel=self.device_colour_kernel)

    def init_args(self) -> dict[str, Any]:
        return {"query": self.query if isinstance(self.query, str) else None, "augment_on": self.augment_on,
                "device_max_size": self.device_max_size, "device_colour_kernel": self.device_colour_kernel,
                "skip_invisible": self.skip_invisible}


class MAEViews(ViewRecipe):
    """The MAE pretraining view (:func:`~ssl_cropmix.data.views.mae_view`).

    Args:
        kind: ``"cropmix_mixup"`` (default: the paper's CropMix MAE input, Mixup, n in
            {2, 3, 4}, the official code's defaults and the 10 %-data recipe),
            ``"cropmix_cutmix"`` (n = 2, CutMix) or ``"rrc"`` (plain MAE).
        augment_on: ``"workers"`` or ``"device"`` (see :class:`ViewRecipe`).
        device_max_size, device_colour_kernel, skip_invisible: see :class:`ViewRecipe`.

    Shape:
        PIL image -> ``(3, S, S)`` float32 normalised.
    """

    def __init__(self, kind: Literal["cropmix_mixup", "cropmix_cutmix", "rrc"] = "cropmix_mixup",
                 augment_on: Literal["workers", "device"] = "workers", device_max_size: int | None = None,
                 device_colour_kernel: Literal["auto", "eager", "fused"] = "auto",
                 skip_invisible: bool = True) -> None:
        if kind not in V.MAE_VIEWS:
            raise ValueError(f"kind must be one of {V.MAE_VIEWS}, got {kind!r}")
        self._set_device_path(augment_on, device_max_size, device_colour_kernel)
        self.kind = kind
        self._set_skip_invisible(skip_invisible, mixup=kind == "cropmix_mixup")

    def worker_transform(self, size: int, small_image: bool, mean: Sequence[float],
                         std: Sequence[float]) -> Callable[[Any], Any]:
        return V.mae_view(self.kind, size, mean=mean, std=std, skip_invisible=self.skip_invisible)

    def device_views(self, size: int, small_image: bool, mean: Sequence[float],
                     std: Sequence[float]) -> DeviceViews | None:
        if self.augment_on != "device":
            return None
        return DeviceViews(views="mae", mae_view=self.kind, size=size, small_image=small_image, mean=mean, std=std,
                           colour_kernel=self.device_colour_kernel)

    def init_args(self) -> dict[str, Any]:
        return {"kind": self.kind, "augment_on": self.augment_on, "device_max_size": self.device_max_size,
                "device_colour_kernel": self.device_colour_kernel, "skip_invisible": self.skip_invisible}


class SupervisedViews(ViewRecipe):
    """The supervised-classification training view of ``CropMixClassifier`` (paper Sec. 4;
    :func:`~ssl_cropmix.data.views.supervised_view`). Built in the loader workers.

    Args:
        kind: ``"cropmix"`` (default: CropMix with Mixup and channel permutation),
            ``"rrc"`` (the RandomResizedCrop baseline), ``"resizemix"`` (CropMix with the
            ResizeMix op) or ``"plain"`` (the probe augmentation).
        crop_scale: crop-scale range (default: (0.01, 1) for CropMix, (0.08, 1) for RRC; the
            CIFAR table uses (0.75, 1), (0.25, 1), (0.01, 1) for both).
        num_crops: CropMix ``n`` (default: 2 for small images, n in {2, 3, 4} otherwise).
        auto_augment: ``"trivialaugment"`` / ``"randaugment"`` (the stronger ImageNet
            recipes), or ``None``.
        random_erasing: random-erasing probability.

    Raises:
        ValueError: an unknown ``kind`` / ``auto_augment``, a probability outside [0, 1], or
            ``crop_scale`` / ``num_crops`` given to a kind that has none.

    Shape:
        PIL image -> ``(3, S, S)`` float32 normalised.
    """

    def __init__(self, kind: Literal["cropmix", "rrc", "resizemix", "plain"] = "cropmix",
                 crop_scale: tuple[float, float] | None = None, num_crops: int | list[int] | None = None,
                 auto_augment: Literal["trivialaugment", "randaugment"] | None = None,
                 random_erasing: float = 0.0) -> None:
        self.kind = kind
        self.crop_scale = None if crop_scale is None else tuple(crop_scale)
        self.num_crops = num_crops
        self.auto_augment = auto_augment
        self.random_erasing = random_erasing
        self.worker_transform(32, True, V.IMAGENET_MEAN, V.IMAGENET_STD)  # validates every argument once

    def worker_transform(self, size: int, small_image: bool, mean: Sequence[float],
                         std: Sequence[float]) -> Callable[[Any], Any]:
        return V.supervised_view(self.kind, size, small_image, crop_scale=self.crop_scale, num_crops=self.num_crops,
                                 auto_augment=self.auto_augment, random_erasing=self.random_erasing, mean=mean, std=std)

    def init_args(self) -> dict[str, Any]:
        return {"kind": self.kind, "crop_scale": None if self.crop_scale is None else list(self.crop_scale),
                "num_crops": self.num_crops, "auto_augment": self.auto_augment, "random_erasing": self.random_erasing}
