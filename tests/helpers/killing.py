"""A callback that sends its own process a signal at a given step, once: a kill or a stop at a known place."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytorch_lightning as pl


class SignalOnce(pl.Callback):
    """At the end of optimizer step ``at_step``, send this process ``signal_name`` (``SIGKILL`` by
    default: a crash), unless ``marker`` (one per process: ``<marker>.<rank>``) says it was done
    before: the resumed run passes the same step again, with the same config, and must go on."""

    def __init__(self, at_step: int, marker: str, signal_name: str = "SIGKILL") -> None:
        self.at_step = at_step
        self.marker = marker
        self.signal = signal.Signals[signal_name]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        marker = Path(f"{self.marker}.{trainer.global_rank}")
        if trainer.global_step == self.at_step and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), self.signal)
