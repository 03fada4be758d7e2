"""Loading a backbone from a checkpoint in one call, always with ``weights_only=True``.

Understands Lightning checkpoints of ``MoCoCropMix`` / ``MAECropMix`` / ``CropMixClassifier``
/ any module with a ``backbone`` attribute (``state_dict`` + ``hyper_parameters``), plain
state dicts (e.g. torchvision's ``resnet18().state_dict()``: classifier keys are dropped)
and official MoCo (``module.encoder_q.``) / MAE (``model``) files.

**No code from checkpoints.** A checkpoint written through the CLI names its module class
(``hyper_parameters["_class_path"]``). Every loading path here (and the CLI's ``--ckpt_path``)
builds only a class in :data:`TRUSTED_CLASS_PATHS`, a LightningModule defined under
``ssl_cropmix.evaluation``, or a class the caller names explicitly (``model_class=`` /
``allowed_classes=``, or the CLI's ``--model``). Any other name is refused *before* its
module is imported, with an error naming the class and the file
(:class:`UntrustedCheckpointError`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Key prefixes tried, in order, when the caller gives none.
PREFIXES = ("backbone.", "module.encoder_q.", "encoder_q.", "module.", "")

#: LightningModules whose checkpoints this package's fits write; rebuilt without asking.
TRUSTED_CLASS_PATHS: frozenset[str] = frozenset({
    "ssl_cropmix.methods.moco.MoCoCropMix",
    "ssl_cropmix.methods.mae.MAECropMix",
    "ssl_cropmix.methods.classifier.CropMixClassifier",
})
#: Modules of this package whose LightningModules are trusted too (evaluation modules).
TRUSTED_MODULE_PREFIXES: tuple[str, ...] = ("ssl_cropmix.evaluation.",)
#: Classifier keys of torchvision / timm ResNets, dropped from plain state dicts.
CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.")

class UntrustedCheckpointError(ValueError):
    """A checkpoint names a class that is neither this package's nor one the caller allowed."""


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by another module class than the one configured."""


def class_path_of(cls: type | str) -> str:
    """``"module.QualName"`` of a class (strings are returned unchanged)."""
    if isinstance(cls, str):
        return cls
    if not isinstance(cls, type):
        raise TypeError(f"allowed classes must be classes or 'module.Class' strings, got {cls!r}")
    return f"{cls.__module__}.{cls.__qualname__}"


def _resolve_own_class(path: str) -> type | None:
    """The object ``path`` names when it lies in this package (importing our own modules is
    safe), else ``None``; nothing outside ``ssl_cropmix`` is ever imported here."""
    if not path.startswith("ssl_cropmix."):
        return None
    import importlib

    mod, _, name = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(mod), name, None)
    except ImportError:
        return None
    return obj if isinstance(obj, type) else None


def _is_trusted_package_class(path: str) -> bool:
    """One of :data:`TRUSTED_CLASS_PATHS` (also under a re-export such as
    ``ssl_cropmix.MoCoCropMix``), or a LightningModule defined under
    :data:`TRUSTED_MODULE_PREFIXES`."""
    if path in TRUSTED_CLASS_PATHS:
        return True
    cls = _resolve_own_class(path)
    if cls is None:
        return False
    import pytorch_lightning as pl

    own = class_path_of(cls)
    return issubclass(cls, pl.LightningModule) and (
        own in TRUSTED_CLASS_PATHS or own.startswith(TRUSTED_MODULE_PREFIXES)
    )


def check_class_path(
    class_path: Any, source: str | Path, allowed_classes: Any = (),
) -> str | None:
    """Validate the class a checkpoint names, without importing anything untrusted.

    Args:
        class_path: ``hyper_parameters["_class_path"]`` (``None``: nothing to check).
        source: the file, for the message.
        allowed_classes: classes (or ``"module.Class"`` strings) the caller names explicitly.

    Returns:
        ``class_path`` when it is trusted (``None`` when it was ``None``).

    Raises:
        UntrustedCheckpointError: any other name (the module is not imported).
    """
    if class_path is None:
        return None
    allowed = {class_path_of(c) for c in (allowed_classes or ())}
    if isinstance(class_path, str) and (class_path in allowed or _is_trusted_package_class(class_path)):
        return class_path
    raise UntrustedCheckpointError(
        f"refusing to build class {class_path!r} named by checkpoint {str(source)!r}: only this "
        f"package's LightningModules ({', '.join(sorted(c.rpartition('.')[2] for c in TRUSTED_CLASS_PATHS))}, "
        "ssl_cropmix.evaluation modules) or a class you name explicitly (model_class= / "
        "allowed_classes= in Python, --model-class for probe/finetune, --model for fit/validate) are "
        "built from checkpoints; "
        "the class was not imported"
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with a clear error.

    Raises:
        FileNotFoundError: missing file.
        ValueError: empty (0-byte), truncated or non-torch file (the message names it).
        RuntimeError: the file holds objects the safe unpickler refuses.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ckpt_path does not exist: {str(p)!r}")
    if p.stat().st_size == 0:
        raise ValueError(f"checkpoint {str(p)!r} is empty (0 bytes): an interrupted save? Use another checkpoint")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, EOFError, zip-reader RuntimeError ...
        if "weights only load failed" in str(e).lower():
            raise RuntimeError(
                f"could not load {str(p)!r} with torch.load(weights_only=True) (arbitrary pickles are "
                f"never executed); save weights with plain types / tensors. Cause: {e}"
            ) from e
        raise ValueError(
            f"checkpoint {str(p)!r} is truncated or not a torch checkpoint "
            f"({p.stat().st_size} bytes; {type(e).__name__}: {e})"
        ) from e


def _state_dict_of(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(ckpt.get(key), dict):
            return ckpt[key]
    return ckpt


def strip_prefix(state: dict[str, torch.Tensor], prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Keys under ``prefix`` with the prefix removed; ``None`` tries ``PREFIXES`` in order.

    Raises:
        KeyError: no key starts with ``prefix``.
    """
    for pre in (prefix,) if prefix is not None else PREFIXES:
        out = {k[len(pre) :]: v for k, v in state.items() if k.startswith(pre)}
        if out:
            return out
    raise KeyError(f"no state-dict key starts with prefix={prefix!r}; first keys: {list(state)[:5]}")


class DroppedKeysWarning(UserWarning):
    """Classifier weights of a plain state dict were not loaded into a backbone."""


def _match_backbone_keys(
    state: dict[str, torch.Tensor], own: set[str], strict: bool
) -> tuple[dict[str, torch.Tensor], list[str]] | None:
    """The first ``PREFIXES`` candidate whose keys fit ``own``, and the classifier keys dropped."""
    for pre in PREFIXES:
        cand = {k[len(pre) :]: v for k, v in state.items() if k.startswith(pre)}
        if not cand:
            continue
        if set(cand) == own or (not strict and set(cand) & own):
            return cand, []
        extra = sorted(set(cand) - own)
        if extra and all(k.startswith(CLASSIFIER_PREFIXES) for k in extra):
            kept = {k: v for k, v in cand.items() if k in own}
            if set(kept) == own:  # e.g. torchvision's resnet18().state_dict(): only fc.* left over
                return kept, extra
    return None


def _as_in_file(picked: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """``picked`` (prefix-stripped tensors of ``state``) under their names in the file."""
    names = {id(v): k for k, v in state.items()}
    return {names.get(id(v), k): v for k, v in picked.items()}


def load_backbone(
    ckpt_path: str | Path,
    backbone: nn.Module | str | None = None,
    prefix: str | None = None,
    small_image: bool | None = None,
    strict: bool = True,
    allowed_classes: Any = (),
) -> nn.Module:
    """The backbone stored in ``ckpt_path``, weights loaded, on CPU, in eval mode.

    Args:
        ckpt_path: checkpoint file (Lightning checkpoint, or a plain state dict such as
            torchvision's ``resnet18().state_dict()``: its classifier keys ``fc.*`` /
            ``head.*`` / ``classifier.*`` are dropped with a :class:`DroppedKeysWarning`).
        backbone: the architecture: a module (filled in place), a ``build_backbone`` name,
            or ``None`` to use the checkpoint's ``hyper_parameters["backbone"]`` name
            (MoCoCropMix / CropMixClassifier checkpoints). MAE checkpoints need the module
            (``MAECropMix(...).backbone``).
        prefix: state-dict prefix of the backbone (default: try ``PREFIXES``).
        small_image: CIFAR stem for named ResNets; ``None`` reads the hyper-parameters.
        strict: as in ``nn.Module.load_state_dict``.
        allowed_classes: classes besides this package's that the checkpoint may name
            (:func:`check_class_path`).

    Raises:
        ValueError: ``backbone`` is ``None`` and the checkpoint does not name one.
        UntrustedCheckpointError: the checkpoint names a class that is not trusted.
    """
    ckpt = load_checkpoint(ckpt_path)
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    hp = hp if isinstance(hp, dict) else {}
    check_class_path(hp.get("_class_path"), ckpt_path, allowed_classes)
    if backbone is None:
        backbone = hp.get("backbone")
        if not isinstance(backbone, str):
            raise ValueError(
                f"backbone=None but {str(ckpt_path)!r} names no backbone in its hyper_parameters; "
                "pass the architecture (a module or a build_backbone name)"
            )
    if isinstance(backbone, str):
        from ssl_cropmix.models.backbones import build_backbone

        si = bool(hp.get("small_image", False)) if small_image is None else small_image
        backbone, _ = build_backbone(backbone, small_image=si)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be an nn.Module, a name or None, got {type(backbone).__name__}")
    state = _state_dict_of(ckpt)
    own = set(backbone.state_dict())
    if prefix is None:  # the first prefix whose stripped keys match the architecture
        found = _match_backbone_keys(state, own, strict)
        if found is not None:
            cand, dropped = found
            if dropped:
                warnings.warn(
                    f"{str(ckpt_path)!r}: not loading the classifier weights {', '.join(dropped[:4])}"
                    f"{' ...' if len(dropped) > 4 else ''} into the backbone (it has no classifier)",
                    DroppedKeysWarning,
                    stacklevel=2,
                )
            check_finite_weights(_as_in_file(cand, state), ckpt_path)
            backbone.load_state_dict(cand, strict=strict)
            return backbone.eval()
    picked = strip_prefix(state, prefix)
    check_finite_weights(_as_in_file(picked, state), ckpt_path)
    backbone.load_state_dict(picked, strict=strict)
    return backbone.eval()


def load_module(
    ckpt_path: str | Path,
    backbone: str | None = None,
    model_class: type | str | None = None,
    allowed_classes: Any = (),
) -> nn.Module:
    """An ``nn.Module`` with a ``backbone`` attribute holding the checkpoint's weights.

    Lightning checkpoints written through the CLI record the module's class
    (``hyper_parameters["_class_path"]``): the module is rebuilt from its hyper-parameters and
    its whole state dict loaded (MoCo, MAE, the classifier, evaluation modules, and users'
    modules when named by ``model_class`` / ``allowed_classes``). Otherwise
    :func:`load_backbone` builds the backbone by name.
    Loading always uses ``torch.load(weights_only=True)``, and no class outside the trusted
    set is imported (:func:`check_class_path`).

    Args:
        ckpt_path: checkpoint file.
        backbone: a ``build_backbone`` name: load only the backbone, by name.
        model_class: the LightningModule class to rebuild (a class, or a ``"module.Class"``
            string, which is then imported: you name it, so you trust it); overrides the
            checkpoint's ``_class_path``.
        allowed_classes: further classes the checkpoint's ``_class_path`` may name.

    Raises:
        UntrustedCheckpointError: the checkpoint names a class that is not trusted.
    """
    import importlib

    ckpt = load_checkpoint(ckpt_path)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    hp = dict(hp) if isinstance(hp, dict) else {}
    allowed = list(allowed_classes or ()) + ([model_class] if model_class is not None else [])
    class_path = check_class_path(hp.get("_class_path"), ckpt_path, allowed)
    if model_class is not None:
        class_path = class_path_of(model_class)
    if backbone is None and class_path is None and "model_name" in hp:
        class_path = "ssl_cropmix.methods.mae.MAECropMix"  # MAE checkpoints made from Python
    if backbone is None and class_path:
        if isinstance(model_class, type):
            cls = model_class
        else:
            mod, _, name = class_path.rpartition(".")
            cls = getattr(importlib.import_module(mod), name)
        if not isinstance(ckpt.get("state_dict"), dict):
            raise ValueError(f"{str(ckpt_path)!r} has no 'state_dict' to load into {class_path}")
        check_finite_weights(ckpt["state_dict"], ckpt_path)
        module = _build_from_hparams(cls, hp)
        check_weights_match(module, ckpt["state_dict"], class_path, ckpt_path)
        module.load_state_dict(ckpt["state_dict"])  # strict: a partial load must not pass silently
        if not isinstance(getattr(module, "backbone", None), nn.Module):
            raise TypeError(f"{class_path} has no `backbone` module to evaluate")
        return module.eval()
    holder = nn.Module()
    holder.backbone = load_backbone(ckpt_path, backbone, allowed_classes=allowed)
    return holder.eval()


def check_weights_match(
    module: nn.Module, state: dict[str, Any], class_path: str, source: str | Path
) -> None:
    """Refuse a checkpoint whose weights are not ``module``'s (its class as the checkpoint names
    it), before loading them: the same :class:`CheckpointMismatchError` ``fit`` gives, naming
    the keys, instead of ``load_state_dict``'s ``Unexpected key(s)`` traceback.

    Raises:
        CheckpointMismatchError: unexpected, missing or differently shaped tensors.
    """
    own = module.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    shapes = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the class"
        for k in sorted(set(own) & set(state))
        if isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if not (unexpected or missing or shapes):
        return
    parts = []
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) the class does not have ({', '.join(unexpected[:3])}"
                     f"{' ...' if len(unexpected) > 3 else ''})")
    if missing:
        parts.append(f"{len(missing)} of the class's tensor(s) missing ({', '.join(missing[:3])}"
                     f"{' ...' if len(missing) > 3 else ''})")
    if shapes:
        parts.append(f"{len(shapes)} of another shape ({'; '.join(shapes[:2])}{' ...' if len(shapes) > 2 else ''})")
    raise CheckpointMismatchError(
        f"checkpoint {str(source)!r} is read as class {class_path!r} but its weights are not that class's: "
        f"{'; '.join(parts)}; it was written by another model class (or altered): rebuild it with the class "
        "that wrote it (model_class= in Python, --model-class on the command line)"
    )


def _build_from_hparams(cls: type, hp: dict[str, Any], meta: bool = False) -> nn.Module:
    """``cls`` built from the checkpoint's hyper-parameters (the ones its ``__init__`` takes);
    ``meta=True``: on the meta device (no memory, no init cost), for a shape check only."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in hp.items() if k in params and not k.startswith("_")}
    if meta:
        try:
            with torch.device("meta"):
                return cls(**kwargs)
        except Exception:  # a constructor that needs real tensors: build it on the CPU
            pass
    return cls(**kwargs)


def check_checkpoint_weights(ckpt: dict[str, Any], source: str | Path) -> None:
    """The checks a checkpoint's weights pass before any use that does not build its module
    (``export``): finite (:func:`check_finite_weights`), and, when the checkpoint names one of
    this package's classes, the weights are that class's (:func:`check_weights_match`, the class
    built on the meta device).

    Raises:
        NonFiniteCheckpointError: NaN / inf weights.
        CheckpointMismatchError: the weights are not the named class's.
    """
    state = _state_dict_of(ckpt)
    check_finite_weights(state, source)
    hp = ckpt.get("hyper_parameters")
    class_path = hp.get("_class_path") if isinstance(hp, dict) else None
    cls = _resolve_own_class(class_path) if isinstance(class_path, str) else None
    if cls is not None and isinstance(ckpt.get("state_dict"), dict) and _is_trusted_package_class(class_path):
        check_weights_match(_build_from_hparams(cls, hp, meta=True), ckpt["state_dict"], class_path, source)


def _same_own_class(ckpt_class: Any, configured: type | str) -> bool:
    """Whether two names of this package resolve to one class (``ssl_cropmix.MoCoCropMix``
    and ``ssl_cropmix.methods.moco.MoCoCropMix``); foreign names are never imported."""
    if not isinstance(ckpt_class, str):
        return False
    a = _resolve_own_class(ckpt_class)
    b = configured if isinstance(configured, type) else _resolve_own_class(configured)
    return a is not None and a is b


def _foreign_hparams(hp: dict[str, Any], configured: type | str) -> list[str]:
    """Checkpoint hyper-parameters the configured model class does not take (a checkpoint
    saved from Python by another model records no ``_class_path``)."""
    import importlib
    import inspect

    cls = configured
    if isinstance(configured, str):  # the user's own config named it: importing it is theirs
        mod, _, name = configured.rpartition(".")
        try:
            cls = getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            return []
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    return sorted(k for k in hp if not k.startswith("_") and k not in params)


def check_cli_checkpoint(ckpt_path: str | Path, configured_class: type | str | None) -> dict[str, Any]:
    """Checks on a ``fit/validate/test --ckpt_path`` file before LightningCLI reads it.

    LightningCLI merges the checkpoint's ``hyper_parameters`` into the config, and its
    ``_class_path`` would switch the model class. Here the file must be a Lightning
    checkpoint, and the class it names must be the configured model's (``--model``, which
    the user named) or, with no model configured, one of this package's.

    Args:
        ckpt_path: the ``--ckpt_path`` file.
        configured_class: the config's ``model.class_path`` (``None``: none configured).

    Returns:
        The loaded checkpoint.

    Raises:
        ValueError: empty / truncated file, or not a Lightning checkpoint (a plain state dict:
            use ``load_backbone`` / ``probe --backbone``).
        CheckpointMismatchError: the checkpoint was written by another class than the configured one.
        UntrustedCheckpointError: no model configured and the class is not this package's.
    """
    ckpt = load_checkpoint(ckpt_path)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    ckpt_class = hp.get("_class_path") if isinstance(hp, dict) else None
    if ckpt_class is not None:  # the class first: never let a foreign name through, whatever else
        if configured_class is None:
            check_class_path(ckpt_class, ckpt_path)
        elif ckpt_class != class_path_of(configured_class) and not _same_own_class(ckpt_class, configured_class):
            raise CheckpointMismatchError(
                f"checkpoint {str(ckpt_path)!r} was written by {ckpt_class!r} but the configured model is "
                f"{class_path_of(configured_class)!r}; refusing to switch the model class (use the config "
                "that wrote the checkpoint, or set --model to the checkpoint's class)"
            )
    if not isinstance(ckpt, dict) or "pytorch-lightning_version" not in ckpt or not isinstance(
        ckpt.get("state_dict"), dict
    ):
        keys = list(ckpt)[:4] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"{str(ckpt_path)!r} is not a Lightning checkpoint (no 'pytorch-lightning_version' / "
            f"'state_dict'; first keys: {keys}), so it cannot be resumed or validated with "
            "--ckpt_path; for a plain state dict of backbone weights use "
            "ssl_cropmix.checkpoints.load_backbone(path, name) or `ssl-cropmix probe --ckpt PATH --backbone NAME`"
        )
    check_finite_weights(ckpt["state_dict"], ckpt_path)
    if ckpt_class is None and configured_class is not None and isinstance(hp, dict):
        extra = _foreign_hparams(hp, configured_class)
        if extra:
            raise CheckpointMismatchError(
                f"checkpoint {str(ckpt_path)!r} holds hyper-parameters {extra[:6]} that the configured model "
                f"{class_path_of(configured_class)!r} does not take: it was written by another model class; "
                "use the config that wrote it"
            )
    return ckpt


def recorded_class_counts(ckpt: dict[str, Any]) -> dict[str, int]:
    """Class counts a Lightning checkpoint carries: the output size of each callback's linear
    ``head`` (the online probe: ``{"OnlineLinearProbe": 3}``) and the model's ``num_classes``
    hyper-parameter (``"model"``)."""
    out: dict[str, int] = {}
    for key, st in (ckpt.get("callbacks") or {}).items():
        head = st.get("head") if isinstance(st, dict) else None
        bias = head.get("bias") if isinstance(head, dict) else None
        if isinstance(bias, torch.Tensor) and bias.ndim == 1:
            out[str(key)] = int(bias.shape[0])
    hp = ckpt.get("hyper_parameters")
    n = hp.get("num_classes") if isinstance(hp, dict) else None
    if isinstance(n, int) and not isinstance(n, bool):
        out["model"] = n
    return out


def describe_data_record(rec: Any) -> str:
    """A short description of a data module's recorded init arguments: its source
    (``ImageFolderSource(root='/data')``, from the ``class_path`` / ``init_args`` record) or,
    for checkpoints of ssl_cropmix < 0.2, the flat ``dataset`` / ``data_dir``."""
    src = rec.get("source") if hasattr(rec, "get") else None
    if hasattr(src, "get") and src.get("class_path"):
        args = src.get("init_args") or {}
        where = ", ".join(f"{k}={args[k]!r}" for k in ("root", "uri") if args.get(k) is not None)
        return f"{str(src['class_path']).rpartition('.')[2]}({where})"
    if not hasattr(rec, "get"):
        return ""
    return ", ".join(f"{k}={rec[k]!r}" for k in ("dataset", "data_dir") if rec.get(k) is not None)


def check_class_count(
    ckpt: dict[str, Any], source: str | Path, num_classes: int | None, data: str = "", in_use: Any = None,
) -> None:
    """Refuse to resume a checkpoint whose class count is not the configured data's.

    Args:
        ckpt: the loaded Lightning checkpoint.
        source: its file, for the message.
        num_classes: the configured data's class count (``None``: unknown, nothing checked).
        data: a short description of the configured data, for the message.
        in_use: names of the configured callbacks (``None``: all of the checkpoint's); a
            recorded head of a callback no longer configured is not loaded, so not checked.

    Raises:
        CheckpointMismatchError: naming the part (online probe / model) and both class counts.
    """
    if num_classes is None:
        return
    counts = recorded_class_counts(ckpt)
    wrong = {k: n for k, n in counts.items() if n != num_classes and (
        k == "model" or in_use is None or k.split("{")[0] in set(in_use))}
    if not wrong:
        return
    key, n = next(iter(wrong.items()))
    what = ("the model's classifier (num_classes)" if key == "model"
            else f"its online probe ({key}: a linear head of {n} classes)")
    was = describe_data_record(ckpt.get("datamodule_hyper_parameters") or {})
    raise CheckpointMismatchError(
        f"checkpoint {str(source)!r} was trained on {n} classes{f' ({was})' if was else ''} but the configured "
        f"data has {num_classes}{f' ({data})' if data else ''}: the class count changed, so {what} cannot be "
        "resumed; resume with the data the run was trained on, or start a new run (without --ckpt_path) and "
        "initialise it from the checkpoint's backbone (ssl_cropmix.checkpoints.load_backbone)"
    )


class NonFiniteCheckpointError(FloatingPointError):
    """A checkpoint would hold NaN / inf weights; it is not written."""


def nonfinite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding NaN / inf (one host sync per
    device, not one per tensor): the one finiteness check behind saving and loading."""
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            by_device.setdefault(v.device, []).append((k, v))
    bad: list[str] = []
    for items in by_device.values():
        finite = torch.stack([torch.isfinite(v).all() for _, v in items]).tolist()
        bad += [k for (k, _), ok in zip(items, finite) if not ok]
    return bad


def _names(bad: list[str]) -> str:
    return f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''} ({len(bad)} tensor{'s' if len(bad) != 1 else ''})"


def check_finite_state(state: dict[str, Any], step: int | None = None, owner: str = "model") -> None:
    """Refuse to save weights that are not finite (called from the methods' ``on_save_checkpoint``).

    Raises:
        NonFiniteCheckpointError: names the step and the first tensors holding NaN / inf;
            raised before anything is written, so the last good checkpoint stays the last one.
    """
    bad = nonfinite_tensors(state)
    if bad:
        raise NonFiniteCheckpointError(
            f"{owner}: refusing to save a checkpoint at global step {step}: non-finite (NaN/inf) values in "
            f"{_names(bad)}; the training diverged (lower the learning rate); earlier checkpoints are kept"
        )


def check_finite_weights(state: dict[str, Any], source: str | Path) -> None:
    """Refuse to use weights read from ``source`` that are not finite (every loading path:
    :func:`load_backbone`, :func:`load_module`, ``export``, ``fit/validate/test --ckpt_path``).

    Raises:
        NonFiniteCheckpointError: naming the file and the first tensors holding NaN / inf.
    """
    bad = nonfinite_tensors(state)
    if bad:
        raise NonFiniteCheckpointError(
            f"checkpoint {str(source)!r} holds non-finite (NaN/inf) weights in {_names(bad)}; refusing to "
            "use them (the run that wrote it diverged, or the file was altered): use an earlier checkpoint"
        )
