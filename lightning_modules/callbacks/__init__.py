"""Callbacks: logic around training that the model does not need."""

from lightning_modules.callbacks.evaluation_plots import EvaluationPlots
from lightning_modules.callbacks.training_stats import TrainingStats, peak_memory_mb

__all__ = ["EvaluationPlots", "TrainingStats", "peak_memory_mb"]
