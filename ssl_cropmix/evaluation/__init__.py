"""Evaluation protocols as LightningModules, run by a ``Trainer`` on the pretraining's hardware.

:func:`~ssl_cropmix.evaluation.runner.evaluation_trainer` builds that ``Trainer`` from the
pretraining one (accelerator, devices, num_nodes, strategy, precision), the pattern of
lightly's benchmarks: a new ``Trainer`` on the same hardware runs the evaluation module.
"""

from ssl_cropmix.evaluation.runner import evaluation_trainer, inherited_trainer_kwargs

__all__ = ["evaluation_trainer", "inherited_trainer_kwargs"]
