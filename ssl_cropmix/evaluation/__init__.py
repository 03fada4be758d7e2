"""Evaluation protocols as LightningModules, run by a ``Trainer`` on the pretraining's hardware.

:func:`~ssl_cropmix.evaluation.runner.evaluation_trainer` builds that ``Trainer`` from the
pretraining one (accelerator, devices, num_nodes, strategy, precision), the pattern of
lightly's benchmarks: a new ``Trainer`` on the same hardware runs the evaluation module.

* :mod:`~ssl_cropmix.evaluation.linear`: ``LinearProbeModule``, ``run_linear_probe``, ``PROBE_PRESETS``.
* :mod:`~ssl_cropmix.evaluation.finetune`: ``SemiSupervisedFineTuneModule``, ``finetune``, ``FINETUNE_PRESETS``.
* :mod:`~ssl_cropmix.evaluation.mae_finetune`: ``MAEFineTuneModule``, ``mae_finetune``.
* :mod:`~ssl_cropmix.evaluation.data`: per-rank shards, all-gathered feature extraction.
* :mod:`~ssl_cropmix.evaluation.results`: ``EvalResult``, metric keys, JSON records.
"""

from ssl_cropmix.evaluation.runner import evaluation_trainer, inherited_trainer_kwargs

__all__ = ["evaluation_trainer", "inherited_trainer_kwargs"]
