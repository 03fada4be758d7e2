"""Data: sources (``sources.py``), view recipes (``recipes.py``, built from the transforms of
``views.py``), robust split readers (``datasets.py``) and the ``CropMixDataModule`` (see docs/data.md).

Names are imported lazily so that ``import ssl_cropmix.data.cifar`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "BadImageCounter": "ssl_cropmix.data.datamodule",
    "CropMixDataModule": "ssl_cropmix.data.datamodule",
    "DeviceViews": "ssl_cropmix.data.device_views",
    "BadImageError": "ssl_cropmix.data.datasets",
    "BadImageWarning": "ssl_cropmix.data.datasets",
    "DEFAULT_MAX_PIXELS": "ssl_cropmix.data.datasets",
    "ImageTooLargeError": "ssl_cropmix.data.datasets",
    "NotARegularFileError": "ssl_cropmix.data.datasets",
    "ImageFolderDataset": "ssl_cropmix.data.datasets",
    "TorchvisionSplit": "ssl_cropmix.data.datasets",
    "Source": "ssl_cropmix.data.sources",
    "ImageFolderSource": "ssl_cropmix.data.sources",
    "DemoSource": "ssl_cropmix.data.sources",
    "CIFAR10Source": "ssl_cropmix.data.sources",
    "CIFAR100Source": "ssl_cropmix.data.sources",
    "STL10Source": "ssl_cropmix.data.sources",
    "ShardsSource": "ssl_cropmix.data.sources",
    "source_from_flat": "ssl_cropmix.data.sources",
    "ViewRecipe": "ssl_cropmix.data.recipes",
    "MoCoViews": "ssl_cropmix.data.recipes",
    "MAEViews": "ssl_cropmix.data.recipes",
    "SupervisedViews": "ssl_cropmix.data.recipes",
    "ViewDataset": "ssl_cropmix.data.datasets",
    "label_fraction_indices": "ssl_cropmix.data.datasets",
    "load_rgb": "ssl_cropmix.data.datasets",
    "subset_from_list": "ssl_cropmix.data.datasets",
    "TwoViews": "ssl_cropmix.data.views",
    "mae_view": "ssl_cropmix.data.views",
    "moco_query": "ssl_cropmix.data.views",
    "moco_v2_augmentation": "ssl_cropmix.data.views",
    "moco_views": "ssl_cropmix.data.views",
    "probe_views": "ssl_cropmix.data.views",
    "supervised_view": "ssl_cropmix.data.views",
    "show_views": "ssl_cropmix.data.grid",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ssl_cropmix.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = list(_EXPORTS)
