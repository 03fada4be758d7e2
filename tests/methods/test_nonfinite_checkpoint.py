"""No checkpoint with non-finite weights is ever written (issue 14, item 7)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from moco_helpers import pair_loader, tiny_moco

from ssl_cropmix.checkpoints import NonFiniteCheckpointError, check_finite_state, load_checkpoint


def _trainer(tmp_path, callbacks, max_steps=6):
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=1, save_top_k=-1)
    return pl.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, num_sanity_val_steps=0, callbacks=[*callbacks, ckpt],
    )


def _all_finite(path) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in load_checkpoint(path)["state_dict"].values()
               if v.is_floating_point())


def test_poisoned_weights_are_not_saved_and_the_step_is_named(tmp_path):
    class Poison(pl.Callback):  # runs before ModelCheckpoint's save of the same step
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                with torch.no_grad():
                    pl_module.projection_head[0].weight[0, 0] = float("nan")

    with pytest.raises(NonFiniteCheckpointError, match=r"MoCoCropMix: refusing to save a checkpoint at global "
                       r"step 3: non-finite \(NaN/inf\) values in projection_head.0.weight \(1 tensor\)"):
        _trainer(tmp_path, [Poison()]).fit(tiny_moco(), pair_loader(16, 4))
    saved = sorted(p.name for p in (tmp_path / "ck").glob("*.ckpt"))
    assert saved == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt"]  # step 3 was refused
    assert all(_all_finite(tmp_path / "ck" / n) for n in saved)


def test_diverging_run_keeps_only_finite_checkpoints(tmp_path):
    """lr 1e6: the run stops naming a step (non-finite loss or refused save) and every
    checkpoint on disk is finite."""
    with pytest.raises(FloatingPointError, match=r"step \d+"):
        _trainer(tmp_path, [], max_steps=40).fit(tiny_moco(lr=1e6), pair_loader(16, 4))
    saved = list((tmp_path / "ck").glob("*.ckpt"))
    assert all(_all_finite(p) for p in saved)


def test_check_finite_state_accepts_finite_and_integer_tensors():
    check_finite_state({"w": torch.ones(2), "n": torch.tensor(3), "q": torch.zeros(2, dtype=torch.long)}, 5)
    with pytest.raises(NonFiniteCheckpointError, match="global step 5: non-finite .* in w"):
        check_finite_state({"w": torch.tensor([1.0, float("inf")])}, 5)


def test_check_finite_state_names_every_bad_tensor_in_state_order():
    state = {"a": torch.ones(3), "b": torch.tensor([float("nan")]), "c": torch.zeros(0),
             "d": torch.ones(2, dtype=torch.float16), "e": torch.tensor([1.0, -float("inf")], dtype=torch.bfloat16),
             "f": torch.ones(2, dtype=torch.float64)}
    with pytest.raises(NonFiniteCheckpointError, match=r"values in b, e \(2 tensors\)"):
        check_finite_state(state, 1)
    check_finite_state({k: v for k, v in state.items() if k not in ("b", "e")}, 1)  # empty / fp16 / fp64 finite
