"""Masked MaxSim: the late-interaction similarity between two tokenised texts.

For every token of one text take its best cosine match in the other text, then
aggregate those best matches. Vectors are expected L2-normalised, so a dot product
is a cosine.

Two entry points, both differentiable:

* ``maxsim_pairwise(a, a_mask, b, b_mask)`` scores aligned pairs ``(a[i], b[i])``
  and returns ``(B,)``. It never builds an all-pairs tensor.
* ``maxsim_matrix(a, a_mask, b, b_mask)`` scores every text of ``a`` against every
  text of ``b`` and returns ``(Ba, Bb)``: the in-batch-negatives matrix of
  contrastive training.

Options shared by both:

* ``direction``: ``"a2b"`` (ColBERT: each token of ``a`` takes its best match in
  ``b``), ``"b2a"`` (the reverse), or ``"both"`` (mean of the two: symmetric, the
  one that suits semantic textual similarity, where neither text is the query).
* ``reduction``: ``"mean"`` over the matching tokens (bounded in [-1, 1], does not
  grow with length) or ``"sum"`` (ColBERT's score).
* ``temperature``: ``None`` for the hard max, or a positive float for the smooth
  maximum ``t * logsumexp(s / t)``, which tends to the hard max as ``t -> 0`` and
  spreads the gradient over near-best tokens.

Masks are boolean, ``True`` for tokens that take part in matching. A masked token
can never win a max (it is filled with ``-inf``, not ``0``: with ``0`` a padding
token would win whenever every real cosine is negative) and never counts in a mean.
Every text needs at least one unmasked token, else a ``ValueError`` says which.
Maxima are taken in the input dtype (exact) and summed in float32 (float64 for
float64 inputs), so bf16 autocast does not lose precision in the aggregation.
"""

from __future__ import annotations

import torch

DIRECTIONS = ("a2b", "b2a", "both")
REDUCTIONS = ("mean", "sum")


def maxsim_pairwise(
    a: torch.Tensor,
    a_mask: torch.Tensor,
    b: torch.Tensor,
    b_mask: torch.Tensor,
    direction: str = "both",
    reduction: str = "mean",
    temperature: float | None = None,
) -> torch.Tensor:
    """MaxSim of aligned pairs.

    Args:
        a: token vectors ``(B, La, D)``, L2-normalised.
        a_mask: ``(B, La)`` bool, ``True`` where a token of ``a`` takes part.
        b: token vectors ``(B, Lb, D)``.
        b_mask: ``(B, Lb)`` bool.
        direction, reduction, temperature: see the module docstring.

    Returns:
        ``(B,)`` scores (float32; float64 for float64 inputs), ``score[i] = MaxSim(a[i], b[i])``.
    """
    _check_inputs(a, a_mask, b, b_mask, direction, reduction, temperature, paired=True)
    sims = torch.einsum("bld,bmd->blm", a, b)  # (B, La, Lb)
    return _combine_directions(sims, a_mask, b_mask, direction, reduction, temperature)


def maxsim_matrix(
    a: torch.Tensor,
    a_mask: torch.Tensor,
    b: torch.Tensor,
    b_mask: torch.Tensor,
    direction: str = "both",
    reduction: str = "mean",
    temperature: float | None = None,
) -> torch.Tensor:
    """MaxSim of every text of ``a`` against every text of ``b``.

    Args:
        a: token vectors ``(Ba, La, D)``, L2-normalised.
        a_mask: ``(Ba, La)`` bool.
        b: token vectors ``(Bb, Lb, D)``.
        b_mask: ``(Bb, Lb)`` bool.
        direction, reduction, temperature: see the module docstring.

    Returns:
        ``(Ba, Bb)`` scores (float32; float64 for float64 inputs), ``score[i, j] = MaxSim(a[i], b[j])``.

    This reference implementation materialises the ``(Ba, Bb, La, Lb)`` similarity
    tensor; memory grows with the square of the batch.
    """
    _check_inputs(a, a_mask, b, b_mask, direction, reduction, temperature, paired=False)
    sims = torch.einsum("ild,jmd->ijlm", a, b)  # (Ba, Bb, La, Lb)
    return _combine_directions(sims, a_mask[:, None, :], b_mask[None, :, :], direction, reduction, temperature)


def _combine_directions(sims, a_mask, b_mask, direction, reduction, temperature):
    """Aggregate ``sims (..., La, Lb)`` into ``(...)`` for the requested direction.

    ``a_mask`` is ``(..., La)`` and ``b_mask`` ``(..., Lb)``, broadcastable to the
    leading dims of ``sims``.
    """
    if direction == "a2b":
        return _one_direction(sims, a_mask, b_mask, reduction, temperature)
    if direction == "b2a":
        return _one_direction(sims.transpose(-1, -2), b_mask, a_mask, reduction, temperature)
    a2b = _one_direction(sims, a_mask, b_mask, reduction, temperature)
    b2a = _one_direction(sims.transpose(-1, -2), b_mask, a_mask, reduction, temperature)
    return 0.5 * (a2b + b2a)


def _one_direction(sims, query_mask, doc_mask, reduction, temperature):
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


def _check_inputs(a, a_mask, b, b_mask, direction, reduction, temperature, paired):
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be None (hard max) or > 0, got {temperature!r}")
    for name, x, m in (("a", a, a_mask), ("b", b, b_mask)):
        if x.dim() != 3:
            raise ValueError(f"{name} must be (B, L, D) token vectors, got shape {tuple(x.shape)}")
        if m.shape != x.shape[:2]:
            raise ValueError(f"{name}_mask must be (B, L) = {tuple(x.shape[:2])}, got {tuple(m.shape)}")
        if m.dtype != torch.bool:
            raise ValueError(f"{name}_mask must be a bool tensor, got {m.dtype}")
        empty = (~m.any(dim=-1)).nonzero().flatten()
        if empty.numel():
            raise ValueError(
                f"text(s) {empty.tolist()} of {name} have no token left to match (every position is masked); "
                "MaxSim is undefined for an empty text"
            )
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"a and b must share the vector size D, got {a.shape[-1]} and {b.shape[-1]}")
    if paired and a.shape[0] != b.shape[0]:
        raise ValueError(f"maxsim_pairwise needs as many texts in a as in b, got {a.shape[0]} and {b.shape[0]}")
