"""Measure what a training run cost: pairs per second, time, peak memory, and the validation history."""

from __future__ import annotations

import resource
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn



class TrainingStats(pl.Callback):
    """Record training throughput and every validation result of ``fit``.

    Throughput counts only training time: the time spent in validation inside
    ``fit`` is subtracted. Attributes, read by ``results.build_results``:

    * ``train_pairs``: pairs seen by training steps (on this process);
    * ``train_seconds``: time in training, validation excluded;
    * ``history``: one entry per validation during fit: ``epoch``, ``step`` and the
      logged ``val/*`` metrics.
    """

    def __init__(self) -> None:
        self.train_pairs = 0
        self.train_seconds = 0.0
        self.history: list[dict] = []
        self._fit_started = 0.0
        self._validation_started = 0.0
        self._validation_seconds = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._fit_started = time.perf_counter()
        self._validation_seconds = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_pairs += batch.num_pairs

    def on_validation_start(self, trainer, pl_module) -> None:
        self._validation_started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # trainer.validate() outside fit
            return
        self._validation_seconds += time.perf_counter() - self._validation_started
        if trainer.sanity_checking:
            return
        metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics})

    def on_train_end(self, trainer, pl_module) -> None:
        self.train_seconds = time.perf_counter() - self._fit_started - self._validation_seconds

    @property
    def pairs_per_second(self) -> float:
        return self.train_pairs / self.train_seconds if self.train_seconds else 0.0


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: GPU memory allocated by torch on CUDA, else resident host memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
