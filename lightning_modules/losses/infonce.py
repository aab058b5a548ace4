"""In-batch contrastive loss (InfoNCE) over a score matrix."""

import torch
import torch.nn.functional as F
from torch import nn


class InfoNCELoss(nn.Module):
    """Cross-entropy that picks each text's own partner among the whole batch.

    Inputs:
        scores: ``(Ba, Bb)`` similarities with ``Bb >= Ba``; ``scores[i, i]`` is the
            positive of row ``i``; every other column is a negative (the other
            positives in the batch, and any hard negatives appended after column
            ``Ba``).

    ``mask``: optional ``(Ba, Bb)`` bool, True where a column must not count as a
    negative of the row (another known positive of the row's text: a false
    negative). The diagonal must stay False.

    ``symmetric=True`` also picks each ``b`` text's partner among the ``a`` texts
    (columns of the square part), which suits symmetric tasks.

    Scores are divided by ``temperature`` (MaxSim means lie in [-1, 1], so a small
    temperature such as 0.05 sharpens them like cosine-similarity losses do).

    Example::

        loss = InfoNCELoss(temperature=0.05)(torch.eye(4))  # near 0: positives win

    Citation: van den Oord et al., "Representation Learning with Contrastive
    Predictive Coding" (2018), arXiv:1807.03748
    """

    def __init__(self, temperature: float = 0.05, symmetric: bool = True) -> None:
        super().__init__()
        if not temperature > 0:  # also refuses NaN
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.symmetric = symmetric

    def forward(self, scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if scores.dim() != 2 or scores.shape[1] < scores.shape[0]:
            raise ValueError(f"scores must be (Ba, Bb) with Bb >= Ba, got {tuple(scores.shape)}")
        if mask is not None and (mask.shape != scores.shape or mask.diagonal().any()):
            raise ValueError("mask must have the shape of scores and a False diagonal (the positives)")
        n = scores.shape[0]
        targets = torch.arange(n, device=scores.device)
        loss = self.pick(scores, targets, mask)
        if self.symmetric:
            loss = 0.5 * (loss + self.pick(scores[:, :n].T, targets, None if mask is None else mask[:, :n].T))
        return loss

    def pick(self, scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """One direction: mean cross-entropy of each row of ``scores (R, C)`` picking column
        ``targets (R,)`` among its columns, those where ``mask (R, C)`` is True left out."""
        logits = scores.float() / self.temperature
        if mask is not None:
            logits = logits.masked_fill(mask, float("-inf"))
        return F.cross_entropy(logits, targets)
