"""Callbacks: logic around training that the model does not need."""

from lightning_modules.callbacks.checkpointing import AtomicCheckpointIO, RunCheckpoint, TrainingInterrupted
from lightning_modules.callbacks.ema import ValidatedEMA
from lightning_modules.callbacks.evaluation_plots import EvaluationPlots
from lightning_modules.callbacks.logging_interval import LogShortEpochs
from lightning_modules.callbacks.mining import HardNegativeMining, mine_hard_negatives
from lightning_modules.callbacks.nonfinite import NonFiniteGuard
from lightning_modules.callbacks.plain_progress import PlainProgress
from lightning_modules.callbacks.training_stats import TrainingStats, peak_memory_mb

__all__ = [
    "AtomicCheckpointIO", "EvaluationPlots", "HardNegativeMining", "LogShortEpochs", "NonFiniteGuard", "PlainProgress",
    "RunCheckpoint", "TrainingInterrupted", "TrainingStats", "ValidatedEMA", "mine_hard_negatives", "peak_memory_mb",
]
