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
A masked token's vector is never read into a score or a gradient, whatever it holds
(even inf or NaN). Every text needs at least one unmasked token, else a ``ValueError``
says which; ``a`` and ``b`` must be floating point, of one dtype outside autocast.
Maxima are taken in the input dtype (exact; the triton backend takes them on its float32
accumulations) and summed in float32 (float64 for float64 inputs), so bf16 autocast does
not lose precision in the aggregation.

Backends of ``maxsim_matrix`` (``backend=``):

* ``"dense"``: the readable reference; autograd keeps the ``(Ba, Bb, La, Lb)``
  similarity tensor for the backward pass.
* ``"chunked"``: ``ChunkedMaxSim``, a custom autograd function. Its forward walks
  the score matrix in blocks of text pairs sized from a memory budget (``b`` texts
  against every ``a`` text, or against part of ``a`` when one ``b`` text against
  all of it does not fit) and keeps only each token's
  best similarity and the index of its best match; its backward rebuilds the
  gradients from those indices with a gather (for the side whose tokens took the
  max) and a scatter-add, ``index_add_`` (for the side whose tokens were picked):
  the gradient of a max flows to the winning token only. Memory
  ``O(Ba * Bb * (La + Lb))`` instead of ``O(Ba * Bb * La * Lb)``. Hard max only: with
  a ``temperature`` (smooth max every token gets gradient) it falls back to dense.
* ``"triton"``: fused GPU kernels (``lightning_modules/maxsim_triton.py``): the
  similarities of a tile of tokens live only in registers, each token's running max
  and argmax reach memory, and the backward pass rebuilds the gradients from the
  argmax: a gather and a float32 atomic add per token by default, or, under
  ``torch.use_deterministic_algorithms(True)``, gathers only over a stable sort of the
  argmax (bit for bit the same every run). Same memory as chunked,
  and no chunk loop in Python. Needs Triton and CUDA tensors (or
  ``TRITON_INTERPRET=1``, Triton's CPU interpreter, for tests). Where the kernel does
  not apply it hands over, and says so here: smooth max to dense; float64 inputs, or
  ``a`` texts over ``MAX_A_TOKENS`` (256) tokens, to chunked.
* ``"late-interaction-kernels"``: a peer's fused kernels, when that package is installed
  (``lightning_modules/maxsim_lik.py``), to compare training on ours and on theirs. CUDA
  tensors of float32/bf16/fp16; a smooth max goes to dense. Never chosen by ``auto``.
* ``"auto"`` (default): triton on CUDA (compute capability 8.0 or newer: bf16 tensor
  cores) when Triton is installed and the kernel applies; otherwise dense while the
  similarity tensor is small, chunked above ``AUTO_DENSE_LIMIT_BYTES`` (12 MB on a CPU:
  ``benchmarks/auto_limit.py`` finds chunked faster from 16 MB on; 64 MB on a GPU
  without the kernels, ``AUTO_DENSE_LIMIT_BYTES_GPU``, not measured).

``maxsim_pairwise`` builds only ``(B, La, Lb)`` and takes ``backend`` for symmetry.
"""

from __future__ import annotations

import importlib.util
import math

import torch

DIRECTIONS = ("a2b", "b2a", "both")
REDUCTIONS = ("mean", "sum")
BACKENDS = ("auto", "dense", "chunked", "triton", "late-interaction-kernels")
# auto: above this size the (Ba, Bb, La, Lb) similarity tensor is not materialised (CPU:
# benchmarks/auto_limit.py; a GPU without the triton kernels keeps the older, unmeasured 64 MB).
AUTO_DENSE_LIMIT_BYTES = 12 * 2**20
AUTO_DENSE_LIMIT_BYTES_GPU = 64 * 2**20
# chunked: the largest tensor of one block of text pairs (similarities, or gathered vectors in
# backward). Small enough that a block's working set is a few times this (forward and
# backward), large enough that each block is still a big matrix product.
CHUNK_BUDGET_BYTES = 16 * 2**20


def maxsim_pairwise(
    a: torch.Tensor,
    a_mask: torch.Tensor,
    b: torch.Tensor,
    b_mask: torch.Tensor,
    direction: str = "both",
    reduction: str = "mean",
    temperature: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """MaxSim of aligned pairs.

    Args:
        a: token vectors ``(B, La, D)``, L2-normalised.
        a_mask: ``(B, La)`` bool, ``True`` where a token of ``a`` takes part.
        b: token vectors ``(B, Lb, D)``.
        b_mask: ``(B, Lb)`` bool.
        direction, reduction, temperature: see the module docstring.
        backend: accepted for symmetry with ``maxsim_matrix``; aligned pairs need only
            ``(B, La, Lb)``, so every backend computes them the same way.

    Returns:
        ``(B,)`` scores (float32; float64 for float64 inputs), ``score[i] = MaxSim(a[i], b[i])``.
    """
    _check_inputs(a, a_mask, b, b_mask, direction, reduction, temperature, paired=True)
    _check_backend(backend)
    a, b = _zero_masked(a, a_mask), _zero_masked(b, b_mask)
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
    backend: str = "auto",
    chunk_budget_bytes: int = CHUNK_BUDGET_BYTES,
) -> torch.Tensor:
    """MaxSim of every text of ``a`` against every text of ``b``.

    Args:
        a: token vectors ``(Ba, La, D)``, L2-normalised.
        a_mask: ``(Ba, La)`` bool.
        b: token vectors ``(Bb, Lb, D)``.
        b_mask: ``(Bb, Lb)`` bool.
        direction, reduction, temperature: see the module docstring.
        backend: ``"auto"``, ``"dense"``, ``"chunked"``, ``"triton"`` or ``"late-interaction-kernels"``
            (see the module docstring).
        chunk_budget_bytes: the chunked backend's budget for a block's largest tensor (see ``ChunkedMaxSim``).

    Returns:
        ``(Ba, Bb)`` scores (float32; float64 for float64 inputs), ``score[i, j] = MaxSim(a[i], b[j])``.
    """
    _check_inputs(a, a_mask, b, b_mask, direction, reduction, temperature, paired=False)
    _check_backend(backend)
    if isinstance(chunk_budget_bytes, bool) or not isinstance(chunk_budget_bytes, int) or chunk_budget_bytes <= 0:
        raise ValueError(f"chunk_budget_bytes must be a positive integer, got {chunk_budget_bytes!r}")
    backend = _resolve_backend(backend, a, b, temperature)
    if backend != "dense":  # (the dense einsum is autocast's own)
        a, b = _autocast_operands(a, b)  # before the copy below, which is then in the autocast dtype
    a, b = _zero_masked(a, a_mask), _zero_masked(b, b_mask)
    if backend == "triton":
        from lightning_modules.maxsim_triton import TritonMaxSim

        a_weight = _token_weights(a_mask, reduction, direction, torch.float32)
        b_weight = _token_weights(b_mask, reduction, direction, torch.float32)
        return TritonMaxSim.apply(a, b, a_mask, b_mask, a_weight, b_weight, direction)
    if backend == "late-interaction-kernels":
        from lightning_modules import maxsim_lik

        return maxsim_lik.maxsim_matrix(a, a_mask, b, b_mask, direction, reduction)
    if backend == "chunked":
        return ChunkedMaxSim.apply(a, b, a_mask, b_mask, direction, reduction, chunk_budget_bytes)
    sims = torch.einsum("ild,jmd->ijlm", a, b)  # (Ba, Bb, La, Lb)
    return _combine_directions(sims, a_mask[:, None, :], b_mask[None, :, :], direction, reduction, temperature)


def _zero_masked(x, mask):
    """``x (B, L, D)`` with its masked tokens' vectors zeroed: whatever padding holds (even
    inf or NaN) then reaches neither a score nor a gradient, in any backend (a product with
    a zero weight is still NaN there). The masks still decide what counts."""
    return x.masked_fill(~mask[..., None], 0.0)


def _autocast_operands(a, b):
    """``a`` and ``b`` in the autocast dtype when autocast is on, as the dense einsum would
    multiply them (token vectors leave F.normalize in float32 even under autocast): for
    the fused kernels, which autocast does not reach, and the chunked backend's products
    into a buffer (``out=``, which autocast leaves alone). float64 stays float64, as
    autocast leaves it."""
    if torch.is_autocast_enabled(a.device.type):
        low = torch.get_autocast_dtype(a.device.type)
        return tuple(x if x.dtype == torch.float64 else x.to(low) for x in (a, b))
    return a, b


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
        a_weight = _token_weights(a_mask, reduction, direction, accumulate) if direction != "b2a" else None
        b_weight = _token_weights(b_mask, reduction, direction, accumulate) if direction != "a2b" else None
        scores = torch.zeros(ba, bb, dtype=accumulate, device=a.device)
        keep = any(ctx.needs_input_grad[:2])  # scoring a corpus (no gradient) keeps no indices
        a_best = torch.empty(ba, bb, la, dtype=torch.int32, device=a.device) if a_weight is not None and keep else None
        b_best = torch.empty(ba, bb, lb, dtype=torch.int32, device=a.device) if b_weight is not None and keep else None
        # A pair's largest tensor: its similarities (or, for one-token texts, int64 argmax indices).
        pair_bytes = max(la * lb * a.element_size(), max(la, lb) * 8)
        plan = _chunk_plan(ba, bb, pair_bytes, budget_bytes)
        # Every block's similarities go to one buffer: a fresh block-sized tensor each time would
        # leave the allocator holding several (glibc's malloc kept about 100 MB resident for 14 MB blocks).
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


def _token_weights(mask, reduction, direction, dtype):
    """What each token's best match adds to the score: 1 (sum) or 1/count (mean), halved for "both"."""
    weight = mask.to(dtype)
    if reduction == "mean":
        weight = weight / weight.sum(dim=-1, keepdim=True)
    return 0.5 * weight if direction == "both" else weight


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


def _resolve_backend(backend, a, b, temperature):
    """The backend that runs: ``dense``, ``chunked``, ``triton`` or ``late-interaction-kernels``
    (see the module docstring)."""
    if temperature is not None:
        return "dense"  # smooth max: every token gets gradient, nothing to save by keeping argmaxes
    if backend == "late-interaction-kernels":
        from lightning_modules import maxsim_lik

        maxsim_lik.check(a, b)
        return backend
    if backend == "triton":
        if not triton_installed():
            raise ValueError("backend='triton' needs the triton package: pip install 'maxsim-lightning[triton]'")
        from lightning_modules import maxsim_triton

        if not maxsim_triton.runs_on(a):
            raise ValueError("backend='triton' needs CUDA tensors (TRITON_INTERPRET=1 runs it on the CPU, for tests)")
        return "triton" if maxsim_triton.handles(a, b) else "chunked"
    if backend == "auto" and a.is_cuda and triton_installed() and torch.cuda.get_device_capability(a.device) >= (8, 0):
        from lightning_modules import maxsim_triton

        if maxsim_triton.handles(a, b):
            return "triton"
    if backend == "auto":
        size = a.shape[0] * b.shape[0] * a.shape[1] * b.shape[1] * a.element_size()
        limit = AUTO_DENSE_LIMIT_BYTES_GPU if a.is_cuda else AUTO_DENSE_LIMIT_BYTES
        return "chunked" if size > limit else "dense"
    return backend


def triton_installed() -> bool:
    """Whether the triton package can be imported (it ships with CUDA builds of torch)."""
    return importlib.util.find_spec("triton") is not None


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _check_inputs(a, a_mask, b, b_mask, direction, reduction, temperature, paired):
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
    if temperature is not None and not (number and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be None (hard max) or a finite number > 0, got {temperature!r}")
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
        if not x.is_floating_point():
            raise ValueError(f"{name} must hold floating-point token vectors, got {x.dtype}")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"a and b must share the vector size D, got {a.shape[-1]} and {b.shape[-1]}")
    if a.shape[-1] == 0:
        raise ValueError("token vectors must have at least one dimension, got D = 0")
    # Under autocast the products run in its dtype whatever the inputs' (as the einsum would).
    if a.dtype != b.dtype and not torch.is_autocast_enabled(a.device.type):
        raise ValueError(f"a and b must share a dtype (or run under torch.autocast), got {a.dtype} and {b.dtype}")
    if paired and a.shape[0] != b.shape[0]:
        raise ValueError(f"maxsim_pairwise needs as many texts in a as in b, got {a.shape[0]} and {b.shape[0]}")
