"""ReconstructionGrid: MAE reconstructions of a few fixed validation images (He et al.,
2022, Fig. 2-4), to TensorBoard and as PNG files.

Each row is ``original | masked | reconstruction`` for one image; the masked panel shows
masked patches as the normalisation mean (grey), the reconstruction keeps the visible
patches and fills the masked ones with the prediction. The images (first validation
batch) and the mask (a seeded generator) are the same at every logged epoch, so the grids
show training progress only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger
from torchvision.utils import make_grid

from ssl_cropmix.data.views import IMAGENET_MEAN, IMAGENET_STD


class ReconstructionGrid(pl.Callback):
    """Log (original | masked | reconstruction) grids every ``every_n_epochs`` epochs.

    The LightningModule must provide ``reconstruct(images, generator) -> (masked,
    reconstruction)`` (as :class:`~ssl_cropmix.methods.mae.MAECropMix` does).

    Args:
        num_images: rows of the grid (taken from the first validation batch).
        every_n_epochs: log after the validation of every N-th epoch (1-based).
        mean: normalisation mean of the inputs (to display them); ImageNet's by default.
        std: normalisation std of the inputs.
        seed: seed of the masking generator (fixed masks across epochs).
        tag: TensorBoard tag and PNG file prefix.

    Shape:
        grid: ``(3, num_images * (H + 2) + 2, 3 * (W + 2) + 2)`` uint8 image.
    """

    def __init__(
        self,
        num_images: int = 4,
        every_n_epochs: int = 10,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
        tag: str = "reconstructions",
    ) -> None:
        super().__init__()
        if not isinstance(num_images, int) or isinstance(num_images, bool) or num_images < 1:
            raise ValueError(f"num_images must be a positive int, got {num_images!r}")
        if not isinstance(every_n_epochs, int) or isinstance(every_n_epochs, bool) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive int, got {every_n_epochs!r}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean and std must be 3 values (std > 0), got mean={mean!r}, std={std!r}")
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.seed = seed
        self.tag = tag
        self.images: torch.Tensor | None = None
        self.saved: list[Path] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "reconstruct", None)):
            raise TypeError(
                f"ReconstructionGrid needs a module with reconstruct(images, generator), got {type(pl_module).__name__}"
            )

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.images is None and batch_idx == 0 and dataloader_idx == 0:
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            self.images = images[: self.num_images].detach().cpu().clone()

    def _denorm(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x.float().cpu() * std + mean).clamp(0, 1)

    @torch.no_grad()
    def make_grid(self, pl_module: pl.LightningModule, images: torch.Tensor) -> torch.Tensor:
        """uint8 grid ``(3, H', W')``: one row ``original | masked | reconstruction`` per image."""
        was_training = pl_module.training
        pl_module.eval()
        try:
            generator = torch.Generator().manual_seed(self.seed)
            x = images.to(pl_module.device)
            masked, recon = pl_module.reconstruct(x, generator=generator)
        finally:
            pl_module.train(was_training)
        panels = torch.stack([self._denorm(images), self._denorm(masked), self._denorm(recon)], dim=1)
        grid = make_grid(panels.flatten(0, 1), nrow=3, padding=2, pad_value=1.0)
        return (grid * 255).round().to(torch.uint8)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.images is None:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        if not trainer.is_global_zero:
            return
        grid = self.make_grid(pl_module, self.images)
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(self.tag, grid, global_step=step)
        out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "reconstructions"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.tag}_epoch{trainer.current_epoch:04d}_step{step:07d}.png"
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
        self.saved.append(path)
