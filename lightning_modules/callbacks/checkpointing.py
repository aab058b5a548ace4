"""Runs that survive: ``last.ckpt`` written often and atomically, and a clean stop on SIGINT/SIGTERM.

What a resume restores comes from the checkpoint Lightning writes: weights, optimizer, scheduler,
loop counters, every callback's ``state_dict`` (the best checkpoint's record, EMA weights,
``TrainingStats``), the evaluator's decision thresholds (module buffers), and the training
loader's position and RNG states (``lightning_modules.data.loading.ResumableLoader``).
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint next to its destination, flush it to disk, then rename it over the old one:
    a kill (or a full disk) while writing leaves the previous checkpoint intact, never half a file.
    Remote paths (``s3://``) keep Lightning's own writer."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        with open(partial, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing ``checkpoint``; the run can be resumed from it
    (``requeued``: SLURM will start the job again, and the run resumes by itself)."""

    def __init__(self, signal_name: str, checkpoint: str, step: int, requeued: bool = False) -> None:
        super().__init__(f"{signal_name} received: stopped at step {step}, state saved to {checkpoint}"
                         + ("; SLURM job requeued" if requeued else ""))
        self.signal_name = signal_name
        self.checkpoint = checkpoint
        self.step = step
        self.requeued = requeued


class RunCheckpoint(Checkpoint):
    """Keep ``<dirpath>/last.ckpt``: the full training state, to resume the run from.

    Written every ``every_n_steps`` optimizer steps, at the end of every epoch (after its
    validation), and when SIGINT, SIGTERM or SLURM's requeue signal (Lightning's
    ``SLURMEnvironment``, SIGUSR1 by default) arrives: then at the end of the training batch in
    progress (a state between two batches is the only one that resumes exactly), after which
    the requeue signal goes on to Lightning's handler (it requeues the job) and training stops
    with ``TrainingInterrupted``. A second SIGINT stops at once, unsaved.

    A ``Checkpoint`` callback, so Lightning runs its hooks after the other callbacks' (the batch's
    pairs counted, the EMA updated) before the state is written.
    """

    def __init__(self, dirpath: str, every_n_steps: int = 500) -> None:
        if every_n_steps < 1:
            raise ValueError(f"checkpoint_every_n_steps must be at least 1, got {every_n_steps}")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self._loader_states: list[dict] = []
        self._signal: int | None = None  # the signal received, the highest if several
        self._previous_handlers: dict[int, object] = {}

    @property
    def path(self) -> Path:
        return self.dirpath / LAST

    # ---- when to write -------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install_signal_handlers(trainer)
        self._restore_loader_states(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._stop_on_signal(trainer)
        # The last batch of an epoch is saved after the epoch's validation instead.
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches
        if trainer.global_step % self.every_n_steps == 0 and not last_of_epoch:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_signal_handlers()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_signal_handlers()
        # Lightning stops on SIGTERM by itself when the signal comes after this batch's check: at
        # the start of the next batch (all processes together), a state that resumes exactly.
        # During validation it would not: the last checkpoint stays the one to resume from.
        between_batches = not (trainer.validating or trainer.sanity_checking)
        if isinstance(exception, SIGTERMException) and self._signal and between_batches:
            self.save(trainer)

    def save(self, trainer: pl.Trainer) -> None:
        if trainer.fast_dev_run:  # a smoke run, as Lightning's own checkpoints: nothing to continue
            return
        # Every process takes part (the loader gathers RNG states); rank 0 writes the file.
        trainer.save_checkpoint(self.path, weights_only=False)
        log.debug("Saved %s at step %d", self.path, trainer.global_step)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # The W&B run to continue on resume (train.resume reads it before the logger is built).
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                checkpoint["wandb_run_id"] = str(logger.version)

    # ---- the training loader's position ---------------------------------------------------------

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        fit_loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        self._loader_states = list(fit_loop.get("combined_loader", []))

    def _restore_loader_states(self, trainer: pl.Trainer) -> None:
        """Hand the saved position back to the training loader (before its first batch is drawn).

        Lightning saves a stateful loader's ``state_dict`` but, in 2.6, does not give it back when
        ``configure_optimizers`` asks for ``trainer.estimated_stepping_batches`` (ours does, for
        the schedule): that builds the loader before the loop state is restored, and the fit
        loop then keeps that loader without loading its state. So it is done here.
        """
        states, self._loader_states = self._loader_states, []
        if not states:
            return
        loaders = trainer.train_dataloader
        if isinstance(loaders, dict):
            loaders = list(loaders.values())
        elif not isinstance(loaders, (list, tuple)):
            loaders = [loaders]
        stateful = [loader for loader in loaders if callable(getattr(loader, "load_state_dict", None))]
        for loader, state in zip(stateful, states):
            loader.load_state_dict(state)

    # ---- signals -------------------------------------------------------------------------------

    def _install_signal_handlers(self, trainer: pl.Trainer) -> None:
        """Ours for SIGINT, SIGTERM and, when Lightning's SLURM auto-requeue is on, its requeue
        signal: each only marks that the run must stop; the batch's end does the rest."""
        self._signal = None
        numbers = [signal.SIGINT, signal.SIGTERM]
        environment = trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and environment.requeue_signal:
            numbers.append(environment.requeue_signal)
        for number in numbers:
            try:
                self._previous_handlers[number] = signal.signal(number, self._on_signal)
            except ValueError:  # not the main thread: leave signals to whoever owns them
                return

    def _restore_signal_handlers(self) -> None:
        for number, handler in self._previous_handlers.items():
            signal.signal(number, handler)
        self._previous_handlers = {}

    def _on_signal(self, number: int, frame) -> None:
        if number == signal.SIGINT and self._signal == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl+C: stop now
        self._signal = max(self._signal or 0, number)
        print(f"\n{signal.Signals(number).name} received: saving {self.path} at the end of this batch"
              + (" (Ctrl+C again to stop at once, unsaved)" if number == signal.SIGINT else ""), flush=True)
        previous = self._previous_handlers.get(number)
        if number == signal.SIGTERM and callable(previous):
            previous(number, frame)  # Lightning's own: tells the processes it started

    def _stop_on_signal(self, trainer: pl.Trainer) -> None:
        """Save, hand SLURM's requeue signal to Lightning (which requeues the job), and stop."""
        received = self._signal_received(trainer)
        if not received:
            return
        self.save(trainer)
        requeue = self._previous_handlers.get(received) if received not in (signal.SIGINT, signal.SIGTERM) else None
        if callable(requeue):  # every process: Lightning's handler writes a checkpoint of its own too
            requeue(received, None)
        raise TrainingInterrupted(signal.Signals(received).name, str(self.path), trainer.global_step,
                                  requeued=callable(requeue))

    def _signal_received(self, trainer: pl.Trainer) -> int:
        """The signal any process received, 0 if none (all stop together, or the others would wait forever)."""
        if trainer.world_size == 1:
            return self._signal or 0
        code = torch.tensor(self._signal or 0, device=trainer.strategy.root_device)
        return int(trainer.strategy.reduce(code, reduce_op="max"))
