"""``ssl-cropmix``: the command-line entry point.

* ``ssl-cropmix fit|validate|test --config configs/<recipe>.yaml [--overrides]`` is a plain
  :class:`~pytorch_lightning.cli.LightningCLI` in subclass mode: the model, data module and
  callbacks are chosen by ``class_path`` in the YAML or by their short class name
  (``--model MAECropMix``); ``--print_config`` prints what the run will use, run directory
  and loggers included.
* ``ssl-cropmix show-views|probe|finetune|export ...`` are small task commands that reuse
  the same parts (see ``ssl-cropmix <command> --help``).

Every run writes to one directory, ``<root>/<experiment>/<version>/`` (``ssl_cropmix.runs``):
the resolved ``config.yaml``, TensorBoard events, ``metrics.csv``, ``checkpoints/`` and the
JSON results of the evaluation callbacks. The version is the start time; runs started in
the same second get ``-1``, ``-2``, ... suffixes. ``fit --ckpt_path <run>/checkpoints/x.ckpt``
continues in ``<run>`` (the earlier config is kept as ``config.1.yaml``, ...); ``fit --ckpt_path
last`` does the same with the newest checkpoint of the experiment's newest run, and a SLURM
job that Lightning requeued continues in its own run (``trainer.default_root_dir`` is the run
directory, where Lightning writes ``hpc_ckpt_<n>.ckpt``). A run that fails before it wrote a
checkpoint or a metric leaves no directory behind.
"""

from __future__ import annotations

import errno
import inspect
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, NamedTuple

#: argparse task commands (``ssl_cropmix.commands``); a new one is one more name here and
#: one more entry in ``commands._HANDLERS``.
TASK_COMMANDS = ("show-views", "probe", "finetune", "export", "robustness", "optimize")  # robustness: evaluation/robustness_cli.py

#: Lightning subcommands offered (``predict`` is not: no model here has a ``predict_step``).
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")

#: Modules imported before parsing, so LightningCLI resolves the package's models, data
#: modules and callbacks by short class name (jsonargparse finds imported subclasses).
CLASS_MODULES = (
    "ssl_cropmix.methods.moco",
    "ssl_cropmix.methods.mae",
    "ssl_cropmix.methods.classifier",
    "ssl_cropmix.data.datamodule",
    "ssl_cropmix.callbacks.online_probe",
    "ssl_cropmix.callbacks.knn",
    "ssl_cropmix.callbacks.linear_probe",
    "ssl_cropmix.callbacks.finetune",
    "ssl_cropmix.callbacks.reconstruction",
    "ssl_cropmix.evaluation.lars",
    "ssl_cropmix.callbacks.robustness",
    "ssl_cropmix.callbacks.summary",
)

#: Set ``SSL_CROPMIX_DEBUG=1`` to get the full traceback of configuration errors.
DEBUG_ENV = "SSL_CROPMIX_DEBUG"


# ---------------------------------------------------------------------------- known Lightning noise
#: Lightning's advertisements, logged with ``rank_zero_info`` on every run:
#: ``pytorch_lightning/trainer/connectors/logger_connector/logger_connector.py`` ("Tip: ...
#: litlogger", when no ``LitLogger`` is attached) and ``.../callback_connector.py`` ("Tip: ...
#: litmodels", when ``litmodels`` is not installed).
LIGHTNING_TIP = re.compile(r"^💡 Tip: For seamless cloud .*\[lit(logger|models)\]")
#: torch >= 2.10 deprecates ``torch.utils._pytree.LeafSpec`` (a ``FutureWarning`` when it is
#: instantiated); ``pytorch_lightning/utilities/_pytree.py`` (``_tree_flatten``) still calls
#: ``LeafSpec()`` in every training loop. Nothing a user can change.
LEAFSPEC_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
_RANK_ZERO_LOGGERS = (  # where rank_zero_info logs (each package rebinds the logger on import)
    "lightning_utilities.core.rank_zero", "lightning_fabric.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero",
)


class _DropLightningTips(logging.Filter):
    """Drops the log records that match :data:`LIGHTNING_TIP`, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return LIGHTNING_TIP.match(record.getMessage()) is None


_TIP_FILTER = _DropLightningTips()


def silence_known_noise() -> None:
    """Filter Lightning's advertisement lines and the ``LeafSpec`` deprecation, by message.

    Only these messages: every other log record and warning (Lightning's, torch's, ours) is
    printed as before. Called by the CLI entry points (not on ``import ssl_cropmix``: library
    users keep their own logging and warning settings). Idempotent.
    """
    for name in _RANK_ZERO_LOGGERS:
        log = logging.getLogger(name)
        if _TIP_FILTER not in log.filters:
            log.addFilter(_TIP_FILTER)
    warnings.filterwarnings(
        "ignore", message=LEAFSPEC_DEPRECATION, category=FutureWarning, module=r"pytorch_lightning\.utilities\._pytree"
    )


def default_callbacks() -> list[Any]:
    """Callbacks every ``ssl-cropmix`` Lightning run gets in addition to the config's (the
    one place to add more)."""
    from ssl_cropmix.callbacks.summary import RunSummary
    from ssl_cropmix.runs import LogLastStep

    return [LogLastStep(), RunSummary()]


def import_package_classes() -> None:
    """Import :data:`CLASS_MODULES` (short class names on the command line need them)."""
    import importlib

    for name in CLASS_MODULES:
        importlib.import_module(name)


def _linked_defaults(model_cfg: Any, data_cfg: Any) -> dict[str, Any]:
    """Values the data module knows that the model may ask for (batch size, class count).

    LightningCLI's ``link_arguments`` needs the target argument on every possible model
    class; in subclass mode our models differ (``CropMixClassifier`` needs ``num_classes``,
    MoCo/MAE do not), so we link by signature instead: a model init argument named
    ``num_classes`` / ``batch_size`` that the config leaves unset takes the data module's.
    """
    import importlib

    out: dict[str, Any] = {}
    if model_cfg is None or data_cfg is None:
        return out
    model_path = model_cfg.get("class_path") if hasattr(model_cfg, "get") else None
    data_path = data_cfg.get("class_path") if hasattr(data_cfg, "get") else None
    if not model_path or not data_path:
        return out
    mod, _, name = model_path.rpartition(".")
    model_cls = getattr(importlib.import_module(mod), name)
    params = inspect.signature(model_cls.__init__).parameters
    model_args = model_cfg.get("init_args") or {}
    data_args = data_cfg.get("init_args") or {}
    if "batch_size" in params and model_args.get("batch_size") is None and data_args.get("batch_size"):
        out["batch_size"] = data_args["batch_size"]
    out.update(_image_size_links(model_path, params, model_args, data_args))
    if "num_classes" in params and model_args.get("num_classes") is None:
        dmod, _, dname = data_path.rpartition(".")
        data_cls = getattr(importlib.import_module(dmod), dname)
        # a data module may declare the class count statically (classmethod/staticmethod)
        infer = getattr(data_cls, "infer_num_classes", None)
        if callable(infer):
            n = infer(**_plain(data_args))
            if n is not None:
                out["num_classes"] = int(n)
    return out


def _plain(init_args: Any) -> dict[str, Any]:
    """A config's ``init_args`` as nested plain dicts (``dict()`` of a jsonargparse
    ``Namespace`` would flatten nested parts to ``"source.class_path"`` keys)."""
    if init_args is None:
        return {}
    return init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args)


def _check_resumed_class_count(ckpt: dict[str, Any], ckpt_path: str, cfg: Any) -> None:
    """``--ckpt_path`` with data of another class count (a 3-class run resumed with the
    8-class demo config): one clear error naming the online probe / classifier instead of
    ``load_state_dict``'s ``size mismatch for bias``."""
    import importlib

    from ssl_cropmix.checkpoints import check_class_count, describe_data_record

    data = cfg.get("data")
    path = data.get("class_path") if hasattr(data, "get") else None
    if not path:
        return
    init = _plain(data.get("init_args"))
    mod, _, name = str(path).rpartition(".")
    infer = getattr(getattr(importlib.import_module(mod), name, None), "infer_num_classes", None)
    n = infer(**init) if callable(infer) else None
    callbacks = (cfg.get("trainer") or {}).get("callbacks") or []
    in_use = [str(c.get("class_path", "")).rpartition(".")[2] for c in callbacks if hasattr(c, "get")]
    in_use += [type(c).__name__ for c in callbacks if not hasattr(c, "get")]
    check_class_count(ckpt, ckpt_path, n, describe_data_record(init), in_use)


def _with_atomic_checkpoint_io(plugins: Any) -> list[Any]:
    """The configured trainer plugins plus :class:`~ssl_cropmix.runs.AtomicCheckpointIO`, unless
    one of them is a ``CheckpointIO`` already (the user's choice is kept)."""
    from pytorch_lightning.plugins.io import CheckpointIO

    from ssl_cropmix.runs import AtomicCheckpointIO

    items = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in items):
        items.append(AtomicCheckpointIO())
    return items


def _image_size_links(model_path: str, params: Any, model_args: Any, data_args: Any) -> dict[str, Any]:
    """Backbone and image size agree: the model's stem / ViT size from the data's ``image_size``.

    * ``small_image`` (stem of a ResNet given by name): jsonargparse fills the model's default (``False``) in, so
      an unset value cannot be told from an explicit one and linking would override the
      user; the flag is validated instead. It must equal the data's small-image setting
      (``data.small_image``, else ``image_size <= 64``), or the run is refused naming both.
    * MAE ``img_size`` / ``patch_size`` left unset (``None``): ``img_size`` is the data's
      ``image_size``; at <= 64 px ``patch_size`` is ``image_size // 8`` (an 8 x 8 grid, as
      ``configs/mae/cifar10_cropmix.yaml``), said in the log.
    """
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from ssl_cropmix.data.views import SMALL_IMAGE_MAX

    out: dict[str, Any] = {}
    size = data_args.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool):
        return out
    data_small = data_args.get("small_image")
    data_small = size <= SMALL_IMAGE_MAX if data_small is None else bool(data_small)
    model_small = model_args.get("small_image")
    named = model_args.get("backbone")  # the stem flag only builds a ResNet given by name
    named = isinstance(named, str) and "vit" not in named.lower()
    if "small_image" in params and named and isinstance(model_small, bool) and model_small != data_small:
        stem = ("a 3x3 stride-1 stem without max-pool (for <= 64-px images)" if model_small else
                "the ImageNet stem (7x7 stride-2 conv + max-pool: 32-px images leave 8x8 maps after it)")
        raise MisconfigurationException(
            f"model.small_image={model_small} ({model_path.rsplit('.', 1)[-1]} with {stem}) does not match the data: "
            f"data.image_size={size} ({'<=' if size <= SMALL_IMAGE_MAX else '>'} {SMALL_IMAGE_MAX} px"
            f"{'' if data_args.get('small_image') is None else f', data.small_image={data_small}'}); set "
            f"--model.init_args.small_image={str(data_small).lower()} or change --data.init_args.image_size"
        )
    if "img_size" in params and "patch_size" in params and model_args.get("img_size") is None:
        out["img_size"] = size
        if model_args.get("patch_size") is None and size <= SMALL_IMAGE_MAX:
            out["patch_size"] = max(1, size // 8)
        _info(f"model.img_size left unset: the data's image_size={size}"
              + (f", patch_size={out['patch_size']} (an 8x8 grid of patches)" if "patch_size" in out else ""))
    return out


def _warn(message: str) -> None:
    from pytorch_lightning.utilities import rank_zero_warn

    rank_zero_warn(message)


def _info(message: str) -> None:
    from pytorch_lightning.utilities import rank_zero_info

    rank_zero_info(message)


def _loggers(root: str, name: str, version: str) -> list[dict[str, Any]]:
    """The loggers of a run, as config: what ``--print_config`` shows and what
    ``CropMixCLI.instantiate_trainer`` builds (one list for both)."""
    args = {"save_dir": root, "name": name, "version": version}
    return [
        {"class_path": "pytorch_lightning.loggers.TensorBoardLogger", "init_args": dict(args)},
        {"class_path": "ssl_cropmix.runs.RunCSVLogger", "init_args": dict(args)},
    ]


# ---------------------------------------------------------------------------- the CLI's steps
# ``CropMixCLI`` (below) only names the order; each step is one function here.


def _add_experiment_argument(parser: Any) -> None:
    """``--experiment``: the run's name (the run directory's middle part)."""
    parser.add_argument(
        "--experiment",
        type=str | None,
        default=None,
        help="Run name: logs go to <trainer.default_root_dir>/<experiment>/<version>/ "
        "(default: the first config file's stem). With a user-given --trainer.logger it "
        "becomes that logger's `name` where the logger has one.",
    )


def _subcommand_config(config: Any) -> tuple[str | None, Any]:
    """``(subcommand, its config)`` (the whole config when there is no subcommand)."""
    sub = config.get("subcommand")
    return sub, (config.get(sub) if sub else config)


def _check_ckpt_path(config: Any) -> None:
    """Resolve ``fit --ckpt_path last`` / a requeued SLURM job (:func:`_resolve_resume`), then
    refuse foreign / untrusted ``--ckpt_path`` files (``checkpoints.check_cli_checkpoint``) and
    a class count that changed, before LightningCLI merges the checkpoint's hyper-parameters
    (and ``_class_path``) into the config."""
    from ssl_cropmix.checkpoints import check_cli_checkpoint

    sub, cfg = _subcommand_config(config)
    if sub == "fit":
        _resolve_resume(cfg)
    ckpt_path = cfg.get("ckpt_path") if sub else None
    if ckpt_path and Path(ckpt_path).is_file():  # not "last" / "best" / remote: as Lightning
        model = cfg.get("model")
        ckpt = check_cli_checkpoint(ckpt_path, model.get("class_path") if hasattr(model, "get") else None)
        _check_resumed_class_count(ckpt, ckpt_path, cfg)


def _print_config_flags(args: Any) -> list[str]:
    """The ``--print_config[=...]`` arguments of ``args`` (``sys.argv`` when ``None``)."""
    if isinstance(args, dict):
        return []
    argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
    return [a for a in argv if a == "--print_config" or a.startswith("--print_config=")]


def _print_config(cli: Any, parser: Any, args: Any, flags: list[str]) -> None:
    """``--print_config``: print the configuration after the run-directory defaults are
    applied (what a real run uses), then exit."""
    argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
    cli.config = parser.parse_args([a for a in argv if a not in flags])
    sub, cfg = _subcommand_config(cli.config)
    cli._apply_defaults(sub, cfg, dry=True)
    subparser = parser._subcommands_action._name_parser_map[sub] if sub else parser
    words = {w for f in flags for w in f.partition("=")[2].split(",") if w}
    sys.stdout.write(subparser.dump(
        cfg, skip_unset=bool(words & {"skip_unset", "skip_null"}), skip_default="skip_default" in words,
        skip_validation=True, with_comments="comments" in words,
    ))
    parser.exit()


def _link_data_into_model(cfg: Any) -> None:
    """Model arguments left unset take the data module's values (:func:`_linked_defaults`)."""
    for k, v in _linked_defaults(cfg.get("model"), cfg.get("data")).items():
        cfg["model"]["init_args"][k] = v


def _resumed_run(
    sub: str | None, ckpt: str, run: Path, given_root: str, experiment: str | None, dry: bool
) -> tuple[str, str, str]:
    """``fit --ckpt_path <run>/checkpoints/x.ckpt``: continue in ``<run>`` (and record this SLURM
    job there, so a requeue finds it); ``(root, name, version)``."""
    from ssl_cropmix import runs

    name, version = run.parent.name, run.name
    # keep the root as spelled in the first segment when it is the same folder, so
    # ModelCheckpoint's restored dirpath matches (no "dirpath has changed")
    root = given_root if (Path(given_root) / name / version).resolve() == run.resolve() else str(run.parent.parent)
    if experiment and experiment != name and not dry:
        _warn(f"--experiment {experiment!r} ignored: resuming {ckpt} continues in its run directory {run}")
    if not dry and not runs.is_launched_child():
        runs.keep_previous_config(run)
        if sub == "fit" and (job := runs.slurm_job_id()):
            runs.record_slurm_job(run, job)
        _info(f"resuming in the checkpoint's run directory {run}")
    return root, name, version


def _experiment_name(cfg: Any) -> str:
    """``--experiment``, else the first config file's stem, else ``"ssl_cropmix"``."""
    if cfg.get("experiment"):
        return str(cfg.get("experiment"))
    configs = cfg.get("config") or []
    return Path(str(configs[0])).stem if configs else "ssl_cropmix"


def _run_root_dir(root: str, name: str, version: str) -> str:
    """``trainer.default_root_dir`` of a CLI run: its run directory. Lightning's SLURM requeue
    writes ``hpc_ckpt_<n>.ckpt`` there (``_SignalConnector``), so the checkpoint lies in the run
    it belongs to and never in another experiment's way."""
    return str(Path(root) / name / version)


def _resolve_resume(cfg: Any) -> None:
    """Turn ``fit --ckpt_path last`` (and a requeued SLURM job) into the checkpoint to resume.

    * ``--ckpt_path last``: the newest checkpoint (``hpc_ckpt_<n>.ckpt`` or
      ``checkpoints/*.ckpt``, by step then modification time) of the experiment's newest run
      (:func:`ssl_cropmix.runs.latest_checkpoint`); the fit continues in that run directory.
      Without any, the fit starts a new run (as Lightning's ``"last"`` does, so a job script
      can always pass it).
    * Under SLURM (``SLURMEnvironment.detect()``), in a requeued job (``SLURM_RESTART_COUNT``
      >= 1; ``scontrol requeue`` keeps the job id) with no ``--ckpt_path``, or with ``last``: a
      run of the experiment that this job id wrote to (``slurm_jobs.txt``) is continued from its
      newest checkpoint, in place. A first execution of the job starts a new run, so a job
      that runs several fits of one experiment does not chain them.

    The choice is said in one log line and replaces ``ckpt_path`` in ``cfg``. A user-given
    ``trainer.logger`` other than trackers (no run directories) leaves ``ckpt_path`` to Lightning.
    """
    from ssl_cropmix import runs

    ckpt = cfg.get("ckpt_path")
    trainer = cfg.get("trainer") or {}
    logger = trainer.get("logger")
    if ckpt not in (None, "last") or (logger not in (None, True) and _tracker_configs(logger) is None):
        return
    job = runs.slurm_job_id()
    restart = os.environ.get("SLURM_RESTART_COUNT")
    if ckpt is None and (job is None or not (restart or "").strip().isdigit() or int(restart) < 1):
        return  # only a requeued job (SLURM_RESTART_COUNT >= 1) continues without being asked
    root = str(trainer.get("default_root_dir") or "runs")
    name = _experiment_name(cfg)
    own = runs.runs_of_slurm_job(root, name, job) if job else []
    latest = runs.latest_checkpoint(root, name, runs=own) if own else None
    if latest is not None:
        _info(f"SLURM job {job}{f' (restart {restart})' if restart else ''} resumes its {latest.describe()}")
    elif ckpt == "last":
        latest = runs.latest_checkpoint(root, name)
        _info(f"--ckpt_path last resumes experiment {name!r}: its newest {latest.describe()}" if latest else
              f"--ckpt_path last: experiment {name!r} has no checkpoint under {root!r}; starting a new run")
    cfg["ckpt_path"] = None if latest is None else str(latest.checkpoint)


def _tracker_configs(logger: Any) -> list[tuple[str, dict[str, Any]]] | None:
    """A ``trainer.logger`` made only of trackers (W&B, MLflow) joins the run directory's
    TensorBoard + CSV loggers: their ``(class_path, init_args)``, each checked installed
    (:func:`ssl_cropmix.trackers.check_tracker_installed`: a one-line error naming the extra).
    ``None`` for no logger or any other logger (it replaces the run directory's, as before)."""
    from ssl_cropmix.trackers import check_mlflow_store, check_tracker_installed, tracker_class_name

    items = logger if isinstance(logger, list) else [logger]
    if logger in (None, True, False) or not items:
        return None
    out: list[tuple[str, dict[str, Any]]] = []
    for item in items:
        path = item.get("class_path") if hasattr(item, "get") else None
        if tracker_class_name(path) is None:
            return None
        args = item.get("init_args") or {}
        out.append((str(path), dict(args.as_dict() if hasattr(args, "as_dict") else args)))
    for path, args in out:
        check_tracker_installed(path)
        if tracker_class_name(path) == "MLFlowLogger":
            check_mlflow_store(args)
    return out


def _new_run(cli_cls: Any, sub: str | None, ckpt: str | None, root: str, name: str, dry: bool) -> str:
    """A new run directory ``<root>/<name>/<version>`` (created by this process, handed to the
    ranks Lightning launches through ``$SSL_CROPMIX_RUN_VERSION``); returns the version."""
    from ssl_cropmix import runs

    if dry:
        return runs.timestamp()
    if runs.is_launched_child():
        return os.environ.get(runs.VERSION_ENV) or runs.timestamp()
    run = runs.new_run_dir(root, name)
    os.environ[runs.VERSION_ENV] = run.name  # for the ranks Lightning launches
    cli_cls.created_run_dir = run
    if sub == "fit" and (job := runs.slurm_job_id()):  # a requeued job finds its run by this
        runs.record_slurm_job(run, job)
    if sub == "fit" and ckpt:
        _info(f"{ckpt} is not inside an ssl-cropmix run directory: this segment writes to a new run directory {run}")
    return run.name


class _Run(NamedTuple):
    """Where a CLI run writes: ``<root>/<name>/<version>``, plus the trackers' logger configs
    (``class_path`` / ``init_args``) that join the run directory's TensorBoard + CSV loggers."""

    root: str
    name: str
    version: str
    trackers: list[dict[str, Any]]


def _configure_run_dir(cli_cls: Any, sub: str | None, cfg: Any, trainer: Any, dry: bool) -> _Run | None:
    """The run directory of this run, or ``None`` with a user-given logger other than trackers
    (which then gets ``--experiment`` as its name). ``dry``: ``--print_config``, which shows the
    loggers and root the run will use but creates nothing."""
    from ssl_cropmix import runs
    from ssl_cropmix.trackers import tracker_defaults

    experiment = cfg.get("experiment")
    logger = trainer.get("logger")
    trackers = _tracker_configs(logger)
    if logger not in (None, True) and trackers is None:
        if experiment and not dry:
            _experiment_to_user_logger(logger, experiment)
        return None
    given_root = str(trainer.get("default_root_dir") or "runs")
    ckpt = cfg.get("ckpt_path")
    resume = runs.run_dir_of_checkpoint(ckpt) if sub == "fit" and ckpt else None
    if resume is not None:
        root, name, version = _resumed_run(sub, ckpt, resume, given_root, experiment, dry)
    else:
        root, name = given_root, _experiment_name(cfg)
        version = _new_run(cli_cls, sub, ckpt, root, name, dry)
    cli_cls.run_dir = Path(root) / name / version
    run_dir = _run_root_dir(root, name, version)
    tracker_cfgs = [
        {"class_path": cp, "init_args": {**args, **tracker_defaults(cp, args, name, version, run_dir)}}
        for cp, args in trackers or []
    ]
    # The saved config.yaml names the experiment but leaves logger/default_root_dir as
    # the user gave them: `fit --config <run>/config.yaml` is a new run of the recipe.
    cfg["experiment"] = name
    if dry:  # --print_config: show what the run will use
        trainer["default_root_dir"] = run_dir
        trainer["logger"] = _loggers(root, name, version) + tracker_cfgs
    return _Run(root, name, version, tracker_cfgs)


def _trainer_kwargs_for_run(kwargs: dict[str, Any], plugins: Any, run: _Run | None) -> dict[str, Any]:
    """Trainer arguments the run adds: atomic checkpoint writes (unless the config brings its
    own ``CheckpointIO``), the run directory as ``default_root_dir`` and its loggers plus the
    trackers (unless given)."""
    if "plugins" not in kwargs:
        kwargs["plugins"] = _with_atomic_checkpoint_io(plugins)
    if run is not None:
        kwargs.setdefault("default_root_dir", _run_root_dir(run.root, run.name, run.version))
        if "logger" not in kwargs:
            from pytorch_lightning.cli import instantiate_class

            configs = _loggers(run.root, run.name, run.version) + run.trackers
            kwargs["logger"] = [instantiate_class((), c) for c in configs]
    return kwargs


def _experiment_to_user_logger(logger: Any, experiment: str) -> None:
    """Give ``--experiment`` to a user-given logger as its ``name``, or say why not."""
    import importlib

    items = logger if isinstance(logger, list) else [logger]
    applied = False
    for item in items:
        path = item.get("class_path") if hasattr(item, "get") else None
        if not path:
            continue
        mod, _, cls_name = str(path).rpartition(".")
        try:
            cls = getattr(importlib.import_module(mod), cls_name)
        except (ImportError, AttributeError):
            continue
        if "name" in inspect.signature(cls.__init__).parameters:
            if item.get("init_args") is None:
                item["init_args"] = {}
            if item["init_args"].get("name") in (None, "lightning_logs"):
                item["init_args"]["name"] = experiment
                applied = True
    if not applied:
        _warn(f"--experiment {experiment!r} ignored: the given trainer.logger sets its own "
              "name (or has none); set the logger's name instead")


def _make_cli_class():
    """``CropMixCLI``: LightningCLI whose hooks call the steps above, in this order: parse
    (``--experiment``; ``--print_config`` after the defaults), check ``--ckpt_path``, link data
    into the model, place the run directory, build the trainer with the run's loggers."""
    from pytorch_lightning.cli import LightningCLI

    class CropMixCLI(LightningCLI):
        """LightningCLI with one run directory per run, resume into it, and data -> model linking."""

        #: the run directory this process created (removed again if the run fails early)
        created_run_dir: Path | None = None
        #: the run directory this run writes to (``None`` with a user-given logger)
        run_dir: Path | None = None

        @staticmethod
        def subcommands() -> dict[str, set[str]]:
            return {k: v for k, v in LightningCLI.subcommands().items() if k in LIGHTNING_SUBCOMMANDS}

        def add_arguments_to_parser(self, parser) -> None:  # noqa: D401
            _add_experiment_argument(parser)

        def parse_arguments(self, parser, args) -> None:
            flags = _print_config_flags(args)
            if flags:
                _print_config(self, parser, args, flags)
            else:
                super().parse_arguments(parser, args)

        def _parse_ckpt_path(self) -> None:
            _check_ckpt_path(self.config)
            super()._parse_ckpt_path()

        def before_instantiate_classes(self) -> None:
            sub, cfg = _subcommand_config(self.config)
            if cfg is not None:
                self._apply_defaults(sub, cfg, dry=False)

        def _apply_defaults(self, sub: str | None, cfg: Any, dry: bool) -> None:
            _link_data_into_model(cfg)
            if cfg.get("trainer") is not None:
                self._run = _configure_run_dir(type(self), sub, cfg, cfg.get("trainer"), dry)

        def instantiate_trainer(self, **kwargs: Any):
            plugins = self._get(self.config_init, "trainer", default={}).get("plugins")
            return super().instantiate_trainer(**_trainer_kwargs_for_run(kwargs, plugins, getattr(self, "_run", None)))

    return CropMixCLI


def cli_main(args: list[str] | None = None, run: bool = True):
    """Build (and by default run) the LightningCLI. Returns the CLI object.

    A run directory created for a run that then fails before writing a checkpoint or a
    metric (a bad data root, an accelerator the machine does not have) is removed again.
    """
    from pytorch_lightning import LightningDataModule, LightningModule

    from ssl_cropmix.runs import remove_if_empty

    silence_known_noise()
    import_package_classes()
    CropMixCLI = _make_cli_class()
    try:
        return CropMixCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=run,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"callbacks": default_callbacks()},
            parser_kwargs={
                "description": "ssl_cropmix: CropMix self-supervised pretraining. Lightning "
                "subcommands below; task commands: " + ", ".join(TASK_COMMANDS)
                + " (ssl-cropmix <command> --help).",
            },
        )
    except BaseException:
        if CropMixCLI.created_run_dir is not None:
            remove_if_empty(CropMixCLI.created_run_dir)
        raise


def _one_line_errors() -> tuple[type[BaseException], ...]:
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from ssl_cropmix.runs import CheckpointWriteError, RunDirectoryError
    from ssl_cropmix.trackers import TrackerNotInstalledError

    return (MisconfigurationException, CheckpointWriteError, RunDirectoryError, TrackerNotInstalledError)


#: ``errno`` of a write the file system refused (full / read-only): a one-line error from any
#: file the run writes (config.yaml, metrics.csv, events), not only checkpoints.
_FILESYSTEM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def _one_line(e: BaseException) -> str | None:
    """The one-line message of an error the CLI reports without a traceback, else ``None``."""
    from ssl_cropmix.runs import describe_write_error

    if isinstance(e, _one_line_errors()):
        return e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    if isinstance(e, FileNotFoundError):  # a missing checkpoint / data root: the message names it
        return str(e)
    if isinstance(e, OSError) and e.errno in _FILESYSTEM_ERRNOS and e.filename:
        return f"could not write {str(e.filename)!r}: {describe_write_error(e, Path(e.filename).parent)}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    silence_known_noise()
    try:
        if args and args[0] in TASK_COMMANDS:
            from ssl_cropmix import commands

            return commands.run(args[0], args[1:])
        # LightningCLI reads sys.argv itself when args is None (and warns if given both).
        cli_main(None if argv is None else args)
    except Exception as e:  # configuration / file-system errors: the message is the whole story
        line = _one_line(e)
        if line is None or os.environ.get(DEBUG_ENV):
            raise
        print(f"ssl-cropmix: error: {line} (set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
