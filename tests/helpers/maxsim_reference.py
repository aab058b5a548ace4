"""Brute-force MaxSim in float64: plain Python loops over texts and tokens (``math`` only, no
torch arithmetic), so that a bug in the vectorised backends cannot also be in the reference.
Scores (``reference_maxsim``, ``reference_pairwise``, ``reference_matrix``) and hard-max
gradients (``reference_matrix_gradients``); ``tests/maxsim/test_reference.py`` checks them."""

from __future__ import annotations

import math

import torch


def _dot(u, v):
    return math.fsum(x * y for x, y in zip(u, v))


def _smooth_max(values, temperature):
    """t * log(sum(exp(s / t))), written in the overflow-safe but equal form."""
    m = max(values)
    return m + temperature * math.log(math.fsum(math.exp((s - m) / temperature) for s in values))


def _one_direction_ref(q, q_mask, d, d_mask, reduction, temperature):
    """q, d: lists of token vectors (lists of floats); masks: lists of bools."""
    bests = []
    for i, qi in enumerate(q):
        if not q_mask[i]:
            continue  # masked query token: does not count
        sims = [_dot(qi, dj) for j, dj in enumerate(d) if d_mask[j]]  # unmasked doc tokens only
        assert sims, "reference needs at least one unmasked doc token"
        bests.append(max(sims) if temperature is None else _smooth_max(sims, temperature))
    assert bests, "reference needs at least one unmasked query token"
    total = math.fsum(bests)
    return total / len(bests) if reduction == "mean" else total


def reference_maxsim(a, a_mask, b, b_mask, direction, reduction, temperature):
    """MaxSim of one pair of texts. a: (La, D) list of lists, a_mask: list of bools."""
    a2b = lambda: _one_direction_ref(a, a_mask, b, b_mask, reduction, temperature)  # noqa: E731
    b2a = lambda: _one_direction_ref(b, b_mask, a, a_mask, reduction, temperature)  # noqa: E731
    if direction == "a2b":
        return a2b()
    if direction == "b2a":
        return b2a()
    assert direction == "both"
    return 0.5 * (a2b() + b2a())


def _as_lists(x, m):
    """Tensor (B, L, D) + mask (B, L) -> python float64 lists (exact values of x)."""
    return x.detach().double().tolist(), m.tolist()


def reference_pairwise(a, a_mask, b, b_mask, direction, reduction, temperature):
    A, AM = _as_lists(a, a_mask)
    B, BM = _as_lists(b, b_mask)
    return torch.tensor(
        [reference_maxsim(A[i], AM[i], B[i], BM[i], direction, reduction, temperature) for i in range(len(A))],
        dtype=torch.float64,
    )


def reference_matrix(a, a_mask, b, b_mask, direction, reduction, temperature):
    A, AM = _as_lists(a, a_mask)
    B, BM = _as_lists(b, b_mask)
    return torch.tensor(
        [
            [reference_maxsim(A[i], AM[i], B[j], BM[j], direction, reduction, temperature) for j in range(len(B))]
            for i in range(len(A))
        ],
        dtype=torch.float64,
    )


def _one_direction_grad(q, q_mask, d, d_mask, reduction, scale, grad_q, grad_d):
    """Add ``scale`` times the gradient of one direction's hard-max MaxSim into ``grad_q`` and
    ``grad_d`` (lists of token vectors): each real query token and its best real document token
    (the first of equal maxima) receive each other's vector, times the token's weight."""
    real = [i for i, m in enumerate(q_mask) if m]
    weight = scale / len(real) if reduction == "mean" else scale
    candidates = [j for j, m in enumerate(d_mask) if m]
    for i in real:
        best = max(candidates, key=lambda j: _dot(q[i], d[j]))  # max() keeps the first of equals
        for k in range(len(q[i])):
            grad_q[i][k] += weight * d[best][k]
            grad_d[best][k] += weight * q[i][k]


def reference_matrix_gradients(a, a_mask, b, b_mask, direction, reduction, weights):
    """The gradients of ``sum(weights * maxsim_matrix(a, b))`` (hard max) with respect to ``a``
    and ``b``, by Python loops in float64: ``(Ba, La, D)`` and ``(Bb, Lb, D)`` tensors."""
    A, AM = _as_lists(a, a_mask)
    B, BM = _as_lists(b, b_mask)
    W = weights.double().tolist()
    grad_a = [[[0.0] * len(token) for token in text] for text in A]
    grad_b = [[[0.0] * len(token) for token in text] for text in B]
    half = 0.5 if direction == "both" else 1.0
    for i in range(len(A)):
        for j in range(len(B)):
            if direction in ("a2b", "both"):
                _one_direction_grad(A[i], AM[i], B[j], BM[j], reduction, half * W[i][j], grad_a[i], grad_b[j])
            if direction in ("b2a", "both"):
                _one_direction_grad(B[j], BM[j], A[i], AM[i], reduction, half * W[i][j], grad_b[j], grad_a[i])
    as_tensor = lambda g, like: torch.tensor(g, dtype=torch.float64).reshape(like.shape)  # noqa: E731
    return as_tensor(grad_a, a), as_tensor(grad_b, b)


def reference_pooled_cosine(a, a_mask, b, b_mask):
    """The cosine of two texts' mean unmasked token vectors (lists of floats; masks: lists of bools)."""
    def mean(x, m):
        kept = [v for v, keep in zip(x, m) if keep]
        return [math.fsum(column) / len(kept) for column in zip(*kept)]

    u, v = mean(a, a_mask), mean(b, b_mask)
    return _dot(u, v) / math.sqrt(_dot(u, u) * _dot(v, v))


def reference_pooled_matrix(a, a_mask, b, b_mask):
    """``reference_pooled_cosine`` of every text of ``a (Ba, La, D)`` against every text of ``b``: ``(Ba, Bb)`` float64."""
    A, AM = _as_lists(a, a_mask)
    B, BM = _as_lists(b, b_mask)
    return torch.tensor([[reference_pooled_cosine(A[i], AM[i], B[j], BM[j]) for j in range(len(B))]
                         for i in range(len(A))], dtype=torch.float64)
