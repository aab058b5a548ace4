"""An exponential moving average of the weights that stays in place for the whole validation."""

from __future__ import annotations

from pytorch_lightning.callbacks import EMAWeightAveraging


class ValidatedEMA(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging``, with the training weights put back at ``on_validation_end``
    rather than at ``on_validation_epoch_end``.

    Lightning runs the callbacks' ``on_validation_epoch_end`` before the module's, and the module
    computes its metrics there: a retrieval evaluator encodes the corpus at that point, and would
    do so with the training weights while the queries had been encoded with the averaged ones.
    Swapping back one hook later keeps the averaged weights for all of the validation; the
    checkpoint, saved at ``on_validation_end`` by ``ModelCheckpoint`` (which Lightning runs
    last), is unchanged.
    """

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        pass  # see on_validation_end

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_epoch_end(trainer, pl_module)
