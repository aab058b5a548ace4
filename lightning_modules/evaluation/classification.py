"""Labelled pairs: ROC-AUC, and F1 and accuracy at decision thresholds chosen on validation."""

from __future__ import annotations

import logging

import torch
from torchmetrics import CatMetric
from torchmetrics.functional.classification import binary_auroc

from lightning_modules.data.batches import LabelledPairsBatch
from lightning_modules.evaluation.base import Evaluator, score_aligned_pairs
from lightning_modules.evaluation.metrics import best_threshold_metrics, metrics_at_threshold

log = logging.getLogger(__name__)


class ClassificationEvaluator(Evaluator):
    """``auc`` (primary, ROC-AUC), ``f1`` and ``accuracy`` of MaxSim as a pair classifier.

    On validation, F1 and accuracy are each taken at their best threshold, returned as
    ``f1_threshold`` and ``accuracy_threshold`` and kept in the ``decision_thresholds``
    buffer (so in the checkpoint); other splits use validation's thresholds. A split
    evaluated before any validation uses its own best thresholds, with a warning
    (optimistic figures).
    """

    batch_type = LabelledPairsBatch
    primary_metric = "auc"

    def __init__(self) -> None:
        super().__init__()
        # Every score and label of the split, then threshold search.
        # nan_strategy="disable": a NaN score stays in place, so scores and labels stay aligned.
        self.scores, self.labels = CatMetric(nan_strategy="disable"), CatMetric(nan_strategy="disable")
        # Chosen on validation (F1, accuracy), used on test; in the checkpoint. NaN: not yet chosen.
        self.register_buffer("decision_thresholds", torch.full((2,), float("nan")))

    def update(self, model, batch: LabelledPairsBatch) -> dict:
        predicted = score_aligned_pairs(model, batch)
        self.scores.update(predicted.float())
        self.labels.update(batch.labels)
        return {"predicted": predicted.detach(), "gold": batch.labels}

    def compute(self, model, split: str, record: bool = True) -> dict:
        scores, labels = self.scores.compute().flatten(), self.labels.compute().flatten()
        self.scores.reset()
        self.labels.reset()
        metrics = {"auc": binary_auroc(scores, labels.long())}
        if split == "val" or torch.isnan(self.decision_thresholds).any():
            if split != "val":
                log.warning("No validation has chosen decision thresholds: %s F1 and accuracy use the best "
                            "thresholds of this split itself (optimistic)", split)
            best = best_threshold_metrics(scores, labels)
            if split == "val" and record:
                self.decision_thresholds.copy_(torch.tensor([best["f1_threshold"], best["accuracy_threshold"]]))
            return {**metrics, **best}
        f1_threshold, accuracy_threshold = self.decision_thresholds.tolist()
        return {
            **metrics,
            "f1": metrics_at_threshold(scores, labels, f1_threshold)["f1"],
            "accuracy": metrics_at_threshold(scores, labels, accuracy_threshold)["accuracy"],
        }
