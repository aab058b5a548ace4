"""Lightning's progress as plain log lines, for runs whose output goes to a file or a pipe."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks.progress.progress_bar import ProgressBar

from lightning_modules.progress import PLAIN_EVERY_SECONDS, format_seconds, progress_line

log = logging.getLogger(__name__)


class PlainProgress(ProgressBar):
    """Instead of a bar redrawn after every batch: one line every ``every_seconds`` while an epoch
    trains (batches done, rate, time left, the progress-bar metrics such as ``train/loss``), one
    when it ends, and one after each validation or test with its time. ``train.pipeline`` puts it
    in place of Lightning's bar when stderr is not a terminal."""

    def __init__(self, every_seconds: float = PLAIN_EVERY_SECONDS) -> None:
        super().__init__()
        self.every_seconds = every_seconds
        self._enabled = True
        self._started = self._last = 0.0
        self._first_batch = 0  # batches of the epoch done before this process started (a resumed run)
        self._evaluation_started = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A resumed run starts inside an epoch, without on_train_epoch_start.
        self._started = self._last = time.perf_counter()
        self._first_batch = trainer.fit_loop.epoch_loop.batch_progress.current.completed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = self._last = time.perf_counter()
        self._first_batch = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._enabled and now - self._last >= self.every_seconds:
            self._last = now
            total = self.total_train_batches
            line = progress_line(self._epoch(trainer), batch_idx + 1, total if total != float("inf") else None,
                                 now - self._started, done_before=self._first_batch)
            log.info("%s%s", line, self._metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._enabled:
            log.info("%s: done in %s%s", self._epoch(trainer), format_seconds(time.perf_counter() - self._started),
                     self._metrics(trainer, pl_module))

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._evaluation_started = time.perf_counter()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._evaluation_started = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._evaluation_done(trainer, "validation")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._evaluation_done(trainer, "test")

    def _evaluation_done(self, trainer: pl.Trainer, what: str) -> None:
        if self._enabled and not trainer.sanity_checking:
            prefix = "val/" if what == "validation" else "test/"
            metrics = ", ".join(f"{k} {float(v):.2f}" for k, v in sorted(trainer.callback_metrics.items())
                                if k.startswith(prefix))
            log.info("%s: done in %s%s", what, format_seconds(time.perf_counter() - self._evaluation_started),
                     f"; {metrics}" if metrics else "")

    @staticmethod
    def _epoch(trainer: pl.Trainer) -> str:
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        return f"epoch {trainer.current_epoch + 1}{epochs}"

    def _metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        return f"; {shown}" if shown else ""
