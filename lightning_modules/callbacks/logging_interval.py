"""Short epochs still log their training curves."""

from __future__ import annotations

import logging
import warnings

import pytorch_lightning as pl

log = logging.getLogger(__name__)


class LogShortEpochs(pl.Callback):
    """Lower ``Trainer(log_every_n_steps=N)`` to the batches of one epoch when an epoch has fewer.

    Lightning logs step metrics (``train/loss``, ``train/lr``) on every N-th optimizer step of
    the whole run, so a run shorter than N steps (a small file, a smoke test) would write no
    training curve at all to ``metrics.csv`` or W&B. With this callback every epoch logs at
    least once; Lightning's warning that the epoch is shorter than the interval is then moot.
    """

    def __init__(self) -> None:
        warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging "
                                                  r"interval")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batches = trainer.num_training_batches
        if batches != float("inf") and 0 < batches < trainer.log_every_n_steps:
            log.info("Logging training metrics every %d steps (an epoch has %d batches; log_every_n_steps was %d)",
                     batches, batches, trainer.log_every_n_steps)
            trainer.log_every_n_steps = int(batches)
