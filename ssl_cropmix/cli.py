"""``ssl-cropmix``: the command-line entry point.

* ``ssl-cropmix fit|validate|test --config configs/<recipe>.yaml [--overrides]`` is a plain
  :class:`~pytorch_lightning.cli.LightningCLI` in subclass mode: the model, data module and
  callbacks are chosen by ``class_path`` in the YAML; ``--print_config`` works as usual.
* ``ssl-cropmix show-views|probe|finetune|export ...`` are small task commands that reuse
  the same parts (see ``ssl-cropmix <command> --help``).

Every run writes to one directory, ``<root>/<experiment>/<version>/``: the resolved
``config.yaml``, TensorBoard events, ``metrics.csv``, ``checkpoints/`` and the JSON results
of the evaluation callbacks.
"""

from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path
from typing import Any

TASK_COMMANDS = ("show-views", "probe", "finetune", "export")
TASK_COMMANDS += ("robustness",)  # ssl_cropmix/evaluation/robustness_cli.py


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
    if "num_classes" in params and model_args.get("num_classes") is None:
        dmod, _, dname = data_path.rpartition(".")
        data_cls = getattr(importlib.import_module(dmod), dname)
        # a data module may declare the class count statically (classmethod/staticmethod)
        infer = getattr(data_cls, "infer_num_classes", None)
        if callable(infer):
            n = infer(**dict(data_args))
            if n is not None:
                out["num_classes"] = int(n)
    return out


def _make_cli_class():
    from pytorch_lightning.cli import LightningCLI

    class CropMixCLI(LightningCLI):
        """LightningCLI with run-directory defaults and data -> model linking."""

        def add_arguments_to_parser(self, parser) -> None:  # noqa: D401
            parser.add_argument(
                "--experiment",
                type=str | None,
                default=None,
                help="Run name: logs go to <trainer.default_root_dir>/<experiment>/<version>/ "
                "(default: the first config file's stem).",
            )

        def before_instantiate_classes(self) -> None:
            sub = self.config.get("subcommand")
            cfg = self.config.get(sub) if sub else self.config
            if cfg is None:
                return
            linked = _linked_defaults(cfg.get("model"), cfg.get("data"))
            for k, v in linked.items():
                cfg["model"]["init_args"][k] = v
            # One run directory shared by TensorBoard and CSV loggers.
            trainer = cfg.get("trainer")
            if trainer is not None and trainer.get("logger") in (None, True):
                root = trainer.get("default_root_dir") or "runs"
                exp = cfg.get("experiment")
                if not exp:
                    configs = cfg.get("config") or []
                    exp = Path(str(configs[0])).stem if configs else "ssl_cropmix"
                version = time.strftime("%Y%m%d-%H%M%S")
                trainer["default_root_dir"] = root
                trainer["logger"] = [
                    {
                        "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                        "init_args": {"save_dir": root, "name": exp, "version": version},
                    },
                    {
                        "class_path": "pytorch_lightning.loggers.CSVLogger",
                        "init_args": {"save_dir": root, "name": exp, "version": version},
                    },
                ]

    return CropMixCLI


def cli_main(args: list[str] | None = None, run: bool = True):
    """Build (and by default run) the LightningCLI. Returns the CLI object."""
    from pytorch_lightning import LightningDataModule, LightningModule

    CropMixCLI = _make_cli_class()
    return CropMixCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "description": "ssl_cropmix: CropMix self-supervised pretraining. Lightning "
            "subcommands below; task commands: " + ", ".join(TASK_COMMANDS)
            + " (ssl-cropmix <command> --help).",
        },
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in TASK_COMMANDS:
        from ssl_cropmix import commands

        return commands.run(args[0], args[1:])
    # LightningCLI reads sys.argv itself when args is None (and warns if given both).
    cli_main(None if argv is None else args)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
