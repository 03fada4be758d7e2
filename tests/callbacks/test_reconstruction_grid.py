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
    png = np.asarray(Image.open(pngs[0]))
    head = ReconstructionGrid.HEADER_HEIGHT
    assert png.shape == (head + 2 * 34 + 2, 3 * 34 + 2, 3)
    # below the title strip: make_grid's panels (the originals column does not depend on the weights)
    below = torch.from_numpy(png[head:].copy()).permute(2, 0, 1)
    assert torch.equal(below[:, :, :36], cb.make_grid(m, cb.images)[:, :, :36])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "mae" / "v0"), size_guidance={"images": 0})
    ea.Reload()
    assert [e.step for e in ea.Images("reconstructions")] == [2, 4]


def test_column_titles_above_each_panel():
    """The title strip has dark (text) pixels over each of the three columns, none over the
    padding between them."""
    cb = ReconstructionGrid(num_images=1)
    grid = torch.full((3, 36, 3 * 34 + 2), 200, dtype=torch.uint8)
    out = cb.with_headers(grid)
    head = cb.HEADER_HEIGHT
    assert out.shape == (3, head + 36, 3 * 34 + 2) and torch.equal(out[:, head:], grid)
    dark = (out[:, :head].float().mean(0) < 128).any(0)  # columns with text pixels
    for col in range(3):
        assert dark[2 + col * 34: 2 + col * 34 + 32].any(), col
        assert not dark[col * 34: col * 34 + 2].any()


def test_num_images_gathered_over_small_batches(tmp_path):
    """num_images=4 with validation batches of 2: four rows from two batches (the first four
    validation images, in order); a val loop with only 2 images says so once."""
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(6, 3, 32, 32, generator=g) - 0.5) / 0.25
    val = DataLoader(TensorDataset(x, torch.zeros(6, dtype=torch.long)), batch_size=2)
    m = tiny_mae()
    cb = ReconstructionGrid(num_images=4, every_n_epochs=1, mean=MEAN, std=STD)
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=1, logger=TensorBoardLogger(tmp_path, name="a", version="v"),
        callbacks=[cb], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # default sanity check: 2 batches = 4 images
    trainer.fit(m, _loader(), val)
    assert torch.equal(cb.images, x[:4])
    png = np.asarray(Image.open(cb.saved[-1]))
    assert png.shape[0] == cb.HEADER_HEIGHT + 4 * 34 + 2

    cb2 = ReconstructionGrid(num_images=4, every_n_epochs=1, mean=MEAN, std=STD)
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0,
        logger=TensorBoardLogger(tmp_path, name="b", version="v"), callbacks=[cb2],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    with pytest.warns(UserWarning, match="gave 2 image") as rec:
        trainer.fit(m, _loader(), val)
    assert len([w for w in rec if "ReconstructionGrid" in str(w.message)]) == 1
    assert torch.equal(cb2.images, x[:2])


def test_errors():
    with pytest.raises(ValueError, match="every_n_epochs must be a positive int, got 0"):
        ReconstructionGrid(every_n_epochs=0)
    with pytest.raises(ValueError, match="num_images"):
        ReconstructionGrid(num_images=0)
    with pytest.raises(TypeError, match="reconstruct"):
        ReconstructionGrid().setup(None, torch.nn.Linear(1, 1), "fit")
