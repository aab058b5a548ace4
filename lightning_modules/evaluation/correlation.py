"""Graded pairs: Spearman and Pearson of MaxSim against the gold scores (STS)."""

from __future__ import annotations

import warnings

from torchmetrics import PearsonCorrCoef, SpearmanCorrCoef

from lightning_modules.data.batches import ScoredPairsBatch
from lightning_modules.evaluation.base import Evaluator, score_aligned_pairs


class CorrelationEvaluator(Evaluator):
    """``spearman`` (primary) and ``pearson`` of every pair's MaxSim against its gold score.

    torchmetrics keeps every prediction, so the correlations are those of the whole split,
    gathered from every process (a mean of per-process correlations would be wrong).
    """

    batch_type = ScoredPairsBatch
    primary_metric = "spearman"

    def __init__(self) -> None:
        super().__init__()
        with warnings.catch_warnings():
            # torchmetrics warns that Spearman keeps every prediction: it must, to rank them.
            warnings.filterwarnings("ignore", message="Metric `SpearmanCorrcoef` will save all", category=UserWarning)
            self.spearman, self.pearson = SpearmanCorrCoef(), PearsonCorrCoef()

    def update(self, model, batch: ScoredPairsBatch) -> dict:
        predicted = score_aligned_pairs(model, batch)
        self.spearman.update(predicted, batch.scores)
        self.pearson.update(predicted, batch.scores)
        return {"predicted": predicted.detach(), "gold": batch.scores}

    def compute(self, model, split: str, record: bool = True) -> dict:
        metrics = {"spearman": self.spearman.compute(), "pearson": self.pearson.compute()}
        self.spearman.reset()
        self.pearson.reset()
        return metrics
