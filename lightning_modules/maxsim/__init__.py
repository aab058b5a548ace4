"""Masked MaxSim: the late-interaction similarity between two tokenised texts.

For every token of one text take its best cosine match in the other text, then aggregate
those best matches (``dense.py`` computes it in a few lines; how the other backends compute
the same score, and what was measured: docs/engine.md). Vectors are expected L2-normalised,
so a dot product is a cosine.

* ``maxsim_pairwise(a (B, La, D), a_mask (B, La), b (B, Lb, D), b_mask (B, Lb)) -> (B,)``
  scores aligned pairs ``(a[i], b[i])``; it never builds an all-pairs tensor.
* ``maxsim_matrix(a (Ba, La, D), a_mask (Ba, La), b (Bb, Lb, D), b_mask (Bb, Lb)) -> (Ba, Bb)``
  scores every text of ``a`` against every text of ``b``: contrastive training's in-batch matrix.

Both are differentiable and share these options:

* ``direction``: ``"a2b"`` (ColBERT: each token of ``a`` takes its best match in ``b``),
  ``"b2a"`` (the reverse), or ``"both"`` (mean of the two: symmetric, for semantic textual
  similarity, where neither text is the query).
* ``reduction``: ``"mean"`` over the matching tokens (bounded in [-1, 1]) or ``"sum"``
  (ColBERT's score).
* ``temperature``: ``None`` for the hard max, or a positive float for the smooth maximum
  ``t * logsumexp(s / t)``, which tends to the hard max as ``t -> 0``.

Guarantees: masks are bool, ``True`` for tokens that take part. A masked token never wins a
max (it is filled with ``-inf``, not 0) and never counts in a mean, and its vector is never
read into a score or a gradient, whatever it holds (even inf or NaN). Every text needs an
unmasked token, else a ``ValueError`` names it; ``a`` and ``b`` must be floating point, of
one dtype outside autocast. Maxima are taken in the input dtype (triton: on its float32
accumulations) and summed in float32 (float64 for float64 inputs): scores are float32, or
float64 for float64 inputs.

Backends of ``maxsim_matrix`` (``backend=``; ``maxsim_pairwise`` takes it for symmetry and
always computes ``(B, La, Lb)`` densely):

* ``"dense"`` (``dense.py``): the reference; autograd keeps ``(Ba, Bb, La, Lb)`` similarities.
* ``"chunked"`` (``chunked.py``): memory ``O(Ba * Bb * (La + Lb))``; hard max only, a smooth
  max goes to dense.
* ``"triton"`` (``triton/``): fused kernels; CUDA tensors (or ``TRITON_INTERPRET=1``, Triton's
  CPU interpreter, for tests) of float32, bf16 or fp16. A smooth max goes to dense; float64,
  or ``a`` texts over ``triton.settings.MAX_A_TOKENS`` tokens, to chunked. Gradients are
  bit for bit reproducible under ``torch.use_deterministic_algorithms(True)``.
* ``"late-interaction-kernels"`` (``late_interaction_kernels.py``): a peer's fused kernels, when
  that package is installed; CUDA tensors of float32, bf16 or fp16; a smooth max goes to dense.
* ``"auto"`` (default): one of dense, chunked and triton (``dispatch.resolve_backend``;
  docs/engine.md, "The auto policy").
"""

from __future__ import annotations

import torch

from lightning_modules.maxsim.checks import check_inputs
from lightning_modules.maxsim.chunked import CHUNK_BUDGET_BYTES, ChunkedMaxSim
from lightning_modules.maxsim.dense import DIRECTIONS, REDUCTIONS, dense_pairwise, zero_masked
from lightning_modules.maxsim.dispatch import (
    BACKENDS,
    ENGINE_DEFAULTS,
    check_backend,
    engine_settings,
    resolve_backend,
    run_matrix,
    triton_installed,
)

__all__ = [
    "BACKENDS", "CHUNK_BUDGET_BYTES", "DIRECTIONS", "ENGINE_DEFAULTS", "REDUCTIONS", "ChunkedMaxSim",
    "engine_settings", "maxsim_matrix", "maxsim_pairwise", "triton_installed",
]  # fmt: skip


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
    check_inputs(a, a_mask, b, b_mask, direction, reduction, temperature, paired=True)
    check_backend(backend)
    a, b = zero_masked(a, a_mask), zero_masked(b, b_mask)
    return dense_pairwise(a, a_mask, b, b_mask, direction, reduction, temperature)


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
    a_zero_padded: bool = False,
    b_zero_padded: bool = False,
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
        a_zero_padded, b_zero_padded: the caller guarantees that the side's masked vectors are
            zero (``TokenEmbeddings.stack`` pads so): its copy with them zeroed is skipped, which
            for a block of a corpus is as much memory traffic as scoring one query against it.

    Returns:
        ``(Ba, Bb)`` scores (float32; float64 for float64 inputs), ``score[i, j] = MaxSim(a[i], b[j])``.
    """
    check_inputs(a, a_mask, b, b_mask, direction, reduction, temperature, paired=False)
    check_backend(backend)
    if isinstance(chunk_budget_bytes, bool) or not isinstance(chunk_budget_bytes, int) or chunk_budget_bytes <= 0:
        raise ValueError(f"chunk_budget_bytes must be a positive integer, got {chunk_budget_bytes!r}")
    backend = resolve_backend(backend, a, b, temperature)
    return run_matrix(backend, a, a_mask, b, b_mask, direction, reduction, temperature, chunk_budget_bytes,
                      zero_padded=(a_zero_padded, b_zero_padded))
