"""Skip the optimizer steps whose loss or gradients are not finite, and stop a run that keeps producing them."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from lightning_modules.datamodules.base import LateInteractionDataModule
from lightning_modules.errors import NonFiniteTrainingError

log = logging.getLogger(__name__)


class NonFiniteGuard(pl.Callback):
    """A step whose loss or gradients hold a NaN or an infinity changes nothing: its gradients are
    dropped before the optimizer sees them, so AdamW leaves the weights and its moments as they
    were (the learning-rate schedule moves on). ``skipped`` counts such steps (saved in
    checkpoints, reported in results.json as ``nonfinite_steps``); ``max_consecutive`` of them in
    a row stop the run with ``NonFiniteTrainingError``, naming the step and the batch's rows.

    Under mixed precision with a gradient scaler, non-finite gradients are the scaler's to
    handle (it skips them and lowers its scale); only the loss is checked. All processes decide
    together: a step is skipped everywhere when any process saw a non-finite value.
    """

    def __init__(self, max_consecutive: int = 10) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_nonfinite_steps must be at least 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0
        self._batch = None
        self._loss_finite = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._batch = batch

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        self._loss_finite = bool(torch.isfinite(loss.detach()).all())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        gradients = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = self._loss_finite
        if finite and gradients and getattr(trainer.precision_plugin, "scaler", None) is None:
            finite = bool(torch.isfinite(torch.nn.utils.get_total_norm(gradients)))
        finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            self.consecutive = 0
            return
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                parameter.grad = None
        self.skipped += 1
        self.consecutive += 1
        where = _describe_batch(trainer, self._batch)
        step = trainer.global_step + 1  # this optimizer step, counted from 1 (global_step counts those done)
        log.warning("step %d: non-finite loss or gradients, step skipped (%d in a row, %d in all); %s",
                    step, self.consecutive, self.skipped, where)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(
                f"step {step}: the loss or the gradients were not finite (NaN or inf) for "
                f"{self.consecutive} steps in a row ({self.skipped} skipped in all), so training stopped "
                f"(max_nonfinite_steps={self.max_consecutive}). The last such batch held {where}. Usual "
                "causes: a learning rate too high for the model (model.lr), a temperature or CoSENT scale "
                "that overflows (model.infonce_temperature, model.cosent_scale), fp16 precision without "
                "headroom (trainer.precision=bf16-mixed or 32-true), or texts that tokenise to nothing."
            )

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if trainer.state.fn == TrainerFn.FITTING and state is not None:  # a resumed fit, not the final test
            self.skipped, self.consecutive = state["skipped"], state["consecutive"]

    def load_state_dict(self, state_dict: dict) -> None:
        pass  # restored in on_load_checkpoint, which knows whether this is a resumed fit


def _describe_batch(trainer: pl.Trainer, batch) -> str:
    """The training rows of ``batch``, as its DataModule names them (file and line where it can)."""
    indices = list(getattr(batch, "item_indices", ()) or ())
    if not indices:
        return "rows unknown"
    if isinstance(trainer.datamodule, LateInteractionDataModule):
        return trainer.datamodule.describe_training_items(indices)
    return f"training items {indices} (positions in the training split)"
