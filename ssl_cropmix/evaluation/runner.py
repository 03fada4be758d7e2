"""A ``Trainer`` for an evaluation run that inherits the pretraining trainer's hardware.

Why not the pretraining trainer itself: ``Trainer.fit`` cannot be re-entered, and Lightning
2.6 calls ``Strategy.teardown`` (which moves the module to CPU) *before* ``on_fit_end``.
Evaluation callbacks therefore launch their protocol from ``on_train_end`` (still on the
training device, on every rank) with a **new** ``Trainer`` built here.

Distributed runs: the new trainer's DDP strategy reuses the process group that is already
initialised (Lightning skips ``init_process_group`` when one exists) and a cluster
environment that reports the running processes as created externally, so no process is
launched a second time, whatever ``start_method`` the pretraining used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import ClusterEnvironment
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy


class _RunningProcesses(ClusterEnvironment):
    """The pretraining's cluster environment, seen from processes that already run.

    Every rank query is answered from the wrapped environment; ``creates_processes_externally``
    is ``True`` so launchers never start processes, and ``teardown`` leaves the wrapped
    environment (and its environment variables) alone: the pretraining still owns them.
    """

    def __init__(self, env: ClusterEnvironment) -> None:
        self._env = env

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return self._env.main_address

    @property
    def main_port(self) -> int:
        return self._env.main_port

    @staticmethod
    def detect() -> bool:
        return True

    def world_size(self) -> int:
        return self._env.world_size()

    def set_world_size(self, size: int) -> None:
        if size != self._env.world_size():
            raise RuntimeError(f"evaluation world size {size} differs from the running {self._env.world_size()}")

    def global_rank(self) -> int:
        return self._env.global_rank()

    def set_global_rank(self, rank: int) -> None:
        if rank != self._env.global_rank():
            raise RuntimeError(f"evaluation rank {rank} differs from the running {self._env.global_rank()}")

    def local_rank(self) -> int:
        return self._env.local_rank()

    def node_rank(self) -> int:
        return self._env.node_rank()

    def teardown(self) -> None:
        pass


def _devices(strategy: Any) -> Any:
    devs: list[torch.device] = list(getattr(strategy, "parallel_devices", None) or [strategy.root_device])
    if devs[0].type == "cpu":
        return len(devs)
    return [d.index if d.index is not None else 0 for d in devs]


def _accelerator_name(accelerator: Any) -> Any:
    """The registry name of ``accelerator`` (``"cpu"``, ``"cuda"``, ``"mps"``), else a new
    instance of its class. A name, not an instance: Lightning picks the autocast device of
    ``*-mixed`` precision from the accelerator *name* (an instance means CUDA autocast)."""
    from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator

    if isinstance(accelerator, CPUAccelerator):
        return "cpu"
    if isinstance(accelerator, CUDAAccelerator):
        return "cuda"
    if type(accelerator).__name__ == "MPSAccelerator":
        return "mps"
    return type(accelerator)()


def inherited_trainer_kwargs(trainer: pl.Trainer | None) -> dict[str, Any]:
    """``accelerator``, ``devices``, ``num_nodes``, ``strategy`` and ``precision`` of ``trainer``.

    A fresh strategy of the same kind is built (a strategy instance belongs to one trainer):
    single-device strategies keep their device; ``DDPStrategy`` keeps its process-group
    backend, timeout and ``find_unused_parameters`` and joins the running process group.

    Args:
        trainer: the pretraining trainer; ``None`` gives ``{}`` (Lightning's defaults).

    Raises:
        NotImplementedError: other multi-process strategies (FSDP, DeepSpeed, ...), which
            need a strategy-specific evaluation setup.
    """
    if trainer is None:
        return {}
    strategy = trainer.strategy
    kwargs: dict[str, Any] = {
        "accelerator": _accelerator_name(trainer.accelerator),
        "devices": _devices(strategy),
        "num_nodes": trainer.num_nodes,
        "precision": trainer.precision,
    }
    if isinstance(strategy, DDPStrategy):
        ddp_kwargs = dict(getattr(strategy, "_ddp_kwargs", {}))
        kwargs["strategy"] = DDPStrategy(
            cluster_environment=_RunningProcesses(strategy.cluster_environment),
            process_group_backend=strategy.process_group_backend,
            timeout=strategy._timeout,
            start_method="popen",
            **{k: v for k, v in ddp_kwargs.items() if k in ("find_unused_parameters", "static_graph")},
        )
    elif isinstance(strategy, SingleDeviceStrategy) or trainer.world_size == 1:
        kwargs["strategy"] = "auto"
    else:
        raise NotImplementedError(
            f"evaluation on the pretraining's hardware supports single-device and DDP strategies, "
            f"got {type(strategy).__name__}; run the evaluation command on its own instead"
        )
    return kwargs


def evaluation_trainer(trainer: pl.Trainer | None = None, **overrides: Any) -> pl.Trainer:
    """A new ``Trainer`` on ``trainer``'s hardware for one evaluation protocol.

    Defaults suited to an evaluation run that the pretraining launches: no logger of its own,
    no checkpoints, no sanity validation, the pretraining's progress-bar setting, and
    ``<pretraining default_root_dir>/evaluation`` as its own ``default_root_dir`` (under SLURM,
    Lightning restores any ``hpc_ckpt_<n>.ckpt`` of ``default_root_dir`` into the fitted module:
    the pretraining's requeue checkpoints must stay out of the probe's). ``overrides`` replace any keyword (e.g. ``max_epochs``).

    Args:
        trainer: the pretraining trainer (``None``: Lightning's default hardware).
        **overrides: ``pl.Trainer`` keyword arguments.
    """
    kwargs: dict[str, Any] = {
        **inherited_trainer_kwargs(trainer),
        "logger": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "enable_model_summary": False,
    }
    if trainer is not None:
        kwargs["default_root_dir"] = str(Path(trainer.default_root_dir) / "evaluation")
        kwargs["enable_progress_bar"] = trainer.progress_bar_callback is not None
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)
