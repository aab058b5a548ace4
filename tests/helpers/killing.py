"""A callback that kills its own process with SIGKILL at a given step, once: a crash at a known place."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytorch_lightning as pl


class KillOnce(pl.Callback):
    """At the end of optimizer step ``at_step``, SIGKILL this process, unless ``marker`` (one per
    process: ``<marker>.<rank>``) says it was done before: the resumed run passes the same step
    again, with the same config, and must go on."""

    def __init__(self, at_step: int, marker: str) -> None:
        self.at_step = at_step
        self.marker = marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        marker = Path(f"{self.marker}.{trainer.global_rank}")
        if trainer.global_step == self.at_step and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
