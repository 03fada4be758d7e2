"""Evaluation callbacks: linear probe, kNN monitor, fine-tuning, online probe, robustness, run summary."""

from ssl_cropmix.callbacks.finetune import FINETUNE_PRESETS, MAEFineTune, SemiSupervisedFineTune, finetune_from_checkpoint
from ssl_cropmix.callbacks.knn import KNNMonitor, knn_classify
from ssl_cropmix.callbacks.linear_probe import PROBE_PRESETS, LinearProbe, run_linear_probe
from ssl_cropmix.callbacks.online_probe import OnlineLinearProbe
from ssl_cropmix.callbacks.robustness import RobustnessCallback
from ssl_cropmix.callbacks.summary import RunSummary

__all__ = [
    "FINETUNE_PRESETS", "KNNMonitor", "LinearProbe", "MAEFineTune", "OnlineLinearProbe", "PROBE_PRESETS", "RobustnessCallback",
    "RunSummary",
    "SemiSupervisedFineTune", "finetune_from_checkpoint", "knn_classify", "run_linear_probe",
]
