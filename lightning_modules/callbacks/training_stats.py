"""Measure what a training run cost: pairs per second, time, peak memory, and the validation history."""

from __future__ import annotations

import resource
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn



class TrainingStats(pl.Callback):
    """Record training throughput, the zero-shot line and every validation result of ``fit``.

    Throughput counts only training time: the time spent in validation inside
    ``fit`` is subtracted. Attributes, read by ``results.build_results``:

    * ``zero_shot``: the ``val/*`` and ``test/*`` metrics of evaluations run before ``fit``
      (the untrained model);
    * ``train_pairs``: pairs seen by training steps (on this process);
    * ``train_seconds``: time in training, validation excluded;
    * ``history``: one entry per validation during fit: ``epoch``, ``step`` and the
      logged ``val/*`` metrics;
    * ``resumed_at``: the global step of each resume.

    All of it is saved in checkpoints, so a resumed run reports the whole run: the time and
    pairs before the checkpoint it resumed from plus those after it (work done after that
    checkpoint and then lost is done again, and counted again).
    """

    def __init__(self) -> None:
        self.zero_shot: dict[str, float] = {}
        self.train_pairs = 0
        self.train_seconds = 0.0
        self.history: list[dict] = []
        self.resumed_at: list[int] = []
        self._seconds_before = 0.0  # training time of earlier processes of this run
        self._fit_seen = False
        self._fit_started = 0.0
        self._validation_started = 0.0
        self._validation_seconds = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._fit_seen = True
        self._fit_started = time.perf_counter()
        self._validation_seconds = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_pairs += batch.num_pairs

    def on_validation_start(self, trainer, pl_module) -> None:
        self._validation_started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # trainer.validate() outside fit
            self._record_zero_shot(trainer, "val/")
            return
        self._validation_seconds += time.perf_counter() - self._validation_started
        if trainer.sanity_checking:
            return
        metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics})

    def on_test_end(self, trainer, pl_module) -> None:
        self._record_zero_shot(trainer, "test/")

    def on_train_end(self, trainer, pl_module) -> None:
        self.train_seconds = self._seconds_so_far()

    def _record_zero_shot(self, trainer, prefix: str) -> None:
        if not self._fit_seen:
            self.zero_shot.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)})

    def _seconds_so_far(self) -> float:
        if not self._fit_started:
            return self._seconds_before
        return self._seconds_before + time.perf_counter() - self._fit_started - self._validation_seconds

    def state_dict(self) -> dict:
        return {
            "zero_shot": dict(self.zero_shot), "train_pairs": self.train_pairs,
            "train_seconds": self._seconds_so_far(), "history": list(self.history),
            "resumed_at": list(self.resumed_at),
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Only a resumed fit continues the record: the final test loads the best checkpoint, whose
        # record stops at its epoch.
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if trainer.state.fn != TrainerFn.FITTING or state is None:
            return
        self.zero_shot = dict(state["zero_shot"])
        self.train_pairs = state["train_pairs"]
        self._seconds_before = state["train_seconds"]
        self.history = list(state["history"])
        self.resumed_at = [*state["resumed_at"], int(checkpoint["global_step"])]
        self._fit_seen = True  # a resumed run has trained already: later evaluations are not zero-shot

    def load_state_dict(self, state_dict: dict) -> None:
        pass  # restored in on_load_checkpoint, which knows whether this is a resumed fit

    @property
    def pairs_per_second(self) -> float:
        return self.train_pairs / self.train_seconds if self.train_seconds else 0.0


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: GPU memory allocated by torch on CUDA, else resident host memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
