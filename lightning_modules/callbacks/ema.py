"""An exponential moving average of the weights that stays in place for the whole validation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pytorch_lightning.callbacks import EMAWeightAveraging
from pytorch_lightning.trainer.states import TrainerFn


def ema_update(decay: float) -> Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor], torch.Tensor], None]:
    """The update of torch's ``AveragedModel`` for ``multi_avg_fn``: ``ema = decay * ema + (1 - decay) * current``
    in one fused pass over floating-point tensors (all of one dtype and device: AveragedModel groups
    them so), and a plain copy of any other tensor.

    Integer buffers (BERT's ``position_ids``) are indices, not weights: torch's own EMA functions
    compute them in float and truncate, which at some decays lowers positions by one, and the
    averaged model then reads the wrong position embeddings (measured in docs/recipe.md,
    "Weight averaging").
    """

    @torch.no_grad()
    def update(averaged: Sequence[torch.Tensor], current: Sequence[torch.Tensor], _n_averaged: torch.Tensor) -> None:
        if averaged[0].is_floating_point() or averaged[0].is_complex():
            torch._foreach_lerp_(list(averaged), list(current), 1.0 - decay)
        else:
            torch._foreach_copy_(list(averaged), list(current))

    return update


class ValidatedEMA(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging``, with the training weights put back at ``on_validation_end``
    rather than at ``on_validation_epoch_end``, and each update done by :func:`ema_update`.

    Lightning runs the callbacks' ``on_validation_epoch_end`` before the module's, and the module
    computes its metrics there: a retrieval evaluator encodes the corpus at that point, and would
    do so with the training weights while the queries had been encoded with the averaged ones.
    Swapping back one hook later keeps the averaged weights for all of the validation; the
    checkpoint, saved at ``on_validation_end`` by ``ModelCheckpoint`` (which Lightning runs
    last), is unchanged.

    The average is Lightning's (after every optimizer step, the first update copies), computed by
    :func:`ema_update`: integer buffers stay intact, and one fused update replaces Lightning's
    tensor-by-tensor one, which cost a quarter of the STS recipe's training time on a 2-core CPU
    (docs/recipe.md, "Weight averaging").
    """

    def __init__(self, decay: float = 0.999, **kwargs) -> None:
        super().__init__(decay=decay, **kwargs)
        # WeightAveraging hands these keyword arguments to torch's AveragedModel, which takes
        # either a per-tensor avg_fn (what EMAWeightAveraging sets) or a multi_avg_fn, not both.
        self._kwargs.pop("avg_fn")
        self._kwargs["multi_avg_fn"] = ema_update(decay)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        """Resuming a fit restores both the training weights and their average; testing or validating
        a checkpoint (``trainer.test(ckpt_path="best")``) keeps its ``state_dict``, the average.

        Lightning's callback puts the training weights back into the module whenever it loads a
        checkpoint while it holds an average, so the test after ``fit`` scored the training
        weights: not what validation chose, and not what the export holds.
        """
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        pass  # see on_validation_end

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_epoch_end(trainer, pl_module)
