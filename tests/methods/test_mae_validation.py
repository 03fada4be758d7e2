"""MAECropMix's validation loop reports something: ``val/loss`` is the reconstruction loss
of the validation images under a fixed, batch-index-seeded mask."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ssl_cropmix.methods.mae import MAECropMix


def tiny_mae() -> MAECropMix:
    return MAECropMix("vit_tiny_patch16_224", img_size=32, patch_size=4, vit_kwargs={"depth": 1},
                      decoder_dim=32, decoder_depth=1, decoder_num_heads=2, lr=1e-3, warmup_epochs=0)


def test_val_loss_is_the_fixed_mask_reconstruction_loss():
    torch.manual_seed(0)
    m = tiny_mae().eval()
    x = torch.randn(6, 3, 32, 32)
    loader = DataLoader(TensorDataset(x, torch.zeros(6, dtype=torch.long)), batch_size=3)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    (res,) = trainer.validate(m, loader, verbose=False)
    # independent reference: the masks a generator seeded with each batch index draws
    expected = []
    with torch.no_grad():
        for b, chunk in enumerate(x.split(3)):
            keep, mask = m.sample_mask(3, generator=torch.Generator().manual_seed(b))
            expected.append(m.reconstruction_loss(chunk, keep, mask))
    assert res["val/loss"] == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    (again,) = trainer.validate(m, loader, verbose=False)
    assert again["val/loss"] == res["val/loss"]  # same masks every epoch


def test_validation_step_leaves_the_global_rng_alone():
    m = tiny_mae().eval()
    x = torch.randn(3, 3, 32, 32)
    state = torch.get_rng_state()
    with torch.no_grad(), pytest.warns(UserWarning, match="log"):  # no trainer: Lightning skips the log
        loss = m.validation_step((x, torch.zeros(3, dtype=torch.long)), 0)
    assert torch.equal(state, torch.get_rng_state()) and torch.isfinite(loss)
