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
from pytorch_lightning.trainer.states import TrainerFn

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

    Written every ``every_n_steps`` optimizer steps, at the end of every epoch, and when SIGINT,
    SIGTERM or SLURM's requeue signal (Lightning's ``SLURMEnvironment``, SIGUSR1 by default)
    arrives, after which training stops with ``TrainingInterrupted`` (the requeue signal first
    goes on to Lightning's handler, which requeues the job). A second SIGINT stops at once, unsaved.

    Only states that resume exactly are written: after an optimizer step (never inside a
    gradient-accumulation window), between two batches, and when a validation follows the
    batch, after that validation (a resumed run takes a checkpoint's pending validation for
    done), at the end of an epoch after ``on_train_epoch_end``'s work.

    A ``Checkpoint`` callback, so Lightning runs its hooks after the other callbacks' (the batch's
    pairs counted, the EMA updated) before the state is written.
    """

    def __init__(self, dirpath: str, every_n_steps: int = 500) -> None:
        if every_n_steps < 1:
            raise ValueError(f"checkpoint_every_n_steps must be at least 1, got {every_n_steps}")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self._loader_states: list[dict] = []
        self._signals: set[int] = set()  # received since training started
        self._previous_handlers: dict[int, object] = {}
        self._requeue_signal: int | None = None
        self._pending: tuple[bool, int] | None = None  # (save, signal) waiting for a validation to end

    @property
    def path(self) -> Path:
        return self.dirpath / LAST

    # ---- when to write -------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install_signal_handlers(trainer)
        self._restore_loader_states(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        epoch_loop = trainer.fit_loop.epoch_loop
        if epoch_loop._should_accumulate():  # inside an accumulation window: the gradients are not saved
            return
        received = self._signal_received(trainer)
        periodic = trainer.global_step % self.every_n_steps == 0
        if not (received or periodic):
            return
        last_of_epoch = epoch_loop.batch_progress.is_last_batch or batch_idx + 1 >= trainer.num_training_batches
        if last_of_epoch or epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            self._pending = (periodic, received)  # after the validation, or at the epoch's end
            return
        self._act(trainer, periodic, received)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING and self._pending is not None:
            if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:  # the epoch's end saves anyway
                pending, self._pending = self._pending, None
                self._act(trainer, *pending)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pending, self._pending = self._pending, None
        self._act(trainer, True, pending[1] if pending else self._signal_received(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_signal_handlers()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_signal_handlers()

    def _act(self, trainer: pl.Trainer, save: bool, received: int) -> None:
        """Save (when asked, or to stop), then stop on ``received``, after handing SLURM's requeue
        signal to Lightning (every process: its handler writes a checkpoint of its own too)."""
        if save or received:
            self.save(trainer)
        if not received:
            return
        requeue = self._previous_handlers.get(received) if received == self._requeue_signal else None
        if callable(requeue):
            requeue(received, None)
            self._drop_lightnings_hpc_checkpoints(trainer)
        raise TrainingInterrupted(signal.Signals(received).name, str(self.path), trainer.global_step,
                                  requeued=callable(requeue))

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
        signal: each only marks that the run must stop; a batch's end does the rest."""
        self._signals = set()
        numbers = [signal.SIGINT, signal.SIGTERM]
        environment = trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and environment.requeue_signal:
            self._requeue_signal = int(environment.requeue_signal)
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
        # Lightning's own SIGTERM handler is not called: under DDP it would run a collective from
        # inside the handler, at any point of the processes' sequence of collectives. The
        # per-batch reduce below tells every process instead.
        if number == signal.SIGINT and signal.SIGINT in self._signals:
            raise KeyboardInterrupt  # the second Ctrl+C: stop now
        self._signals.add(number)
        print(f"\n{signal.Signals(number).name} received: saving {self.path} at the end of this batch"
              + (" (Ctrl+C again to stop at once, unsaved)" if number == signal.SIGINT else ""), flush=True)

    def _signal_received(self, trainer: pl.Trainer) -> int:
        """The signal that any process received, 0 if none: all stop together, or the others would
        wait forever. SLURM's requeue signal comes first (the job must be requeued), then SIGTERM."""
        order = [self._requeue_signal or 0, int(signal.SIGTERM), int(signal.SIGINT)]
        received = torch.tensor([float(number in self._signals) for number in order])
        if trainer.world_size > 1:
            received = trainer.strategy.reduce(received.to(trainer.strategy.root_device), reduce_op="sum").cpu()
        return next((number for number, flag in zip(order, received.tolist()) if flag and number), 0)

    def _drop_lightnings_hpc_checkpoints(self, trainer: pl.Trainer) -> None:
        """Lightning's requeue handler also writes ``hpc_ckpt_<n>.ckpt`` into the run folder, which it
        would then load by itself for any later ``fit``/``validate``/``test`` without a checkpoint
        path under SLURM. ``last.ckpt`` holds the same state: keep only that."""
        if trainer.is_global_zero:
            for stale in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"):
                stale.unlink(missing_ok=True)
