"""Evaluation callbacks: linear probe, kNN monitor, semi-supervised fine-tuning, online probe."""

from ssl_cropmix.callbacks.finetune import FINETUNE_PRESETS, SemiSupervisedFineTune, finetune_from_checkpoint
from ssl_cropmix.callbacks.knn import KNNMonitor, knn_classify
from ssl_cropmix.callbacks.linear_probe import PROBE_PRESETS, LinearProbe, run_linear_probe
from ssl_cropmix.callbacks.online_probe import OnlineLinearProbe

__all__ = [
    "FINETUNE_PRESETS", "KNNMonitor", "LinearProbe", "OnlineLinearProbe", "PROBE_PRESETS",
    "SemiSupervisedFineTune", "finetune_from_checkpoint", "knn_classify", "run_linear_probe",
]
