"""Task commands of ``ssl-cropmix`` that are not Lightning ``fit/validate/test`` runs.

Each command is a thin argparse front end over a library function, so everything here is
also usable from Python:

* ``show-views``: PNG grid of key / crops / mixed / query views (``data.grid.show_views``).
* ``probe``: linear probe of a checkpoint's backbone (``callbacks.linear_probe.LinearProbe``).
* ``finetune``: 1 % / 10 % semi-supervised or MAE fine-tuning (``callbacks.finetune``).

``probe`` and ``finetune`` run the same evaluation LightningModules as the callbacks, take
``--trainer.accelerator|devices|num_nodes|precision|strategy`` and ``--config``, read the
image size, small-image flag and normalisation from the checkpoint's recorded datamodule
hyper-parameters, and append their JSON record to the checkpoint's run directory
(``eval_results.json``) unless ``--out`` is given.
* ``export``: the backbone as a timm-loadable safetensors file (``export.export_backbone``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def run(cmd: str, argv: list[str]) -> int:
    """Dispatch ``cmd`` with its own arguments ``argv``."""
    handler = _HANDLERS.get(cmd)
    if handler is None:  # pragma: no cover - guarded by cli.TASK_COMMANDS
        raise SystemExit(f"unknown command {cmd!r}")
    return handler(argv)


# ---------------------------------------------------------------------------- helpers
_MODEL_CLASS_HELP = ("module.Class of your own LightningModule to rebuild from the checkpoint (only this "
                     "package's classes are built from a checkpoint's own record)")
#: Trainer options the evaluation commands accept, as ``--trainer.<name>`` (as ``fit``).
TRAINER_OPTIONS = {"accelerator": str, "devices": str, "num_nodes": int, "precision": str, "strategy": str}


def _data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("labelled data (CropMixDataModule arguments; unset ones come from the "
                             "checkpoint's recorded datamodule hyper-parameters)")
    g.add_argument("--data-dir", default=None, help="ImageFolder root with train/ and val/, or the "
                   "CIFAR-10 JPEG archive (then --val-split test)")
    g.add_argument("--dataset", default=None, choices=["folder", "demo", "cifar10", "cifar100", "stl10"])
    g.add_argument("--train-split", default=None)
    g.add_argument("--val-split", default=None)
    g.add_argument("--image-size", type=int, default=None, help="default: the checkpoint's, else 224")
    g.add_argument("--small-image", default=None, type=_bool, help="CIFAR-style stem / views (default: the checkpoint's)")
    g.add_argument("--loader-batch-size", type=int, default=256, help="images per loader batch for feature extraction / evaluation")
    g.add_argument("--num-workers", type=int, default=8)


def _trainer_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("trainer (as for `ssl-cropmix fit`)")
    for name, typ in TRAINER_OPTIONS.items():
        g.add_argument(f"--trainer.{name}", dest=f"trainer.{name}", type=typ, default=None)
    g.add_argument("--device", default=None, choices=["cpu", "cuda", "gpu", "mps", "auto"],
                   help="shorthand for --trainer.accelerator")
    g.add_argument("--out", default=None, help="JSON results file (appended; default: "
                   "<the checkpoint's run directory>/eval_results.json)")
    g.add_argument("--config", default=None, help="YAML file with any of these options (`trainer:` as a mapping)")


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes"):
        return True
    if v.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def _parse(p: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``p.parse_args(argv)`` with defaults from ``--config`` (command line wins)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        import yaml

        with open(known.config) as f:
            cfg = yaml.safe_load(f) or {}
        if not isinstance(cfg, dict):
            p.error(f"--config {known.config}: expected a mapping of options, got {type(cfg).__name__}")
        flat: dict[str, Any] = {}
        for k, v in cfg.items():
            if isinstance(v, dict):
                flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
            else:
                flat[str(k).replace("-", "_")] = v
        dests = {a.dest for a in p._actions}
        unknown = sorted(set(flat) - dests)
        if unknown:
            p.error(f"--config {known.config}: unknown option(s) {unknown}")
        p.set_defaults(**flat)
    return p.parse_args(argv)


def _trainer_kwargs(a: argparse.Namespace, prog: str) -> dict[str, Any]:
    """``pl.Trainer`` arguments from ``--trainer.*`` / ``--device``; one clear line when a
    GPU is asked for on a machine without one."""
    kw: dict[str, Any] = {n: getattr(a, f"trainer.{n}") for n in TRAINER_OPTIONS if getattr(a, f"trainer.{n}") is not None}
    if a.device is not None:
        kw.setdefault("accelerator", a.device)
    if "devices" in kw:
        d = str(kw["devices"])
        kw["devices"] = int(d) if d.lstrip("-").isdigit() else d
    acc = str(kw.get("accelerator", "auto"))
    if acc in ("cuda", "gpu"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"{prog}: the accelerator {acc!r} needs a CUDA GPU, but none is available on this machine "
                             "(torch.cuda.is_available() is False); use --device cpu")
    return kw


def _datamodule(a: argparse.Namespace, ckpt: dict[str, Any] | None = None):
    """The labelled data: command-line values, else the checkpoint's recorded datamodule
    hyper-parameters (image size, small-image flag, normalisation, dataset and paths)."""
    from ssl_cropmix.data.datamodule import CropMixDataModule

    rec = dict((ckpt or {}).get("datamodule_hyper_parameters") or {})
    pick = lambda cli, key, default: cli if cli is not None else rec.get(key, default)  # noqa: E731
    kw: dict[str, Any] = dict(
        data_dir=pick(a.data_dir, "data_dir", None), dataset=pick(a.dataset, "dataset", "folder"),
        train_split=pick(a.train_split, "train_split", "train"), val_split=pick(a.val_split, "val_split", "val"),
        image_size=pick(a.image_size, "image_size", 224), views="supervised", supervised_view="plain", batch_size=a.loader_batch_size,
        num_workers=a.num_workers, persistent_workers=False,
    )
    si = pick(a.small_image, "small_image", None)
    if si is not None:
        kw["small_image"] = bool(si)
    for key in ("mean", "std", "fraction_seed", "on_bad_image"):
        if key in rec:
            kw[key] = tuple(rec[key]) if key in ("mean", "std") else rec[key]
    return CropMixDataModule(**kw)


def _load(a: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The module to evaluate and the raw checkpoint (read through ``ssl_cropmix.checkpoints``)."""
    from ssl_cropmix.checkpoints import load_checkpoint, load_module

    ckpt = load_checkpoint(a.ckpt)
    return load_module(a.ckpt, a.backbone, model_class=a.model_class), ckpt if isinstance(ckpt, dict) else {}


def _out_path(a: argparse.Namespace) -> Any:
    from ssl_cropmix.evaluation.results import RESULTS_FILE, checkpoint_run_directory

    return a.out if a.out is not None else checkpoint_run_directory(a.ckpt) / RESULTS_FILE


def _data_record(dm: Any) -> dict[str, Any]:
    return {"dataset": dm.dataset, "data_dir": dm.data_dir, "image_size": dm.image_size, "small_image": dm.small_image,
            "mean": list(dm.mean), "std": list(dm.std)}


def _evaluate_and_publish(evaluator: Any, module: Any, dm: Any, a: argparse.Namespace, trainer_kwargs: dict[str, Any]) -> int:
    """Run ``evaluator`` (a probe / fine-tuning callback) on the checkpoint's ``module``, record
    the data, append the result to the results file and print it; the command's exit code."""
    from ssl_cropmix.evaluation.results import publish

    evaluator.checkpoint = str(a.ckpt)
    res = evaluator.evaluate(None, module, trainer_kwargs=trainer_kwargs)
    res.hparams["data"] = _data_record(dm)
    path = publish(res, None, _out_path(a))
    print(json.dumps(res.as_dict(), indent=2, default=str))
    print(f"appended to {path}")
    return 0


# ---------------------------------------------------------------------------- commands
def _show_views(argv: list[str]) -> int:
    from ssl_cropmix.data import grid

    return int(grid.main(argv, prog="ssl-cropmix show-views") or 0)


def _probe(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ssl-cropmix probe",
                                description="Linear probe of a pretrained backbone (frozen, eval mode), on the "
                                "hardware given by --trainer.* (as `fit`).")
    p.add_argument("--ckpt", required=True, help="MoCo / MAE / Lightning checkpoint or state dict")
    p.add_argument("--backbone", default=None, help="architecture name when the checkpoint names none")
    p.add_argument("--model-class", default=None, help=_MODEL_CLASS_HELP)
    p.add_argument("--preset", default="moco", choices=["moco", "moco_simsiam_code", "mae"])
    p.add_argument("--epochs", type=int, default=None, help="override the preset's 90 epochs")
    p.add_argument("--batch-size", type=int, default=None, help="the probe's global batch (preset: 4096 / 16384)")
    p.add_argument("--device-batch-size", type=int, default=None, help="images per device step (accumulates the rest)")
    p.add_argument("--base-lr", type=float, default=None)
    p.add_argument("--optimizer", default=None, choices=["sgd", "lars"])
    p.add_argument("--cached-features", action="store_true", default=False,
                   help="fast path: extract features once (no augmentation), train the head on them")
    _trainer_arguments(p)
    _data_arguments(p)
    a = _parse(p, argv)
    kw = _trainer_kwargs(a, p.prog)
    from ssl_cropmix.callbacks.linear_probe import LinearProbe

    module, ckpt = _load(a)
    dm = _datamodule(a, ckpt)
    dm.setup("fit")
    probe = LinearProbe(preset=a.preset, epochs=a.epochs, batch_size=a.batch_size, device_batch_size=a.device_batch_size,
                        base_lr=a.base_lr, optimizer=a.optimizer, cached_features=a.cached_features, provider=dm)
    return _evaluate_and_publish(probe, module, dm, a, kw)


def _finetune(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ssl-cropmix finetune",
                                description="Semi-supervised fine-tuning (1 % / 10 % labels), or MAE's ViT fine-tuning "
                                "(--preset mae), on the hardware given by --trainer.* (as `fit`).")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--backbone", default=None)
    p.add_argument("--model-class", default=None, help=_MODEL_CLASS_HELP)
    p.add_argument("--preset", default="10pct", choices=["10pct", "1pct", "mae"])
    p.add_argument("--label-fraction", type=float, default=None, help="override the preset's fraction")
    p.add_argument("--subset-file", default=None, help="SimCLR list file (1percent.txt / 10percent.txt)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's 100 epochs (milestones scale)")
    p.add_argument("--batch-size", type=int, default=None, help="global (effective) batch of the fine-tuning")
    _trainer_arguments(p)
    _data_arguments(p)
    a = _parse(p, argv)
    kw = _trainer_kwargs(a, p.prog)
    from ssl_cropmix.callbacks.finetune import MAEFineTune, SemiSupervisedFineTune

    module, ckpt = _load(a)
    dm = _datamodule(a, ckpt)
    dm.setup("fit")
    if a.preset == "mae":
        if a.subset_file is not None:
            p.error("--subset-file is not supported with --preset mae; use --label-fraction")
        cb: Any = MAEFineTune(label_fraction=a.label_fraction, epochs=a.epochs, batch_size=a.batch_size, provider=dm,
                              warmup_epochs=min(5, a.epochs) if a.epochs is not None else None)
    else:
        cb = SemiSupervisedFineTune(a.preset, label_fraction=a.label_fraction, subset_file=a.subset_file, epochs=a.epochs,
                                    batch_size=a.batch_size, provider=dm)
    return _evaluate_and_publish(cb, module, dm, a, kw)


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


_HANDLERS = {"show-views": _show_views, "probe": _probe, "finetune": _finetune, "export": _export}
_HANDLERS["robustness"] = lambda argv: __import__("ssl_cropmix.evaluation.robustness_cli", fromlist=["main"]).main(argv)
_HANDLERS["optimize"] = lambda argv: __import__("ssl_cropmix.data.streaming", fromlist=["optimize_main"]).optimize_main(argv)
