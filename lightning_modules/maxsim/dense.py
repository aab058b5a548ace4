"""MaxSim, dense: the definition in a few tensor operations, and the reference for every backend.

For each token of a query text, its best cosine among the tokens of a document text; those
best matches summed (ColBERT's score) or averaged. Read top to bottom: hide the padding,
compare every token with every token, take each query token's best match, aggregate, and
combine the two directions. Autograd keeps the ``(Ba, Bb, La, Lb)`` similarity tensor for
the backward pass; ``chunked.py`` and ``triton/`` compute the same scores without it.
"""

from __future__ import annotations

import torch

DIRECTIONS = ("a2b", "b2a", "both")
REDUCTIONS = ("mean", "sum")


def zero_masked(x, mask):
    """``x (B, L, D)`` with its masked tokens' vectors zeroed: whatever padding holds (even
    inf or NaN) then reaches neither a score nor a gradient, in any backend (a product with
    a zero weight is still NaN there). The masks still decide what counts."""
    return x.masked_fill(~mask[..., None], 0.0)


def one_direction(sims, query_mask, doc_mask, reduction, temperature):
    """Each query token's best document match, aggregated over query tokens.

    Args:
        sims: ``(..., Lq, Ld)`` cosines.
        query_mask: ``(..., Lq)`` bool, broadcastable to ``sims[..., 0]``.
        doc_mask: ``(..., Ld)`` bool, broadcastable to ``sims[..., 0, :]``.

    Returns:
        ``(...)`` in float32, or float64 for float64 inputs.
    """
    # -inf, not 0: a masked document token must lose even against negative cosines.
    masked = sims.masked_fill(~doc_mask.unsqueeze(-2), float("-inf"))
    # Accumulate in at least float32 (bf16/fp16 lifted, float64 kept).
    accumulate = torch.promote_types(sims.dtype, torch.float32)
    if temperature is None:
        best = masked.amax(dim=-1).to(accumulate)  # (..., Lq)
    else:
        best = temperature * torch.logsumexp(masked.to(accumulate) / temperature, dim=-1)
    # Masked query tokens contribute nothing to the sum (and no gradient).
    best = best.masked_fill(~query_mask, 0.0)
    total = best.sum(dim=-1)
    if reduction == "sum":
        return total
    return total / query_mask.sum(dim=-1).to(total.dtype)


def combine_directions(sims, a_mask, b_mask, direction, reduction, temperature):
    """Aggregate ``sims (..., La, Lb)`` into ``(...)`` for the requested direction.

    ``a_mask`` is ``(..., La)`` and ``b_mask`` ``(..., Lb)``, broadcastable to the
    leading dims of ``sims``.
    """
    if direction == "a2b":
        return one_direction(sims, a_mask, b_mask, reduction, temperature)
    if direction == "b2a":
        return one_direction(sims.transpose(-1, -2), b_mask, a_mask, reduction, temperature)
    a2b = one_direction(sims, a_mask, b_mask, reduction, temperature)
    b2a = one_direction(sims.transpose(-1, -2), b_mask, a_mask, reduction, temperature)
    return 0.5 * (a2b + b2a)


def dense_pairwise(a, a_mask, b, b_mask, direction, reduction, temperature):
    """``(B,)``: ``a[i] (La, D)`` against ``b[i] (Lb, D)``, building only ``(B, La, Lb)``.
    Inputs checked, padding zeroed (``zero_masked``)."""
    sims = torch.einsum("bld,bmd->blm", a, b)  # (B, La, Lb)
    return combine_directions(sims, a_mask, b_mask, direction, reduction, temperature)


def dense_matrix(a, a_mask, b, b_mask, direction, reduction, temperature):
    """``(Ba, Bb)``: every text of ``a (Ba, La, D)`` against every text of ``b (Bb, Lb, D)``.
    Inputs checked, padding zeroed (``zero_masked``)."""
    (ba, la, dim), (bb, lb, _) = a.shape, b.shape
    # One product of every a token with every b token, read as (Ba, Bb, La, Lb) without a copy:
    # the einsum "ild,jmd->ijlm" first copies b into a batched layout, which in bf16 on a CPU
    # cost far more than the product itself (docs/engine.md, "bf16 on a CPU").
    sims = (a.reshape(ba * la, dim) @ b.reshape(bb * lb, dim).T).view(ba, la, bb, lb).transpose(1, 2)
    return combine_directions(sims, a_mask[:, None, :], b_mask[None, :, :], direction, reduction, temperature)


def token_weights(mask, reduction, direction, dtype):
    """The same aggregation as per-token weights, for the backends that sum maxima themselves:
    what each token's best match adds to the score, 1 (sum) or 1/count (mean), halved for
    "both"; 0 on masked tokens. ``mask (B, L)`` -> ``(B, L)`` of ``dtype``."""
    weight = mask.to(dtype)
    if reduction == "mean":
        weight = weight / weight.sum(dim=-1, keepdim=True)
    return 0.5 * weight if direction == "both" else weight
