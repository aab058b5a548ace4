"""The Lightning system: losses, optimisation, metrics. The model itself lives in ``model.py``."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torchmetrics import PearsonCorrCoef, SpearmanCorrCoef
from transformers import get_linear_schedule_with_warmup

from lightning_modules.encoder import TokenEncoder
from lightning_modules.losses import CoSENTLoss, InfoNCELoss, ScoreRegressionLoss
from lightning_modules.model import LateInteractionModel


class MaxSimModule(pl.LightningModule):
    """Train a late-interaction model on scored text pairs.

    Every argument is a plain value, so the checkpoint's hyperparameters load with
    ``torch.load(weights_only=True)``.

    Encoder (see ``TokenEncoder``): ``model_name_or_path``, ``projection_dim``,
    ``skip_special_tokens``, ``skip_punctuation``, ``random_init``, ``config_overrides``.

    MaxSim (see ``lightning_modules.maxsim``): ``direction``, ``reduction``, ``temperature``.

    Loss = ``cosent_weight * CoSENT + regression_weight * MSE + infonce_weight * InfoNCE``;
    a weight of 0 switches a term off. InfoNCE uses the pairs of the batch whose gold
    score is at least ``infonce_min_score`` as positives and the other texts of the
    batch as negatives.

    Optimisation: AdamW (no weight decay on biases and norms), ``lr`` for the encoder,
    ``lr * projection_lr_multiplier`` for a fresh projection, linear warmup over
    ``warmup_ratio`` of the steps then linear decay to 0.

    Metrics: ``train/loss``; ``val/spearman``, ``val/pearson``, ``test/spearman``,
    ``test/pearson`` (x100; torchmetrics gathers the predictions of every process.
    Under DDP, Lightning's sampler repeats up to ``world_size - 1`` pairs to even
    out the shards, which can move the figures by a hair).
    """

    def __init__(
        self,
        model_name_or_path: str,
        projection_dim: int | None = 128,
        skip_special_tokens: bool = False,
        skip_punctuation: bool = False,
        random_init: bool = False,
        config_overrides: dict[str, Any] | None = None,
        direction: str = "both",
        reduction: str = "mean",
        temperature: float | None = None,
        cosent_weight: float = 1.0,
        cosent_scale: float = 20.0,
        regression_weight: float = 0.0,
        infonce_weight: float = 0.0,
        infonce_temperature: float = 0.05,
        infonce_min_score: float = 0.8,
        lr: float = 2e-5,
        projection_lr_multiplier: float = 1.0,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        encoder = TokenEncoder(
            model_name_or_path,
            projection_dim=projection_dim,
            skip_special_tokens=skip_special_tokens,
            skip_punctuation=skip_punctuation,
            random_init=random_init,
            config_overrides=config_overrides,
        )
        self.model = LateInteractionModel(encoder, direction, reduction, temperature)
        # from_pretrained returns the encoder in eval mode and Lightning keeps modes
        # as it finds them: switch dropout on explicitly (config_overrides can set
        # the dropout probabilities, 0 included).
        self.model.train()
        self.cosent = CoSENTLoss(scale=cosent_scale)
        self.regression = ScoreRegressionLoss()
        self.infonce = InfoNCELoss(temperature=infonce_temperature, symmetric=True)
        self.val_spearman, self.val_pearson = SpearmanCorrCoef(), PearsonCorrCoef()
        self.test_spearman, self.test_pearson = SpearmanCorrCoef(), PearsonCorrCoef()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Score a batch of pairs: ``input_ids (2B, L)`` holds the ``a`` texts then the ``b`` texts. Returns ``(B,)``."""
        a, b = self.model.encode(input_ids, attention_mask).split(input_ids.shape[0] // 2)
        return self.model.score_pairs(a, b)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        gold = batch["scores"]
        a, b = self.model.encode(batch["input_ids"], batch["attention_mask"]).split(gold.shape[0])
        predicted = self.model.score_pairs(a, b)
        hp = self.hparams
        loss = predicted.new_zeros(())
        if hp.cosent_weight:
            loss = loss + hp.cosent_weight * self.cosent(predicted, gold)
        if hp.regression_weight:
            loss = loss + hp.regression_weight * self.regression(predicted, gold)
        if hp.infonce_weight:
            positives = gold >= hp.infonce_min_score
            if positives.sum() >= 2:  # one positive alone has no in-batch negative
                scores = self.model.score_matrix(a.select(positives), b.select(positives))
                loss = loss + hp.infonce_weight * self.infonce(scores)
        self.log("train/loss", loss, prog_bar=True, batch_size=gold.shape[0])
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=gold.shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._update_correlations(batch, self.val_spearman, self.val_pearson)

    def on_validation_epoch_end(self) -> None:
        self._log_correlations("val", self.val_spearman, self.val_pearson)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._update_correlations(batch, self.test_spearman, self.test_pearson)

    def on_test_epoch_end(self) -> None:
        self._log_correlations("test", self.test_spearman, self.test_pearson)

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        groups = _parameter_groups(self.model, hp.lr, hp.weight_decay, hp.projection_lr_multiplier)
        # fused: one kernel over all parameters instead of a Python loop over tensors.
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, fused=True)
        total = self.trainer.estimated_stepping_batches
        scheduler = get_linear_schedule_with_warmup(optimizer, int(hp.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _update_correlations(self, batch, spearman, pearson) -> None:
        predicted = self(batch["input_ids"], batch["attention_mask"])
        spearman.update(predicted, batch["scores"])
        pearson.update(predicted, batch["scores"])

    def _log_correlations(self, split: str, spearman, pearson) -> None:
        # x100, the convention of STS papers and MTEB tables.
        self.log(f"{split}/spearman", 100 * spearman.compute(), prog_bar=True)
        self.log(f"{split}/pearson", 100 * pearson.compute())
        spearman.reset()
        pearson.reset()


def _parameter_groups(model: torch.nn.Module, lr: float, weight_decay: float, projection_lr_multiplier: float):
    """AdamW groups: no decay for biases and norm weights; the projection may get its own rate."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decay = parameter.ndim >= 2
        is_projection = name.startswith("encoder.projection")
        groups.setdefault((decay, is_projection), []).append(parameter)
    return [
        {
            "params": params,
            "weight_decay": weight_decay if decay else 0.0,
            "lr": lr * (projection_lr_multiplier if is_projection else 1.0),
        }
        for (decay, is_projection), params in groups.items()
    ]
