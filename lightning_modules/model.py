"""The late-interaction model: a token encoder plus a MaxSim head. A plain ``nn.Module``."""

from __future__ import annotations

import torch
from torch import nn

from lightning_modules.encoder import TokenEmbeddings, TokenEncoder
from lightning_modules.maxsim import maxsim_matrix, maxsim_pairwise


class LateInteractionModel(nn.Module):
    """Encode texts into token vectors and compare them with MaxSim.

    Args:
        encoder: a ``TokenEncoder``.
        direction: ``"both"`` (symmetric, for STS), ``"a2b"`` (ColBERT) or ``"b2a"``.
        reduction: ``"mean"`` (bounded in [-1, 1]) or ``"sum"`` (ColBERT).
        temperature: ``None`` for the hard max, or the smooth-max temperature.
    """

    def __init__(
        self,
        encoder: TokenEncoder,
        direction: str = "both",
        reduction: str = "mean",
        temperature: float | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.direction = direction
        self.reduction = reduction
        self.temperature = temperature

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TokenEmbeddings:
        """``input_ids (B, L)``, ``attention_mask (B, L)`` -> token vectors ``(B, L, D)`` and mask."""
        return self.encoder(input_ids, attention_mask)

    def score_pairs(self, a: TokenEmbeddings, b: TokenEmbeddings) -> torch.Tensor:
        """MaxSim of aligned pairs, ``(B,)``."""
        return maxsim_pairwise(a.vectors, a.mask, b.vectors, b.mask, **self._options())

    def score_matrix(self, a: TokenEmbeddings, b: TokenEmbeddings) -> torch.Tensor:
        """MaxSim of every ``a`` text against every ``b`` text, ``(Ba, Bb)``."""
        return maxsim_matrix(a.vectors, a.mask, b.vectors, b.mask, **self._options())

    def _options(self) -> dict:
        return {"direction": self.direction, "reduction": self.reduction, "temperature": self.temperature}
