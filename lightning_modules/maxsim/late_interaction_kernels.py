"""The ``late-interaction-kernels`` backend of ``maxsim_matrix``: a peer's fused kernels, for comparison.

`late-interaction-kernels <https://pypi.org/project/late-interaction-kernels/>`_ (Apache-2.0)
ships fused Triton MaxSim kernels with ColBERT's score: for each query token the best
document token, summed (direction ``a2b``, reduction ``sum``). With it installed,
``backend="late-interaction-kernels"`` (``model.maxsim.backend=late-interaction-kernels``)
runs in-batch scoring through it, so the same training can be timed on our kernels and on
theirs. The other directions and reductions are built from the same call: ``b2a`` swaps
the sides, ``mean`` divides by each text's number of real tokens, ``both`` averages the
two directions (two calls). CUDA tensors of float32, bf16 or fp16 only; gradients are
theirs (their default backward strategy). Their kernels multiply float32 inputs in fp16
(version 0.4.5, ``_utils.pick_compute_dtype``), where ours multiply float32 in IEEE float32:
compare the two in bf16, the dtype of mixed-precision training.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import torch

PACKAGE = "late_interaction_kernels"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def installed() -> bool:
    """Whether ``late_interaction_kernels`` can be imported."""
    return importlib.util.find_spec(PACKAGE) is not None


def check(a: torch.Tensor, b: torch.Tensor) -> None:
    """Raise a ``ValueError`` saying what is missing when the peer's kernels cannot take these inputs."""
    if not installed():
        raise ValueError("backend='late-interaction-kernels' needs that package: pip install late-interaction-kernels")
    if not (a.is_cuda and b.is_cuda):
        raise ValueError("backend='late-interaction-kernels' needs CUDA tensors")
    if a.dtype not in DTYPES or b.dtype != a.dtype:
        raise ValueError(f"backend='late-interaction-kernels' takes float32, bf16 or fp16 vectors of one dtype, "
                         f"got {a.dtype} and {b.dtype}")


def maxsim_matrix(a, a_mask, b, b_mask, direction: str, reduction: str,
                  colbert: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """``(Ba, Bb)`` float32 scores of every ``a`` text against every ``b`` text.

    Args:
        a: ``(Ba, La, D)`` and ``a_mask (Ba, La)`` bool; ``b``: ``(Bb, Lb, D)``, ``b_mask (Bb, Lb)``.
        colbert: ``(q (Nq, Lq, D), d (Nd, Ld, D), q_mask, d_mask) -> (Nq, Nd)``, ColBERT's
            score; default ``late_interaction_kernels.maxsim`` (tests pass a reference).
    """
    if colbert is None:
        from late_interaction_kernels import maxsim as colbert
    parts = []
    if direction in ("a2b", "both"):
        scores = colbert(a, b, a_mask, b_mask).float()
        parts.append(scores / a_mask.sum(dim=1, keepdim=True) if reduction == "mean" else scores)
    if direction in ("b2a", "both"):
        scores = colbert(b, a, b_mask, a_mask).float().T
        parts.append(scores / b_mask.sum(dim=1)[None, :] if reduction == "mean" else scores)
    return parts[0] if len(parts) == 1 else 0.5 * (parts[0] + parts[1])
