"""ReconstructionGrid: fixed images and masks, panels, PNG files and TensorBoard images."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from ssl_cropmix.callbacks.reconstruction import ReconstructionGrid
from ssl_cropmix.methods.mae import MAECropMix

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tiny_mae() -> MAECropMix:
    return MAECropMix("vit_tiny_patch16_224", img_size=32, patch_size=4, vit_kwargs={"depth": 1},
                      decoder_dim=32, decoder_depth=1, decoder_num_heads=2, lr=1e-3, warmup_epochs=0)


def _loader(n: int = 6) -> DataLoader:
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(n, 3, 32, 32, generator=g) - 0.5) / 0.25
    return DataLoader(TensorDataset(x, torch.zeros(n, dtype=torch.long)), batch_size=3)


def _panel(grid: torch.Tensor, row: int, col: int) -> torch.Tensor:
    r0, c0 = 2 + row * 34, 2 + col * 34
    return grid[:, r0:r0 + 32, c0:c0 + 32]


def test_panels_original_masked_reconstruction():
    m = tiny_mae()
    cb = ReconstructionGrid(num_images=2, mean=MEAN, std=STD, seed=5)
    x = next(iter(_loader()))[0][:2]
    grid = cb.make_grid(m, x)
    assert grid.dtype == torch.uint8 and grid.shape == (3, 2 * 34 + 2, 3 * 34 + 2)
    _, idx_mask = m.sample_mask(2, generator=torch.Generator().manual_seed(5))  # the callback's mask
    orig = (((x * 0.25 + 0.5).clamp(0, 1)) * 255).round().to(torch.uint8)
    for row in range(2):
        assert torch.equal(_panel(grid, row, 0), orig[row])
        masked = torch.zeros(8, 8, dtype=torch.bool)
        masked.view(-1)[idx_mask[row] - 1] = True
        pix = masked.repeat_interleave(4, 0).repeat_interleave(4, 1)
        assert pix.sum() == 48 * 16
        for col in (1, 2):  # visible patches are the original in both panels
            assert torch.equal(_panel(grid, row, col)[:, ~pix], orig[row][:, ~pix])
        assert (_panel(grid, row, 1)[:, pix] == 128).all()  # masked -> the mean (grey)
        assert not torch.equal(_panel(grid, row, 2)[:, pix], orig[row][:, pix])
    assert torch.equal(cb.make_grid(m, x), grid)  # fixed mask: same grid for same weights


def test_pngs_and_tensorboard_every_n_epochs(tmp_path):
    m = tiny_mae()
    logger = TensorBoardLogger(tmp_path, name="mae", version="v0")
    cb = ReconstructionGrid(num_images=2, every_n_epochs=2, mean=MEAN, std=STD)
    trainer = pl.Trainer(
        max_epochs=4, limit_train_batches=1, limit_val_batches=1, logger=logger, callbacks=[cb],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(m, _loader(), _loader())
    pngs = sorted((tmp_path / "mae" / "v0" / "reconstructions").glob("*.png"))
    assert [p.name for p in pngs] == ["reconstructions_epoch0001_step0000002.png",
                                     "reconstructions_epoch0003_step0000004.png"]
    assert np.asarray(Image.open(pngs[0])).shape == (2 * 34 + 2, 3 * 34 + 2, 3)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "mae" / "v0"), size_guidance={"images": 0})
    ea.Reload()
    assert [e.step for e in ea.Images("reconstructions")] == [2, 4]


def test_errors():
    with pytest.raises(ValueError, match="every_n_epochs must be a positive int, got 0"):
        ReconstructionGrid(every_n_epochs=0)
    with pytest.raises(ValueError, match="num_images"):
        ReconstructionGrid(num_images=0)
    with pytest.raises(TypeError, match="reconstruct"):
        ReconstructionGrid().setup(None, torch.nn.Linear(1, 1), "fit")
