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


#: The flat data arguments of ssl_cropmix < 0.2 that the command flags still speak.
_FLAT_DATA = ("dataset", "data_dir", "train_split", "val_split", "download", "on_bad_image", "max_image_pixels")


def _recorded_flat(rec: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's data record in the command flags' vocabulary (``dataset``, ``data_dir``,
    splits, policy): from its ``source`` record, or as written by ssl_cropmix < 0.2."""
    from ssl_cropmix.data.sources import SOURCES_BY_NAME

    src = rec.get("source")
    if src is None:
        return {k: rec[k] for k in _FLAT_DATA if k in rec}
    path = str(src.get("class_path", ""))
    args = dict(src.get("init_args") or {})
    flat = {k: args[k] for k in _FLAT_DATA if k in args}
    flat["dataset"] = next((n for n, c in SOURCES_BY_NAME.items() if path.endswith("." + c.__name__)), None)
    flat["data_dir"] = args.get("root", args.get("uri"))
    return flat


def _recorded_source(a: argparse.Namespace, rec: dict[str, Any]) -> Any:
    """The source: the checkpoint's recorded one, with ``--dataset`` / ``--data-dir`` /
    ``--train-split`` / ``--val-split`` overriding it (another ``--dataset`` drops the
    record's paths and splits: a folder-trained checkpoint's root is never handed to the demo
    set). Checkpoints written before the sources (flat ``dataset`` / ``data_dir``
    hyper-parameters, ssl_cropmix < 0.2) are read through
    :func:`~ssl_cropmix.data.sources.source_from_flat`, said in the log (CHANGELOG.md)."""
    from ssl_cropmix.data.datamodule import build_part
    from ssl_cropmix.data.sources import Source, source_from_flat

    flags = {"dataset": a.dataset, "data_dir": a.data_dir, "train_split": a.train_split, "val_split": a.val_split}
    if rec.get("source") is not None and all(v is None for v in flags.values()):
        return build_part(rec["source"], Source, "the checkpoint's data source")
    flat = _recorded_flat(rec)
    if "source" not in rec and flat:
        from pytorch_lightning.utilities import rank_zero_info

        rank_zero_info(f"the checkpoint records the flat data arguments of ssl_cropmix < 0.2 ({flat}): read as "
                       "ssl_cropmix.data.sources.source_from_flat(...)")
    if a.dataset is not None and a.dataset != (flat.get("dataset") or "folder"):
        flat = {}
    flat.update({k: v for k, v in flags.items() if v is not None})
    return source_from_flat(**{"dataset": "folder", **flat})


def _datamodule(a: argparse.Namespace, ckpt: dict[str, Any] | None = None):
    """The labelled data: command-line values, else the checkpoint's recorded datamodule
    hyper-parameters (source, image size, small-image flag, normalisation)."""
    from ssl_cropmix.data.datamodule import CropMixDataModule
    from ssl_cropmix.data.recipes import SupervisedViews

    rec = dict((ckpt or {}).get("datamodule_hyper_parameters") or {})
    kw: dict[str, Any] = dict(
        image_size=a.image_size if a.image_size is not None else rec.get("image_size", 224),
        batch_size=a.loader_batch_size, num_workers=a.num_workers, persistent_workers=False,
    )
    si = a.small_image if a.small_image is not None else rec.get("small_image")
    if si is not None:
        kw["small_image"] = bool(si)
    for key in ("mean", "std", "fraction_seed"):
        if key in rec:
            kw[key] = tuple(rec[key]) if key in ("mean", "std") else rec[key]
    return CropMixDataModule(_recorded_source(a, rec), SupervisedViews("plain"), **kw)


def _load(a: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The module to evaluate and the raw checkpoint (read through ``ssl_cropmix.checkpoints``)."""
    from ssl_cropmix.checkpoints import load_checkpoint, load_module

    ckpt = load_checkpoint(a.ckpt)
    return load_module(a.ckpt, a.backbone, model_class=a.model_class), ckpt if isinstance(ckpt, dict) else {}


def _out_path(a: argparse.Namespace) -> Any:
    from ssl_cropmix.evaluation.results import RESULTS_FILE, checkpoint_run_directory

    return a.out if a.out is not None else checkpoint_run_directory(a.ckpt) / RESULTS_FILE


def _data_record(dm: Any) -> dict[str, Any]:
    return {"source": dm.source.config(), "image_size": dm.image_size, "small_image": dm.small_image,
            "mean": list(dm.mean), "std": list(dm.std)}


def _evaluate_and_publish(evaluator: Any, module: Any, dm: Any, a: argparse.Namespace, trainer_kwargs: dict[str, Any]) -> int:
    """Run ``evaluator`` (a probe / fine-tuning callback) on the checkpoint's ``module``, record
    the data, append the result to the results file and print it; the command's exit code."""
    from ssl_cropmix.evaluation.results import publish

    evaluator.checkpoint = str(a.ckpt)
    try:
        res = evaluator.evaluate(None, module, trainer_kwargs=trainer_kwargs)
    except ValueError as e:  # data that cannot train / a batch that does not fit: refused before training
        raise SystemExit(f"ssl-cropmix: error: {e}") from None
    res.hparams["data"] = _data_record(dm)
    path = publish(res, None, _out_path(a))
    print(json.dumps(res.as_dict(), indent=2, default=str))
    print(f"appended to {path}")
    return 0


# ---------------------------------------------------------------------------- commands
def _show_views(argv: list[str]) -> int:
    from ssl_cropmix.data import grid

    return int(grid.main(argv, prog="ssl-cropmix show-views") or 0)


def _preset_values(presets: dict[str, Any], field: str) -> str:
    """``"moco 90, mae 90"``: one recipe field of every preset, for ``--help``."""
    return ", ".join(f"{name} {getattr(r, field)}" for name, r in presets.items())


def _probe(argv: list[str]) -> int:
    from ssl_cropmix.evaluation.linear import PROBE_PRESETS

    pv = lambda field: _preset_values(PROBE_PRESETS, field)  # noqa: E731
    p = argparse.ArgumentParser(prog="ssl-cropmix probe",
                                description="Linear probe of a pretrained backbone (frozen, eval mode), on the "
                                "hardware given by --trainer.* (as `fit`). Unset values are the preset's; a default "
                                "batch larger than the labelled set shrinks to it and a default warm-up scales with "
                                "--epochs (both said in the log and recorded in the result).")
    p.add_argument("--ckpt", required=True, help="MoCo / MAE / Lightning checkpoint or state dict")
    p.add_argument("--backbone", default=None, help="architecture name when the checkpoint names none")
    p.add_argument("--model-class", default=None, help=_MODEL_CLASS_HELP)
    p.add_argument("--preset", default="moco", choices=list(PROBE_PRESETS))
    p.add_argument("--epochs", type=int, default=None, help=f"epochs (preset: {pv('epochs')})")
    p.add_argument("--warmup-epochs", type=int, default=None,
                   help=f"linear warm-up epochs (preset: {pv('warmup_epochs')}; unset: scaled with --epochs)")
    p.add_argument("--batch-size", type=int, default=None, help=f"the probe's global batch (preset: {pv('batch_size')})")
    p.add_argument("--device-batch-size", type=int, default=None, help="images per device step (accumulates the rest; "
                   "preset: the global batch / devices)")
    p.add_argument("--base-lr", type=float, default=None,
                   help=f"lr = base_lr x batch / 256 (preset: {pv('base_lr')})")
    p.add_argument("--optimizer", default=None, choices=["sgd", "lars"], help=f"preset: {pv('optimizer')}")
    p.add_argument("--weight-decay", type=float, default=None, help=f"preset: {pv('weight_decay')}")
    p.add_argument("--head-norm", type=_bool, default=None,
                   help=f"BatchNorm1d(affine=False) before the linear head (preset: {pv('head_norm')})")
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
                        base_lr=a.base_lr, optimizer=a.optimizer, warmup_epochs=a.warmup_epochs,
                        weight_decay=a.weight_decay, head_norm=a.head_norm, cached_features=a.cached_features, provider=dm)
    return _evaluate_and_publish(probe, module, dm, a, kw)


#: ``finetune`` flags of one kind of preset only (refused with the other kind).
_SEMI_ONLY = ("subset_file", "trunk_lr", "head_lr", "milestones", "gamma", "bn_mode")
_MAE_ONLY = ("warmup_epochs", "device_batch_size", "blr", "layer_decay", "drop_path", "mixup", "cutmix", "label_smoothing")


def _finetune(argv: list[str]) -> int:
    from ssl_cropmix.evaluation.finetune import FINETUNE_PRESETS
    from ssl_cropmix.evaluation.mae_finetune import MAEFineTuneRecipe

    sv = lambda field: _preset_values(FINETUNE_PRESETS, field)  # noqa: E731
    mae = MAEFineTuneRecipe()
    p = argparse.ArgumentParser(prog="ssl-cropmix finetune",
                                description="Semi-supervised fine-tuning (1 % / 10 % labels), or MAE's ViT fine-tuning "
                                "(--preset mae), on the hardware given by --trainer.* (as `fit`). Unset values are the "
                                "preset's; a default batch larger than the labelled set shrinks to it and a default "
                                "warm-up / milestones scale with --epochs (said in the log, recorded in the result).")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--backbone", default=None)
    p.add_argument("--model-class", default=None, help=_MODEL_CLASS_HELP)
    p.add_argument("--preset", default="10pct", choices=[*FINETUNE_PRESETS, "mae"])
    p.add_argument("--label-fraction", type=float, default=None,
                   help=f"override the preset's fraction (preset: {sv('label_fraction')}, mae {mae.label_fraction})")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs (preset: {sv('epochs')}, mae {mae.epochs}; milestones / warm-up scale with it)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"global (effective) batch (preset: {sv('batch_size')}, mae {mae.batch_size})")
    g = p.add_argument_group("semi-supervised presets (10pct, 1pct)")
    g.add_argument("--subset-file", default=None, help="SimCLR list file (1percent.txt / 10percent.txt)")
    g.add_argument("--trunk-lr", type=float, default=None, help=f"preset: {sv('trunk_lr')}")
    g.add_argument("--head-lr", type=float, default=None, help=f"preset: {sv('head_lr')}")
    g.add_argument("--milestones", type=int, nargs="+", default=None,
                   help=f"epochs of the x gamma decays (preset: {sv('milestones')}; unset: scaled with --epochs)")
    g.add_argument("--gamma", type=float, default=None, help=f"preset: {sv('gamma')}")
    g.add_argument("--bn-mode", default=None, choices=["local", "sync"], help=f"preset: {sv('bn_mode')}")
    g = p.add_argument_group("MAE fine-tuning (--preset mae)")
    g.add_argument("--warmup-epochs", type=int, default=None,
                   help=f"preset: {mae.warmup_epochs} of {mae.epochs} (unset: scaled with --epochs)")
    g.add_argument("--device-batch-size", type=int, default=None, help=f"preset: {mae.device_batch_size}")
    g.add_argument("--blr", type=float, default=None, help=f"lr = blr x batch / 256 (preset: {mae.blr:g})")
    g.add_argument("--layer-decay", type=float, default=None, help=f"preset: {mae.layer_decay}")
    g.add_argument("--drop-path", type=float, default=None, help=f"preset: {mae.drop_path}")
    g.add_argument("--mixup", type=float, default=None, help=f"preset: {mae.mixup}")
    g.add_argument("--cutmix", type=float, default=None, help=f"preset: {mae.cutmix}")
    g.add_argument("--label-smoothing", type=float, default=None, help=f"preset: {mae.label_smoothing}")
    _trainer_arguments(p)
    _data_arguments(p)
    a = _parse(p, argv)
    wrong = [n for n in (_SEMI_ONLY if a.preset == "mae" else _MAE_ONLY) if getattr(a, n) is not None]
    if wrong:
        p.error(f"--{wrong[0].replace('_', '-')} does not apply to --preset {a.preset}")
    kw = _trainer_kwargs(a, p.prog)
    from ssl_cropmix.callbacks.finetune import MAEFineTune, SemiSupervisedFineTune

    module, ckpt = _load(a)
    dm = _datamodule(a, ckpt)
    dm.setup("fit")
    if a.preset == "mae":
        cb: Any = MAEFineTune(label_fraction=a.label_fraction, epochs=a.epochs, batch_size=a.batch_size, provider=dm,
                              **{n: getattr(a, n) for n in _MAE_ONLY})
    else:
        cb = SemiSupervisedFineTune(a.preset, label_fraction=a.label_fraction, epochs=a.epochs, batch_size=a.batch_size,
                                    provider=dm, **{n: getattr(a, n) for n in _SEMI_ONLY if n != "bn_mode"},
                                    bn_mode=a.bn_mode or "local")
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
