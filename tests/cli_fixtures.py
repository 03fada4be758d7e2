"""A tiny recipe for CLI tests that really run ``ssl-cropmix fit`` (in process or as
subprocesses): MoCo on a one-convolution trunk, the built-in demo images at 32 px, three
steps. Importable as ``cli_fixtures`` (pytest puts tests/ on sys.path; subprocesses get it
through PYTHONPATH from :func:`subprocess_env`)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


class TinyTrunk(nn.Module):
    """``(B, 3, H, W) -> (B, 8)``: one strided convolution, BN, ReLU, global pool."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


TINY_RECIPE = """\
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 1
  limit_train_batches: 3
  limit_val_batches: 0
  log_every_n_steps: 20
  enable_progress_bar: false
  enable_model_summary: false
model:
  class_path: ssl_cropmix.methods.moco.MoCoCropMix
  init_args:
    backbone:
      class_path: cli_fixtures.TinyTrunk
    proj_hidden_dim: 16
    out_dim: 8
    queue_size: 32
    base_lr: 0.06
data:
  class_path: ssl_cropmix.data.datamodule.CropMixDataModule
  init_args:
    source:
      class_path: ssl_cropmix.data.sources.DemoSource
    views:
      class_path: ssl_cropmix.data.recipes.MoCoViews
      init_args:
        query: contrastive
    image_size: 32
    batch_size: 8
    num_workers: 0
    persistent_workers: false
"""


def write_tiny_recipe(folder: Path, name: str = "tiny.yaml") -> Path:
    path = Path(folder) / name
    path.write_text(TINY_RECIPE)
    return path


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a child ``python -m ssl_cropmix.cli``: this checkout first on the
    path, tests/ importable, caches inside ``tmp_path``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    env["SSL_CROPMIX_CACHE"] = str(tmp_path / "cache")
    env.pop("SSL_CROPMIX_RUN_VERSION", None)
    return env
