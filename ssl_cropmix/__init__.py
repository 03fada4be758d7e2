"""ssl_cropmix: CropMix (Han et al., 2022) for self-supervised pretraining with Lightning.

The public API is re-exported here lazily, so ``import ssl_cropmix`` stays cheap and a
user who only wants the transforms never imports Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # transforms
    "CropMix": "ssl_cropmix.transforms",
    "CropMixParams": "ssl_cropmix.transforms",
    "ScaleMix": "ssl_cropmix.transforms",
    "ResizeMix": "ssl_cropmix.transforms",
    "contrastive_cropmix": "ssl_cropmix.transforms",
    # data
    "CropMixDataModule": "ssl_cropmix.data.datamodule",
    "BadImageCounter": "ssl_cropmix.data.datamodule",
    "ImageFolderSource": "ssl_cropmix.data.sources",
    "DemoSource": "ssl_cropmix.data.sources",
    "CIFAR10Source": "ssl_cropmix.data.sources",
    "CIFAR100Source": "ssl_cropmix.data.sources",
    "STL10Source": "ssl_cropmix.data.sources",
    "ShardsSource": "ssl_cropmix.data.sources",
    "MoCoViews": "ssl_cropmix.data.recipes",
    "MAEViews": "ssl_cropmix.data.recipes",
    "SupervisedViews": "ssl_cropmix.data.recipes",
    "moco_views": "ssl_cropmix.data.views",
    "mae_view": "ssl_cropmix.data.views",
    "probe_views": "ssl_cropmix.data.views",
    "supervised_view": "ssl_cropmix.data.views",
    "show_views": "ssl_cropmix.data.grid",
    # models, losses, methods
    "build_backbone": "ssl_cropmix.models",
    "MomentumQueue": "ssl_cropmix.models",
    "infonce_queue_loss": "ssl_cropmix.losses",
    "MoCoCropMix": "ssl_cropmix.methods.moco",
    "MAECropMix": "ssl_cropmix.methods.mae",
    "CropMixClassifier": "ssl_cropmix.methods.classifier",
    # callbacks
    "OnlineLinearProbe": "ssl_cropmix.callbacks.online_probe",
    "LinearProbe": "ssl_cropmix.callbacks.linear_probe",
    "KNNMonitor": "ssl_cropmix.callbacks.knn",
    "SemiSupervisedFineTune": "ssl_cropmix.callbacks.finetune",
    "finetune_from_checkpoint": "ssl_cropmix.callbacks.finetune",
    "MAEFineTune": "ssl_cropmix.callbacks.finetune",
    "RunSummary": "ssl_cropmix.callbacks.summary",
    "RobustnessCallback": "ssl_cropmix.callbacks.robustness",
    "RobustnessEvaluation": "ssl_cropmix.evaluation.robustness",
    "ReconstructionGrid": "ssl_cropmix.callbacks.reconstruction",
    # checkpoints and export
    "load_backbone": "ssl_cropmix.checkpoints",
    "export_backbone": "ssl_cropmix.export",
    "load_exported": "ssl_cropmix.export",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ssl_cropmix' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["__version__", *_EXPORTS]
