"""The pooled view of a text: the cosine of its mean token vector with another text's.

MaxSim looks at each token's best match and is blind to what a single vector of the whole text
still sees (a negation, swapped roles: "a man is cutting a tomato" / "a tomato is not being cut
by a man" match token by token). A hybrid score adds that view: ``(1 - w) * MaxSim + w * cos``,
as BGE-M3 mixes its dense and multi-vector scores (``LateInteractionModel(pooled_weight=w)``).

The pooled vector is the mean of the text's (unit) token vectors over the tokens that take part
in matching, so a hybrid score needs nothing beyond the token vectors that MaxSim reads: an index
of token vectors serves it as it is. Computed in float32 (float64 for float64 inputs), as MaxSim sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_pooled(vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``vectors (B, L, D)``, ``mask (B, L)`` bool -> the unit mean of each text's unmasked token vectors,
    ``(B, D)`` float32 (float64 for float64 vectors). A masked token's vector is never read, whatever it
    holds (as in MaxSim)."""
    dtype = torch.promote_types(vectors.dtype, torch.float32)
    kept = torch.where(mask.unsqueeze(-1), vectors.to(dtype), vectors.new_zeros((), dtype=dtype))
    # The mean's direction is the sum's: no division by the token count needed before normalising.
    return F.normalize(kept.sum(dim=1), p=2, dim=-1)


def pooled_cosine_pairwise(a: torch.Tensor, a_mask: torch.Tensor, b: torch.Tensor, b_mask: torch.Tensor) -> torch.Tensor:
    """Cosine of the mean-pooled vectors of aligned pairs ``(a[i], b[i])``: ``(B,)`` float32."""
    return (mean_pooled(a, a_mask) * mean_pooled(b, b_mask)).sum(dim=-1)


def pooled_cosine_matrix(a: torch.Tensor, a_mask: torch.Tensor, b: torch.Tensor, b_mask: torch.Tensor) -> torch.Tensor:
    """Cosine of the mean-pooled vectors of every text of ``a (Ba, La, D)`` against every text of
    ``b (Bb, Lb, D)``: ``(Ba, Bb)`` float32."""
    return mean_pooled(a, a_mask) @ mean_pooled(b, b_mask).T


def mix_scores(maxsim: torch.Tensor, pooled: torch.Tensor, pooled_weight: float) -> torch.Tensor:
    """``(1 - pooled_weight) * maxsim + pooled_weight * pooled``, in float32 (or float64 for float64 MaxSim)."""
    dtype = torch.promote_types(maxsim.dtype, torch.float32)
    return (1.0 - pooled_weight) * maxsim.to(dtype) + pooled_weight * pooled.to(dtype)
