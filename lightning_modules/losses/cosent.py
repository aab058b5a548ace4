"""CoSENT: a ranking loss for graded similarity scores."""

import torch
from torch import nn


class CoSENTLoss(nn.Module):
    """Push every pair with a higher gold score above every pair with a lower one.

    ``loss = log(1 + sum over (i, j) with gold[i] > gold[j] of exp(scale * (pred[j] - pred[i])))``

    Only the order of the gold scores matters, which is what Spearman correlation
    measures, so CoSENT usually beats a regression loss on STS.

    Inputs:
        predicted: ``(B,)`` model similarities (for example MaxSim, in [-1, 1]).
        gold: ``(B,)`` gold scores, any monotonic scale.

    Returns a scalar. With no ordered pair in the batch (all gold scores equal) the
    loss is ``log(1) = 0``.

    Example::

        loss = CoSENTLoss(scale=20.0)(torch.tensor([0.9, 0.1]), torch.tensor([1.0, 0.0]))

    Citation: Su Jianlin, "CoSENT: a more efficient sentence vector scheme than
    Sentence-BERT" (2022), https://kexue.fm/archives/8847
    """

    def __init__(self, scale: float = 20.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, predicted: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
        predicted = predicted.float() * self.scale
        # diff[i, j] = pred[j] - pred[i]; keep it only where gold[i] > gold[j].
        diff = predicted[None, :] - predicted[:, None]
        ordered = gold[:, None] > gold[None, :]
        diff = diff.masked_fill(~ordered, float("-inf"))
        # The leading zero is the "1 +" inside the log.
        return torch.logsumexp(torch.cat([diff.new_zeros(1), diff.flatten()]), dim=0)
