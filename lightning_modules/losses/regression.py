"""Regression of the similarity onto the gold score."""

import torch
import torch.nn.functional as F
from torch import nn


class ScoreRegressionLoss(nn.Module):
    """Mean squared error between the predicted similarity and the gold score.

    Inputs:
        predicted: ``(B,)`` similarities in [-1, 1] (MaxSim with ``reduction="mean"``).
        gold: ``(B,)`` gold scores already scaled to [0, 1].

    Like sentence-transformers' CosineSimilarityLoss, the gold score in [0, 1] is the
    target for the similarity itself. It asks for exact values, not only their
    order, so it is a weaker signal for Spearman than CoSENT; mixed in with a small
    weight it keeps scores calibrated.

    Example::

        loss = ScoreRegressionLoss()(torch.tensor([0.8]), torch.tensor([1.0]))  # 0.04
    """

    def forward(self, predicted: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(predicted.float(), gold.float())
