"""Run the paper's robustness protocol (Tables 2 / 7) when training ends.

The callback only decides *when* and *on what*; the protocol is
:class:`~ssl_cropmix.evaluation.robustness.RobustnessEvaluation`, run by a new ``Trainer`` on the
training's hardware (:func:`~ssl_cropmix.evaluation.runner.evaluation_trainer` with
``inference_mode=False``: FGSM needs input gradients). It runs in ``on_train_end``, on every
rank, before Lightning's strategy teardown moves the module to the CPU.

Classifier protocol: the trained module either returns logits from ``forward``
(``CropMixClassifier``) or has a ``classifier`` attribute that does
(:func:`~ssl_cropmix.evaluation.robustness.resolve_classifier`). A pretraining module without
a classifier head (MoCo, MAE) needs fine-tuning first: evaluate the fine-tuned checkpoint
with ``ssl-cropmix robustness``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from torch.utils.data import Dataset

from ssl_cropmix.data.views import IMAGENET_MEAN, IMAGENET_STD
from ssl_cropmix.evaluation.robustness import (
    resolve_classifier,
    robustness_sets,
    run_robustness,
    write_robustness_table,
)


class RobustnessCallback(Callback):
    """Clean / RMS / FGSM / Replace / Noise / IN-A / IN-R / IN-S of the trained classifier.

    The clean set is ``val`` when given (an ImageFolder directory or a dataset of
    ``(normalised image, label)``), else the DataModule's ``labeled_val_dataloader()``
    dataset (the labelled-data provider protocol). Sets left ``None`` are reported as
    "not given". The table is written to ``results_dir`` (default: ``trainer.log_dir``, else
    ``default_root_dir``) as ``robustness-epoch<E>-step<S>.md`` / ``.json``, by rank 0.

    Args:
        val, replace, noise, imagenet_a, imagenet_r, imagenet_sketch: test-set folders
            (see :func:`~ssl_cropmix.evaluation.robustness.robustness_sets`).
        imagenet_wnids: ImageNet-1k wnid list (file or ImageNet train folder; ``None``: timm's).
        image_size: evaluation size; ``None``: the DataModule's ``image_size`` (else 224).
        batch_size, num_workers: test loaders.
        fgsm_eps: FGSM budget in [0, 1] pixel units (paper: 8/255).
        calibration_bin_size: PixMix's adaptive bin size (100).
        results_dir: where the table goes.
        trainer_kwargs: overrides for the evaluation Trainer (e.g. ``{"precision": "32-true"}``).
    """

    def __init__(
        self,
        val: str | os.PathLike | Dataset | None = None,
        replace: str | os.PathLike | None = None,
        noise: str | os.PathLike | None = None,
        imagenet_a: str | os.PathLike | None = None,
        imagenet_r: str | os.PathLike | None = None,
        imagenet_sketch: str | os.PathLike | None = None,
        imagenet_wnids: str | os.PathLike | Sequence[str] | None = None,
        image_size: int | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        fgsm_eps: float = 8 / 255,
        calibration_bin_size: int = 100,
        results_dir: str | os.PathLike | None = None,
        trainer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
            raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not (0 <= fgsm_eps <= 1):
            raise ValueError(f"fgsm_eps must be in [0, 1] (pixel units), got {fgsm_eps!r}")
        if not isinstance(calibration_bin_size, int) or calibration_bin_size < 1:
            raise ValueError(f"calibration_bin_size must be an int >= 1, got {calibration_bin_size!r}")
        self.paths = {"replace": replace, "noise": noise, "imagenet_a": imagenet_a,
                      "imagenet_r": imagenet_r, "imagenet_sketch": imagenet_sketch}
        self.val = val
        self.imagenet_wnids = imagenet_wnids
        self.image_size = image_size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.fgsm_eps, self.calibration_bin_size = fgsm_eps, calibration_bin_size
        self.results_dir = results_dir
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self.last_results: dict[str, dict[str, float]] | None = None
        self.last_paths: tuple[Path, Path] | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = getattr(trainer, "datamodule", None)
        mean = tuple(getattr(dm, "mean", IMAGENET_MEAN))
        std = tuple(getattr(dm, "std", IMAGENET_STD))
        size = self.image_size or int(getattr(dm, "image_size", 224))
        val: Any = self.val
        if val is None:
            get_val = getattr(dm, "labeled_val_dataloader", None)
            if not callable(get_val):
                raise ValueError(
                    "RobustnessCallback needs the clean validation set: pass val=<ImageFolder dir> or use a "
                    "DataModule with labeled_val_dataloader()"
                )
            val = get_val(batch_size=self.batch_size).dataset
        sets = robustness_sets(val, image_size=size, mean=mean, std=std, imagenet_wnids=self.imagenet_wnids,
                               **self.paths)
        module = run_robustness(
            resolve_classifier(pl_module), sets, trainer=trainer, batch_size=self.batch_size,
            num_workers=self.num_workers, trainer_kwargs=self.trainer_kwargs, mean=mean, std=std,
            fgsm_eps=self.fgsm_eps, calibration_bin_size=self.calibration_bin_size,
        )
        self.last_results = module.results
        if trainer.is_global_zero:
            out = Path(self.results_dir or trainer.log_dir or trainer.default_root_dir)
            name = f"{type(pl_module).__name__} at epoch {trainer.current_epoch}, step {trainer.global_step}"
            proto = {"sets": {s.name: _describe(s.dataset) for s in sets}, "image_size": size}
            self.last_paths = write_robustness_table(
                module, out, name, stem=f"robustness-epoch{trainer.current_epoch}-step{trainer.global_step}",
                protocol=proto,
            )


def _describe(dataset: Any) -> str:
    root = getattr(dataset, "root", None)
    return f"{type(dataset).__name__}({str(root)!r}, n={len(dataset)})" if root is not None else \
        f"{type(dataset).__name__}(n={len(dataset)})"
