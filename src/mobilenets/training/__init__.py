"""Training and evaluation: configuration and recipes (``config``, ``recipes``), the trainer
(``trainer``: setup, epochs, checkpoints), resume state (``state``), evaluation
(``evaluate``), precision choice (``precision``), optimizer and schedule (``optim``), QAT."""

from .config import TrainConfig, check_compiler, preflight
from .evaluate import EvalResult, evaluate
from .optim import lr_factor, make_optimizer, make_scheduler, param_groups
from .plots import plot_curves
from .precision import faster_precision, resolve_device, resolve_precision, time_precisions
from .recipes import QAT_CALIBRATION_IMAGES, QAT_LR_FRACTION, RECIPES, qat_defaults
from .rundir import METRIC_COLUMNS
from .signals import TrainingInterrupted
from .trainer import Trainer, TrainResult, train

__all__ = ["METRIC_COLUMNS", "QAT_CALIBRATION_IMAGES", "QAT_LR_FRACTION", "RECIPES", "EvalResult",
           "TrainConfig", "TrainResult", "Trainer", "TrainingInterrupted", "check_compiler", "evaluate",
           "faster_precision", "lr_factor", "make_optimizer", "make_scheduler", "param_groups",
           "plot_curves", "preflight", "qat_defaults", "resolve_device", "resolve_precision",
           "time_precisions", "train"]
