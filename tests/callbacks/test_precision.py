"""Every Lightning precision with both ``augment_on`` modes and the evaluation callbacks.

``*-true`` precisions convert the module to bf16 / fp16: every input of the backbone (the
device-built views, the kNN monitor's and the probes' own loaders) must come in that dtype,
or the fit dies with ``Input type (float) and bias type (BFloat16)``. ``*-mixed`` keeps float32
weights and runs the forward passes under autocast: the kNN / probe features must be
computed under it too (the backbone's outputs are then bf16 / fp16).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ssl_cropmix.callbacks import KNNMonitor, LinearProbe, OnlineLinearProbe, SemiSupervisedFineTune
from ssl_cropmix.data.datamodule import CropMixDataModule
from ssl_cropmix.data.recipes import MoCoViews
from ssl_cropmix.data.sources import DemoSource
from ssl_cropmix.evaluation.data import precision_inputs
from ssl_cropmix.methods.moco import MoCoCropMix

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HALF = {"bf16": torch.bfloat16, "16": torch.float16}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("demo"))


class BackboneDtypes(pl.Callback):
    """Records ``(phase, input dtype, output dtype)`` of every backbone call of the fit."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, torch.dtype, torch.dtype]] = []
        self.phase = "fit"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            pl_module.backbone.register_forward_hook(lambda m, i, o: self.calls.append((self.phase, i[0].dtype, o.dtype)))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.phase = "eval"  # the kNN monitor runs after this callback (it is listed later)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.phase = "fit"


def _fit(demo_dir: str, root: Path, precision: str, augment_on: str, callbacks: list, epochs: int = 2) -> tuple:
    pl.seed_everything(0)
    dm = CropMixDataModule(DemoSource(), MoCoViews(augment_on=augment_on), image_size=32, batch_size=16, num_workers=0,
                           persistent_workers=False)
    trunk = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    module = MoCoCropMix(backbone=trunk, proj_hidden_dim=16, out_dim=8, queue_size=64)
    dtypes = BackboneDtypes()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, limit_train_batches=2, limit_val_batches=1,
                         precision=precision, callbacks=[dtypes, *callbacks], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    trainer.fit(module, datamodule=dm)
    return trainer, module, dtypes


def _check_dtypes(dtypes: BackboneDtypes, precision: str) -> None:
    half = HALF[precision.split("-")[0]]
    phases = {p for p, _, _ in dtypes.calls}
    assert phases == {"fit", "eval"}
    for phase, x_dtype, out_dtype in dtypes.calls:
        if precision.endswith("-true"):  # the module is half: every input is converted to it
            assert (x_dtype, out_dtype) == (half, half), phase
        else:  # float32 weights and inputs, autocast forward (the kNN features as well)
            assert (x_dtype, out_dtype) == (torch.float32, half), phase


def test_bf16_true_demo_fit_with_device_views_knn_and_probes(demo_dir: str, tmp_path: Path) -> None:
    """The issue's case: bf16-true + augment_on="device" + kNN + linear probes + online probe +
    fine-tuning, 2 epochs; views and features reach the bf16 backbone as bf16."""
    knn = KNNMonitor(every_n_epochs=1)
    cached = LinearProbe(optimizer="sgd", base_lr=0.5, epochs=1, batch_size=16, cached_features=True, key="cached")
    probe = LinearProbe(optimizer="sgd", base_lr=0.5, epochs=1, batch_size=16, cached_features=False)
    ft = SemiSupervisedFineTune("10pct", label_fraction=0.5, epochs=1, batch_size=16)
    trainer, module, dtypes = _fit(demo_dir, tmp_path, "bf16-true", "device", [OnlineLinearProbe(), knn, cached, probe, ft])
    assert next(module.backbone.parameters()).dtype == torch.bfloat16
    _check_dtypes(dtypes, "bf16-true")
    assert [e for e, _ in knn.history] == [0, 1] and all(0.0 <= a <= 100.0 for _, a in knn.history)
    for cb in (cached, probe, ft):
        assert len(cb.results) == 1 and cb.results[0].hardware["precision"] == "bf16-true"
    assert torch.isfinite(trainer.callback_metrics["online_probe/val_top1"])
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize(("precision", "augment_on"), [
    ("16-true", "device"), ("bf16-true", "workers"), ("bf16-mixed", "device"), ("16-mixed", "workers"),
])
def test_every_precision_and_augment_mode(demo_dir: str, tmp_path: Path, precision: str, augment_on: str) -> None:
    knn = KNNMonitor(k=5, every_n_epochs=1)
    probe = LinearProbe(optimizer="sgd", base_lr=0.5, epochs=1, batch_size=16, cached_features=True)
    trainer, _, dtypes = _fit(demo_dir, tmp_path, precision, augment_on, [knn, probe], epochs=1)
    _check_dtypes(dtypes, str(trainer.precision))  # Lightning runs "16-mixed" as "bf16-mixed" on CPU
    assert len(knn.history) == 1 and len(probe.results) == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_precision_inputs_without_a_trainer_uses_the_module_dtype() -> None:
    """A module cast by hand (no trainer attached): floating inputs take its floating dtype,
    integer inputs are left alone."""
    half = nn.Linear(3, 2).to(torch.bfloat16)
    with precision_inputs(half) as convert:
        assert convert(torch.zeros(2, 3)).dtype == torch.bfloat16
        assert convert(torch.zeros(2, dtype=torch.long)).dtype == torch.long
    with precision_inputs(nn.Linear(3, 2)) as convert:
        assert convert(torch.zeros(2, 3, dtype=torch.float64)).dtype == torch.float32
    holder = nn.Module()  # a plain module holding a bf16 backbone: the kNN monitor feeds it bf16
    holder.backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).to(torch.bfloat16)
    x, y = torch.randn(8, 3, 2, 2), torch.arange(8) % 2
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    acc = KNNMonitor(k=1, train_dataloader=loader, val_dataloader=loader, num_classes=2).evaluate(holder)
    assert acc == 100.0  # each query is its own nearest neighbour


def test_bf16_true_device_views_knn_and_probe_under_two_process_ddp(demo_dir: str, tmp_path: Path) -> None:
    """The same bf16-true fit as 2 gloo processes (60 s collective timeout: a hang fails)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(HERE / "precision_ddp_script.py"), demo_dir, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, 2)
    for r in (r0, r1):
        assert r["views"] == ["torch.bfloat16"] and r["backbone"] == "torch.bfloat16"
        assert [e for e, _ in r["knn"]] == [0, 1] and r["k"] == 64  # the 64-image bank, sharded over 2 ranks
        assert len(r["probe"]) == 1 and r["probe"][0][1:] == ["bf16-true", 2]
    assert r0["knn"] == r1["knn"] and r0["probe"] == r1["probe"]  # every rank gets the same numbers
