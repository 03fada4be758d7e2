"""The evaluation trainer inherits the pretraining trainer's hardware."""

from __future__ import annotations

from datetime import timedelta

import pytorch_lightning as pl
import pytest
from pytorch_lightning.strategies import DDPStrategy

from ssl_cropmix.evaluation.runner import _RunningProcesses, evaluation_trainer, inherited_trainer_kwargs


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, **kw)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_single_device_hardware_is_inherited(precision: str) -> None:
    t = _trainer(accelerator="cpu", devices=1, precision=precision)
    e = evaluation_trainer(t, max_epochs=3)
    assert type(e.accelerator) is type(t.accelerator)
    assert type(e.strategy) is type(t.strategy)
    assert e.precision == t.precision == precision
    assert e.world_size == t.world_size == 1
    assert e.num_devices == t.num_devices
    assert e.max_epochs == 3 and e.logger is None and e.checkpoint_callback is None
    if precision.endswith("-mixed"):  # autocast on the CPU, not CUDA (an accelerator instance would say cuda)
        assert e.precision_plugin.device == t.precision_plugin.device == "cpu"


def test_ddp_strategy_is_cloned_not_shared() -> None:
    t = _trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=42)))
    kw = inherited_trainer_kwargs(t)
    s = kw["strategy"]
    assert isinstance(s, DDPStrategy) and s is not t.strategy
    assert s.process_group_backend == "gloo" and s._timeout == timedelta(seconds=42)
    assert isinstance(s.cluster_environment, _RunningProcesses)
    assert s.cluster_environment.creates_processes_externally  # never launches processes again
    assert kw["devices"] == 2 and kw["num_nodes"] == 1 and kw["precision"] == t.precision


def test_no_trainer_means_lightning_defaults() -> None:
    assert inherited_trainer_kwargs(None) == {}
