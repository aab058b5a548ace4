"""The ``chunked`` backend: ``maxsim_matrix`` with a hard max in ``O(Ba * Bb * (La + Lb))`` memory.

A custom autograd function that never holds the whole ``(Ba, Bb, La, Lb)`` similarity
tensor: its forward keeps each token's best similarity and the index of its best match,
block by block of text pairs; its backward rebuilds the gradients from those indices
(docs/engine.md, "chunked").
"""

from __future__ import annotations

import math

import torch

from lightning_modules.maxsim.dense import token_weights

# The largest tensor of one block of text pairs (similarities, or gathered vectors in backward):
# a block's working set is a few times this, and each block is still a big matrix product.
CHUNK_BUDGET_BYTES = 16 * 2**20


class ChunkedMaxSim(torch.autograd.Function):
    """``maxsim_matrix`` with a hard max, in memory ``O(Ba * Bb * (La + Lb))``.

    ``apply(a (Ba, La, D), b (Bb, Lb, D), a_mask (Ba, La), b_mask (Bb, Lb), direction,
    reduction, budget_bytes) -> (Ba, Bb)``. The score matrix is walked in blocks of text
    pairs (``_chunk_plan``) so that the largest tensor a block builds stays within
    ``budget_bytes``: the similarities, ``La * Lb`` a pair in the inputs' dtype, in the
    forward pass; the gathered or scaled vectors, ``max(La, Lb) * D`` a pair in float32
    (float64 for float64 inputs), in the backward pass; a block holds a few such tensors
    at once. A block is whole columns of ``b`` texts against every text of ``a`` while one
    column fits (the largest products), else one column cut into near-equal blocks of ``a`` texts
    (many queries against a corpus); at least one pair, whatever the budget. Every max is
    within one pair of texts, so the blocks change no score. Saved for backward: the inputs
    and, per direction, the index of each token's best match, ``(Ba, Bb, La)`` and/or
    ``(Ba, Bb, Lb)`` int32 (none when no gradient is wanted); only the wanted gradients are
    computed. Masks get no gradient. On CUDA, ``index_add_`` sums with atomics, so the last
    bits of a gradient can differ between runs, except under
    ``torch.use_deterministic_algorithms(True)``, where torch makes it deterministic.
    """

    @staticmethod
    def forward(ctx, a, b, a_mask, b_mask, direction, reduction, budget_bytes):
        accumulate = torch.promote_types(a.dtype, torch.float32)
        (ba, la, dim), (bb, lb, _) = a.shape, b.shape
        a_weight = token_weights(a_mask, reduction, direction, accumulate) if direction != "b2a" else None
        b_weight = token_weights(b_mask, reduction, direction, accumulate) if direction != "a2b" else None
        scores = torch.zeros(ba, bb, dtype=accumulate, device=a.device)
        keep = any(ctx.needs_input_grad[:2])  # scoring a corpus (no gradient) keeps no indices
        a_best = torch.empty(ba, bb, la, dtype=torch.int32, device=a.device) if a_weight is not None and keep else None
        b_best = torch.empty(ba, bb, lb, dtype=torch.int32, device=a.device) if b_weight is not None and keep else None
        # A pair's largest tensor: its similarities (or, for one-token texts, int64 argmax indices).
        pair_bytes = max(la * lb * a.element_size(), max(la, lb) * 8)
        plan = _chunk_plan(ba, bb, pair_bytes, budget_bytes)
        # Every block's similarities go to one buffer: a fresh block-sized tensor each time would
        # leave the allocator holding several (docs/engine.md, "chunked").
        buffer = torch.empty(math.ceil(ba / plan[0]) * min(bb, plan[1]) * la * lb, dtype=a.dtype, device=a.device)
        for rows, part in _chunks(ba, bb, plan):
            sims = _similarities(a[rows], b[part], buffer)  # (na, nb, La, Lb): the only big tensor
            # Masked tokens are filled with -inf in place (no copy): they can never win a max.
            sims.masked_fill_(~b_mask[None, part, None, :], float("-inf"))
            if a_weight is not None:  # each token of a: its best token of b
                best, index = sims.max(dim=-1) if keep else (sims.amax(dim=-1), None)
                # A masked token of a has weight 0; its max is finite (every text has a token).
                scores[rows, part] += (best.to(accumulate) * a_weight[rows, None, :]).sum(-1)
                if keep:
                    a_best[rows, part] = index
            if b_weight is not None:  # each token of b: its best token of a
                sims.masked_fill_(~a_mask[rows, None, :, None], float("-inf"))
                best, index = sims.max(dim=-2) if keep else (sims.amax(dim=-2), None)
                # A masked token of b saw only -inf: zero it before the weight 0 makes it NaN.
                best = best.masked_fill(~b_mask[None, part, :], 0.0)
                scores[rows, part] += (best.to(accumulate) * b_weight[None, part, :]).sum(-1)
                if keep:
                    b_best[rows, part] = index
            del sims
        ctx.save_for_backward(a, b, a_weight, b_weight, a_best, b_best)
        ctx.budget_bytes = budget_bytes
        return scores

    @staticmethod
    def backward(ctx, grad):
        a, b, a_weight, b_weight, a_best, b_best = ctx.saved_tensors
        (ba, la, dim), (bb, lb, _) = a.shape, b.shape
        want_a, want_b = ctx.needs_input_grad[:2]
        accumulate = grad.dtype
        # Only the wanted gradients are summed (a frozen side costs nothing); the other is a
        # one-element stand-in that nothing reads. A side's vectors are read (in the
        # accumulation dtype: a copy for 16-bit inputs) only by the other side's gradient.
        grad_a = torch.zeros(ba * la if want_a else 1, dim, dtype=accumulate, device=a.device)
        grad_b = torch.zeros(bb * lb if want_b else 1, dim, dtype=accumulate, device=a.device)
        a_vectors = a.to(accumulate) if want_b else None  # (Ba, La, D)
        b_vectors = b.to(accumulate) if want_a else None  # (Bb, Lb, D)
        a_texts = torch.arange(ba, device=a.device)
        b_texts = torch.arange(bb, device=a.device)
        pair_bytes = max(la, lb) * dim * grad.element_size()  # gathered or scaled vectors, (na, nb, L, D)
        for rows, part in _chunks(ba, bb, _chunk_plan(ba, bb, pair_bytes, ctx.budget_bytes)):
            if a_weight is not None:
                # score[i, j] += w[i, l] * <a[i, l], b[j, best]>: a[i, l] gets w * g * b[j, best] (a gather),
                # and b[j, best] gets w * g * a[i, l] (a scatter-add: many a tokens may pick one b token).
                weight = grad[rows, part, None] * a_weight[rows, None, :]  # (na, nb, La)
                picked = b_texts[part, None] * lb + a_best[rows, part].long()  # (na, nb, La) tokens of b, flat
                if want_a:
                    gathered = torch.einsum("ijl,ijld->ild", weight, b_vectors.reshape(bb * lb, dim)[picked])
                    grad_a[rows.start * la : rows.stop * la] += gathered.reshape(-1, dim)  # (na La, D)
                if want_b:
                    grad_b.index_add_(0, picked.flatten(), (weight[..., None] * a_vectors[rows, None]).reshape(-1, dim))
            if b_weight is not None:
                weight = grad[rows, part, None] * b_weight[None, part, :]  # (na, nb, Lb)
                picked = a_texts[rows, None, None] * la + b_best[rows, part].long()  # (na, nb, Lb) tokens of a, flat
                if want_b:
                    gathered = torch.einsum("ijm,ijmd->jmd", weight, a_vectors.reshape(ba * la, dim)[picked])
                    grad_b[part.start * lb : part.stop * lb] += gathered.reshape(-1, dim)  # (nb Lb, D)
                if want_a:
                    grad_a.index_add_(0, picked.flatten(), (weight[..., None] * b_vectors[None, part]).reshape(-1, dim))
        grad_a = grad_a.view_as(a).to(a.dtype) if want_a else None
        grad_b = grad_b.view_as(b).to(b.dtype) if want_b else None
        return grad_a, grad_b, None, None, None, None, None


def _similarities(a, b, out):
    """``a (na, La, D)`` against ``b (nb, Lb, D)``: ``(na, nb, La, Lb)`` cosines, as the
    einsum ``"ild,jmd->ijlm"``, computed into the front of the flat buffer ``out`` (a view of it)."""
    (na, la, dim), (nb, lb, _) = a.shape, b.shape
    flat = out[: na * la * nb * lb].view(na * la, nb * lb)
    torch.mm(a.reshape(na * la, dim), b.reshape(nb * lb, dim).T, out=flat)
    return flat.view(na, la, nb, lb).transpose(1, 2)


def _chunk_plan(ba, bb, pair_bytes, budget_bytes):
    """``(blocks of a texts a column, b texts a column)`` of ``ChunkedMaxSim``, for blocks of
    at most ``budget_bytes // pair_bytes`` pairs (at least one): every a text against as many b
    texts as fit, else one b text against the fewest near-equal blocks of a texts that fit."""
    pairs = max(1, budget_bytes // max(pair_bytes, 1))
    if pairs >= ba:
        return 1, max(1, min(bb, pairs // max(ba, 1)))
    return math.ceil(ba / pairs), 1


def _chunks(ba, bb, plan):
    """The blocks of the ``(Ba, Bb)`` score matrix, as ``(slice of a texts, slice of b texts)``,
    column by column; a column's ``a`` blocks differ in size by one text at most, the first
    the largest (``ceil(Ba / blocks)``)."""
    a_blocks, b_step = plan
    bounds = [-(-ba * k // a_blocks) for k in range(a_blocks + 1)]  # ceil(Ba k / blocks)
    for b_start in range(0, bb, b_step):
        for a_start, a_stop in zip(bounds, bounds[1:]):
            if a_stop > a_start:
                yield slice(a_start, a_stop), slice(b_start, min(b_start + b_step, bb))
