"""ReconstructionGrid: MAE reconstructions of a few fixed validation images (He et al.,
2022, Fig. 2-4), to TensorBoard and as PNG files.

Each row is ``original | masked | reconstruction`` for one image (the saved and logged
images carry these column titles); the masked panel shows
masked patches as the normalisation mean (grey), the reconstruction keeps the visible
patches and fills the masked ones with the prediction. The images (first validation
batches, gathered until ``num_images`` are there) and the mask (a seeded generator) are the
same at every logged epoch, so the grids show training progress only. If the validation
loop yields fewer images than ``num_images`` (a small val set, ``limit_val_batches``) the
grid has fewer rows and a warning says so once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, ImageDraw, ImageFont
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.loggers import TensorBoardLogger
from torchvision.utils import make_grid

from ssl_cropmix.data.views import IMAGENET_MEAN, IMAGENET_STD


class ReconstructionGrid(pl.Callback):
    """Log (original | masked | reconstruction) grids every ``every_n_epochs`` epochs.

    The LightningModule must provide ``reconstruct(images, generator) -> (masked,
    reconstruction)`` (as :class:`~ssl_cropmix.methods.mae.MAECropMix` does).

    Args:
        num_images: rows of the grid (the first ``num_images`` validation images, over as
            many batches as needed).
        every_n_epochs: log after the validation of every N-th epoch (1-based).
        mean: normalisation mean of the inputs (to display them); ImageNet's by default.
        std: normalisation std of the inputs.
        seed: seed of the masking generator (fixed masks across epochs).
        tag: TensorBoard tag and PNG file prefix.

    Shape:
        grid (:meth:`make_grid`): ``(3, num_images * (H + 2) + 2, 3 * (W + 2) + 2)`` uint8;
        the saved / logged image (:meth:`with_headers`) has :data:`HEADER_HEIGHT` more rows.
    """

    #: height in pixels of the column-title strip above the saved / logged grids
    HEADER_HEIGHT = 14
    COLUMNS = ("original", "masked", "reconstruction")

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
        self._collected = False  # the fixed images are complete (or the val loop had no more)
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
        if self._collected or dataloader_idx != 0:
            return
        have = 0 if self.images is None else len(self.images)
        if have >= self.num_images:
            return
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        take = images[: self.num_images - have].detach().cpu().clone()
        self.images = take if self.images is None else torch.cat([self.images, take])

    def _finish_collecting(self, trainer: pl.Trainer) -> None:
        have = 0 if self.images is None else len(self.images)
        if trainer.sanity_checking and have < self.num_images:
            self.images = None  # the real validation epoch sees these batches again, and more
            return
        self._collected = True
        if 0 < have < self.num_images:
            rank_zero_warn(
                f"ReconstructionGrid: the validation loop gave {have} image(s), fewer than "
                f"num_images={self.num_images}; the grids show {have} row(s) (more validation "
                "batches, e.g. a higher limit_val_batches, give more)"
            )

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

    def with_headers(self, grid: torch.Tensor) -> torch.Tensor:
        """``grid`` with a white strip of column titles on top (what is saved and logged).

        Shape:
            ``(3, H, W) -> (3, HEADER_HEIGHT + H, W)`` uint8.
        """
        height, width = self.HEADER_HEIGHT, grid.shape[-1]
        strip = Image.new("RGB", (width, height), (255, 255, 255))
        draw = ImageDraw.Draw(strip)
        col = (width - 2) / 3  # make_grid: 2-px padding around and between the panels
        for k, title in enumerate(self.COLUMNS):
            text, size = title, height - 3
            font = ImageFont.load_default(size=size)
            while size > 6 and draw.textlength(text, font=font) > col - 2:
                size -= 1
                font = ImageFont.load_default(size=size)
            while len(text) > 1 and draw.textlength(text, font=font) > col - 2:
                text = text[:-1]  # narrow panels (32 px): "reconstruction" -> "recon"...
            x = 2 + k * col + (col - 2 - draw.textlength(text, font=font)) / 2
            draw.text((x, 1), text, fill=(0, 0, 0), font=font)
        header = torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1)
        return torch.cat([header, grid], dim=1)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._collected:
            self._finish_collecting(trainer)
        if trainer.sanity_checking or self.images is None:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        if not trainer.is_global_zero:
            return
        grid = self.with_headers(self.make_grid(pl_module, self.images))
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(self.tag, grid, global_step=step)
        out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "reconstructions"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.tag}_epoch{trainer.current_epoch:04d}_step{step:07d}.png"
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
        self.saved.append(path)
