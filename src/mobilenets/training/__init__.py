"""Training and evaluation: configs and recipes, the trainer, resume state, QAT."""

from .trainer import RECIPES, Trainer, TrainConfig, TrainResult, evaluate, train

__all__ = ["RECIPES", "TrainConfig", "TrainResult", "Trainer", "evaluate", "train"]
