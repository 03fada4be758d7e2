"""Task commands of ``ssl-cropmix`` that are not Lightning ``fit/validate/test`` runs.

Each command is a thin argparse front end over a library function, so everything here is
also usable from Python:

* ``show-views``: PNG grid of key / crops / mixed / query views (``data.grid.show_views``).
* ``probe``: linear probe of a checkpoint's backbone (``callbacks.linear_probe.LinearProbe``).
* ``finetune``: 1 % / 10 % semi-supervised fine-tuning (``callbacks.finetune``).
* ``export``: the backbone as a timm-loadable safetensors file (``export.export_backbone``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ssl_cropmix.checkpoints import load_module


def run(cmd: str, argv: list[str]) -> int:
    """Dispatch ``cmd`` with its own arguments ``argv``."""
    handler = _HANDLERS.get(cmd)
    if handler is None:  # pragma: no cover - guarded by cli.TASK_COMMANDS
        raise SystemExit(f"unknown command {cmd!r}")
    return handler(argv)


# ---------------------------------------------------------------------------- helpers
def _data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("labelled data (CropMixDataModule arguments)")
    g.add_argument("--data-dir", default=None, help="ImageFolder root with train/ and val/, or the "
                   "CIFAR-10 JPEG archive (then --val-split test)")
    g.add_argument("--dataset", default="folder", choices=["folder", "demo", "cifar10", "cifar100", "stl10"])
    g.add_argument("--train-split", default="train")
    g.add_argument("--val-split", default="val")
    g.add_argument("--image-size", type=int, default=224)
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--num-workers", type=int, default=8)


def _datamodule(a: argparse.Namespace):
    from ssl_cropmix.data.datamodule import CropMixDataModule

    return CropMixDataModule(
        a.data_dir, dataset=a.dataset, train_split=a.train_split, val_split=a.val_split,
        views="supervised", image_size=a.image_size, batch_size=a.batch_size,
        num_workers=a.num_workers, persistent_workers=False,
    )


# ---------------------------------------------------------------------------- commands
def _show_views(argv: list[str]) -> int:
    from ssl_cropmix.data import grid

    return int(grid.main(argv, prog="ssl-cropmix show-views") or 0)


def _probe(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ssl-cropmix probe",
                                description="Linear probe of a pretrained backbone (frozen, eval mode).")
    p.add_argument("--ckpt", required=True, help="MoCo / MAE / Lightning checkpoint or state dict")
    p.add_argument("--backbone", default=None, help="architecture name when the checkpoint names none")
    p.add_argument("--preset", default="moco", choices=["moco", "mae"])
    p.add_argument("--epochs", type=int, default=None, help="override the preset's 90 epochs")
    p.add_argument("--cached-features", action="store_true",
                   help="fast path: extract features once (no augmentation), train the head on them")
    p.add_argument("--out", default="linear_probe.json", help="JSON results file (appended)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    _data_arguments(p)
    a = p.parse_args(argv)
    from ssl_cropmix.callbacks.linear_probe import LinearProbe

    module = load_module(a.ckpt, a.backbone).to(a.device)
    dm = _datamodule(a)
    dm.setup("fit")
    res = LinearProbe(preset=a.preset, epochs=a.epochs, cached_features=a.cached_features, provider=dm,
                      results_path=a.out).run(None, module)
    print(json.dumps(res.as_dict(), indent=2))
    return 0


def _finetune(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ssl-cropmix finetune",
                                description="Semi-supervised fine-tuning (1 % / 10 % labels).")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--backbone", default=None)
    p.add_argument("--preset", default="10pct", choices=["10pct", "1pct"])
    p.add_argument("--subset-file", default=None, help="SimCLR list file (1percent.txt / 10percent.txt)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--out", default="finetune.json")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    _data_arguments(p)
    a = p.parse_args(argv)
    from ssl_cropmix.callbacks.finetune import SemiSupervisedFineTune

    over: dict[str, Any] = {"results_path": a.out}
    if a.epochs is not None:
        over["epochs"] = a.epochs
    if a.subset_file is not None:
        over["subset_file"] = a.subset_file
    module = load_module(a.ckpt, a.backbone).to(a.device)  # the checkpoint is read once
    dm = _datamodule(a)
    dm.setup("fit")
    res = SemiSupervisedFineTune(a.preset, provider=dm, **over).run(None, module)
    print(json.dumps(res.as_dict(), indent=2, default=str))
    return 0


def _export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ssl-cropmix export",
                                description="Export the backbone of a checkpoint as safetensors.")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True, help="output .safetensors path")
    a = p.parse_args(argv)
    from ssl_cropmix.export import export_backbone

    out = export_backbone(a.ckpt, a.out)
    print(f"wrote {out}")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


_HANDLERS = {"show-views": _show_views, "probe": _probe, "finetune": _finetune, "export": _export}
_HANDLERS["robustness"] = lambda argv: __import__("ssl_cropmix.evaluation.robustness_cli", fromlist=["main"]).main(argv)
