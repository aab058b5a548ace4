"""Tests for masked MaxSim (lightning_modules/maxsim.py).

Every numeric check is against ``reference_maxsim``: plain Python loops over texts
and tokens in float64 (``math`` only, no torch arithmetic), so a bug in the
vectorised code cannot also be in the reference.
"""

from __future__ import annotations

from collections import Counter
import contextlib
from functools import partial
import importlib.util
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lightning_modules import maxsim as maxsim_module
from lightning_modules.maxsim import ChunkedMaxSim, maxsim_matrix, maxsim_pairwise, triton_installed

if triton_installed():
    from lightning_modules import maxsim_triton

DIRECTIONS = ("a2b", "b2a", "both")
REDUCTIONS = ("mean", "sum")
TEMPERATURES = (None, 0.1, 1.0)
FAST = settings(max_examples=40, deadline=None)

# The triton kernels run on a GPU, or here on the CPU in Triton's interpreter
# (conftest.py sets TRITON_INTERPRET=1 where no GPU is present).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON = pytest.param(
    "triton",
    marks=pytest.mark.skipif(
        not triton_installed() or not (torch.cuda.is_available() or maxsim_triton.interpreting()),
        reason="triton is not installed, or there is no GPU and TRITON_INTERPRET is not 1",
    ),
)
# The interpreter runs each kernel program in Python: fewer random examples for triton.
FEW = settings(max_examples=30, deadline=None)


@contextlib.contextmanager
def deterministic(enabled: bool = True):
    """``torch.use_deterministic_algorithms(enabled)`` for a block (as ``Trainer(deterministic=True)``
    sets it): the triton backward then takes its sorted, atomic-free path."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


# ----------------------------------------------------------------------------
# Independent reference: Python loops in float64
# ----------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------
# Reference self-checks (so the reference itself is known to be right)
# ----------------------------------------------------------------------------


def test_reference_on_hand_computed_example():
    # a has tokens e1, e2 (+ one masked garbage token); b has tokens e1, -e2.
    a = [[1.0, 0.0], [0.0, 1.0], [50.0, 50.0]]
    am = [True, True, False]
    b = [[1.0, 0.0], [0.0, -1.0]]
    bm = [True, True]
    # a2b: e1 -> max(1, 0) = 1 ; e2 -> max(0, -1) = 0 ; mean 0.5, sum 1
    assert reference_maxsim(a, am, b, bm, "a2b", "mean", None) == 0.5
    assert reference_maxsim(a, am, b, bm, "a2b", "sum", None) == 1.0
    # b2a: e1 -> max(1, 0) = 1 ; -e2 -> max(0, -1) = 0 ; mean 0.5
    assert reference_maxsim(a, am, b, bm, "b2a", "mean", None) == 0.5
    # smooth: e1 row: t*log(e^{1/t} + e^{0}) ; e2 row: t*log(e^0 + e^{-1/t})
    t = 0.5
    expect = 0.5 * (t * math.log(math.exp(2) + 1) + t * math.log(1 + math.exp(-2)))
    assert reference_maxsim(a, am, b, bm, "a2b", "mean", t) == pytest.approx(expect, abs=1e-15)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_reference_gradients_are_finite_differences_of_the_reference_scores(direction, reduction):
    # Both loops, one against the other: central differences of the score loop, on inputs whose
    # maxima are 1e-2 apart (no pick changes within eps), equal the gradient loop.
    a, am, b, bm = _untied_inputs(100, 2, 3, 3, 4, 3)
    weights = torch.randn(2, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grads = reference_matrix_gradients(a, am, b, bm, direction, reduction, weights)
    eps = 1e-6
    for x, grad in zip((a, b), grads):
        numeric = torch.zeros_like(x)
        for index in range(x.numel()):
            flat = x.view(-1)
            saved = float(flat[index])
            values = []
            for step in (eps, -eps):
                flat[index] = saved + step
                values.append(float((weights * reference_matrix(a, am, b, bm, direction, reduction, None)).sum()))
            flat[index] = saved
            numeric.view(-1)[index] = (values[0] - values[1]) / (2 * eps)
        torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-7)
    assert grads[0][~am].abs().sum() == 0 and grads[1][~bm].abs().sum() == 0  # padding gets nothing


# ----------------------------------------------------------------------------
# Random ragged batches
# ----------------------------------------------------------------------------


@st.composite
def masks(draw, n_texts, length):
    """n_texts rows of `length` bools, at least one True per row, anywhere (not a prefix)."""
    rows = []
    for _ in range(n_texts):
        row = draw(st.lists(st.booleans(), min_size=length, max_size=length))
        if not any(row):
            row[draw(st.integers(0, length - 1))] = True
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool)


def random_vectors(shape, mask, seed, dtype, garbage=100.0):
    """Unit vectors at unmasked positions, large garbage at masked ones."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    junk = garbage * torch.randn(*shape, generator=g, dtype=torch.float64)
    x = torch.where(mask[..., None], x, junk)
    return x.to(dtype)


@st.composite
def ragged_batch(draw, paired):
    ba = draw(st.integers(1, 4))
    bb = ba if paired else draw(st.integers(1, 4))
    la = draw(st.integers(1, 7))
    lb = draw(st.integers(1, 7))
    d = draw(st.integers(1, 8))
    a_mask = draw(masks(ba, la))
    b_mask = draw(masks(bb, lb))
    seed = draw(st.integers(0, 2**31 - 1))
    return (ba, la, lb, d, a_mask, b_mask, seed)


def _build(batch, dtype):
    ba, la, lb, d, a_mask, b_mask, seed = batch
    a = random_vectors((ba, la, d), a_mask, seed, dtype)
    b = random_vectors((b_mask.shape[0], lb, d), b_mask, seed + 1, dtype)
    return a, a_mask, b, b_mask


# float64 inputs must be exact up to rounding (1e-10); float32 to ~1e-5
# (sum reduction: at most 7 terms of magnitude <= 1, float32 eps ~ 1.2e-7).
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@FAST
@given(batch=ragged_batch(paired=True), temperature=st.sampled_from(TEMPERATURES))
def test_pairwise_matches_reference(direction, reduction, dtype, batch, temperature):
    a, am, b, bm = _build(batch, dtype)
    got = maxsim_pairwise(a, am, b, bm, direction=direction, reduction=reduction, temperature=temperature)
    want = reference_pairwise(a, am, b, bm, direction, reduction, temperature)
    assert got.shape == (a.shape[0],)
    torch.testing.assert_close(got.double(), want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@FAST
@given(batch=ragged_batch(paired=False), temperature=st.sampled_from(TEMPERATURES))
def test_matrix_matches_reference(direction, reduction, dtype, batch, temperature):
    a, am, b, bm = _build(batch, dtype)
    got = maxsim_matrix(a, am, b, bm, direction=direction, reduction=reduction, temperature=temperature)
    want = reference_matrix(a, am, b, bm, direction, reduction, temperature)
    assert got.shape == (a.shape[0], b.shape[0])
    torch.testing.assert_close(got.double(), want, **TOL[dtype])


@FAST
@given(
    batch=ragged_batch(paired=True),
    direction=st.sampled_from(DIRECTIONS),
    reduction=st.sampled_from(REDUCTIONS),
    temperature=st.sampled_from(TEMPERATURES),
)
def test_pairwise_is_diagonal_of_matrix(batch, direction, reduction, temperature):
    a, am, b, bm = _build(batch, torch.float32)
    opts = dict(direction=direction, reduction=reduction, temperature=temperature)
    pair = maxsim_pairwise(a, am, b, bm, **opts)
    mat = maxsim_matrix(a, am, b, bm, **opts)
    torch.testing.assert_close(pair, torch.diagonal(mat), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fn", [maxsim_pairwise, maxsim_matrix], ids=["pairwise", "matrix"])
@pytest.mark.parametrize("temperature", [None, 0.1])
def test_float64_inputs_keep_float64_precision(fn, temperature):
    # A float64 caller (gradcheck, numerics checks) must not be silently rounded
    # to float32: the output dtype should be at least as precise as the input.
    mask = torch.ones(2, 3, dtype=torch.bool)
    a = random_vectors((2, 3, 4), mask, 0, torch.float64)
    b = random_vectors((2, 3, 4), mask, 1, torch.float64)
    assert fn(a, mask, b, mask, temperature=temperature).dtype == torch.float64


@pytest.mark.parametrize("fn", [maxsim_pairwise, maxsim_matrix], ids=["pairwise", "matrix"])
def test_float32_inputs_give_float32(fn):
    mask = torch.ones(2, 3, dtype=torch.bool)
    a = random_vectors((2, 3, 4), mask, 0, torch.float32)
    assert fn(a, mask, a, mask).dtype == torch.float32


# ----------------------------------------------------------------------------
# Hand-made cases
# ----------------------------------------------------------------------------


def test_hand_computed_pair():
    e1, e2, e3 = torch.eye(3, dtype=torch.float32)
    # a = [e1, e2, <pad>], b = [e1, (e2+e3)/sqrt2]
    pad = torch.full((3,), 7.0)
    a = torch.stack([e1, e2, pad])[None]
    am = torch.tensor([[True, True, False]])
    b = torch.stack([e1, (e2 + e3) / math.sqrt(2)])[None]
    bm = torch.tensor([[True, True]])
    c = 1 / math.sqrt(2)
    # a2b: e1 -> 1, e2 -> c ; b2a: e1 -> 1, (e2+e3)/sqrt2 -> c
    for direction in DIRECTIONS:
        got = maxsim_pairwise(a, am, b, bm, direction=direction, reduction="mean")
        torch.testing.assert_close(got, torch.tensor([(1 + c) / 2]))
        got = maxsim_pairwise(a, am, b, bm, direction=direction, reduction="sum")
        torch.testing.assert_close(got, torch.tensor([1 + c]))


@pytest.mark.parametrize("pad_value", ["zero", "garbage"])
@pytest.mark.parametrize("fn", ["pairwise", "matrix"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("temperature", [None, 0.1])
def test_all_negative_cosines_padding_never_wins(pad_value, fn, reduction, direction, temperature):
    # a's real tokens lie in the positive orthant, b's in the negative one, so every
    # real cosine is strictly negative. A zero padding vector has cosine 0 and a
    # positive garbage one a large positive cosine: either would win an unmasked max.
    g = torch.Generator().manual_seed(3)
    a = torch.rand(3, 4, 5, generator=g) + 0.1
    b = -(torch.rand(3, 6, 5, generator=g) + 0.1)
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    am = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    bm = torch.tensor([[0, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    pad = torch.zeros(5) if pad_value == "zero" else torch.full((5,), 40.0)
    a = torch.where(am[..., None], a, pad)
    b = torch.where(bm[..., None], b, pad if pad_value == "zero" else -pad)  # -pad . (-b) > 0 in b2a too
    opts = dict(direction=direction, reduction=reduction, temperature=temperature)
    if fn == "pairwise":
        got = maxsim_pairwise(a, am, b, bm, **opts)
        want = reference_pairwise(a, am, b, bm, direction, reduction, temperature)
    else:
        got = maxsim_matrix(a, am, b, bm, **opts)
        want = reference_matrix(a, am, b, bm, direction, reduction, temperature)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    if temperature is None:
        # The smooth max may exceed every cosine by up to t*log(Lb); the hard max may not.
        assert (got < 0).all(), got


def test_all_negative_cosines_b_equals_minus_a():
    # b = -a with a in the positive orthant: every a-token . b-token cosine < 0.
    g = torch.Generator().manual_seed(5)
    a = torch.rand(2, 4, 3, generator=g) + 0.1
    a = a / a.norm(dim=-1, keepdim=True)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    a = torch.where(mask[..., None], a, torch.zeros(3))
    b = -a
    for direction in DIRECTIONS:
        got = maxsim_pairwise(a, mask, b, mask, direction=direction)
        want = reference_pairwise(a, mask, b, mask, direction, "mean", None)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
        assert (got < 0).all()


def _triton_matrix(*args, **kwargs):
    """``maxsim_matrix`` on the triton backend, on DEVICE; the scores come back to the CPU."""
    return maxsim_matrix(*[x.to(DEVICE) for x in args], backend="triton", **kwargs).cpu()


@pytest.mark.parametrize(
    "fn, exact_order",
    [(maxsim_pairwise, False), (partial(maxsim_matrix, backend="dense"), False),
     (partial(maxsim_matrix, backend="chunked"), False),
     pytest.param(_triton_matrix, False, marks=TRITON.marks),
     pytest.param(_triton_matrix, True, marks=TRITON.marks)],
    ids=["pairwise", "matrix-dense", "matrix-chunked", "matrix-triton", "matrix-triton-deterministic"],
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("temperature", [None, 0.1])
def test_garbage_in_masked_tokens_changes_nothing(fn, exact_order, direction, reduction, temperature):
    g = torch.Generator().manual_seed(11)
    am = torch.tensor([[1, 0, 1, 0, 1], [0, 0, 1, 1, 0]], dtype=torch.bool)
    bm = torch.tensor([[0, 1, 1], [1, 0, 0]], dtype=torch.bool)
    a_real = random_vectors((2, 5, 4), torch.ones(2, 5, dtype=torch.bool), 1, torch.float32)
    b_real = random_vectors((2, 3, 4), torch.ones(2, 3, dtype=torch.bool), 2, torch.float32)
    opts = dict(direction=direction, reduction=reduction, temperature=temperature)

    def run(a_pad, b_pad):
        a = torch.where(am[..., None], a_real, a_pad).requires_grad_(True)
        b = torch.where(bm[..., None], b_real, b_pad).requires_grad_(True)
        with deterministic(exact_order):  # the triton backward's path is chosen when it runs
            out = fn(a, am, b, bm, **opts)
            out.sum().backward()
        return out.detach(), a.grad, b.grad

    base, ga0, gb0 = run(torch.zeros(2, 5, 4), torch.zeros(2, 3, 4))
    # Large values, and what a broken encoder or an uninitialised buffer may leave there.
    for scale in (1e3, -1e3, float("inf"), float("nan")):
        out, ga, gb = run(scale * torch.randn(2, 5, 4, generator=g), scale * torch.rand(2, 3, 4, generator=g))
        assert torch.equal(out, base), (out, base)
        # The real tokens' gradients do not depend on padding, and padding gets none. Bit for bit,
        # except from a GPU's atomic adds (triton, not deterministic): the order of the adds, so
        # the last bits of the sums, vary from run to run on the same inputs (on an H200, up to
        # 4 of 24 elements, by at most 1.2e-7); leaked padding (1e3, inf, NaN) would be far beyond 1e-6.
        atomic = fn is _triton_matrix and not exact_order and DEVICE == "cuda"
        tolerance = dict(rtol=1e-6, atol=1e-6) if atomic else dict(rtol=0, atol=0)
        torch.testing.assert_close(ga, ga0, **tolerance)
        torch.testing.assert_close(gb, gb0, **tolerance)
        assert torch.equal(ga[~am], torch.zeros_like(ga[~am]))
        assert torch.equal(gb[~bm], torch.zeros_like(gb[~bm]))
    # ... and it still equals the reference (which never looks at masked tokens).
    want_fn = reference_pairwise if fn is maxsim_pairwise else reference_matrix
    torch.testing.assert_close(
        base.double(), want_fn(a_real, am, b_real, bm, direction, reduction, temperature), rtol=1e-5, atol=1e-5
    )


# ----------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------


def _untied_inputs(seed, ba, bb, la, lb, d):
    """float64 inputs whose per-row maxima are separated by >= 1e-2 (no ties), so
    the hard max is differentiable there and finite differences (eps 1e-6) agree."""
    for s in range(seed, seed + 1000):
        g = torch.Generator().manual_seed(s)
        a = torch.randn(ba, la, d, generator=g, dtype=torch.float64)
        b = torch.randn(bb, lb, d, generator=g, dtype=torch.float64)
        am = torch.rand(ba, la, generator=g) < 0.7
        bm = torch.rand(bb, lb, generator=g) < 0.7
        am[:, 0] = True
        bm[:, -1] = True
        sims = torch.einsum("ild,jmd->ijlm", a, b)
        ok = True
        for i in range(ba):
            for j in range(bb):
                s_ij = sims[i, j]
                for rows, mrow, mcol in ((s_ij, am[i], bm[j]), (s_ij.T, bm[j], am[i])):
                    vals = rows[mrow][:, mcol]
                    if vals.shape[1] >= 2:
                        top = vals.topk(2, dim=1).values
                        ok &= bool(((top[:, 0] - top[:, 1]) > 1e-2).all())
        if ok:
            return a, am, b, bm
    raise AssertionError("no untied inputs found")


@pytest.mark.parametrize("temperature", [None, 0.5], ids=["hard", "smooth"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("kind", ["pairwise", "matrix"])
def test_gradcheck(kind, direction, reduction, temperature):
    if kind == "pairwise":
        a, am, b, bm = _untied_inputs(0, 2, 2, 3, 4, 3)
        fn = maxsim_pairwise
    else:
        a, am, b, bm = _untied_inputs(100, 2, 3, 3, 4, 3)
        fn = maxsim_matrix
    a.requires_grad_(True)
    b.requires_grad_(True)

    def f(x, y):
        return fn(x, am, y, bm, direction=direction, reduction=reduction, temperature=temperature)

    assert torch.autograd.gradcheck(f, (a, b), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_hard_max_gradient_goes_to_the_argmax_only():
    # a2b, sum: d score / d b[m] = sum of a[l] over query tokens l whose best match is m.
    a = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [9.0, 9.0]]], requires_grad=True)
    am = torch.tensor([[True, True, False]])
    b = torch.tensor([[[0.8, 0.6], [0.0, 1.0], [5.0, 5.0]]], requires_grad=True)
    bm = torch.tensor([[True, True, False]])
    # a0 . b0 = 0.8, a0 . b1 = 0 -> b0 ; a1 . b0 = 0.96, a1 . b1 = 0.8 -> b0
    maxsim_pairwise(a, am, b, bm, direction="a2b", reduction="sum").sum().backward()
    torch.testing.assert_close(b.grad[0], torch.tensor([[1.6, 0.8], [0.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(a.grad[0], torch.tensor([[0.8, 0.6], [0.8, 0.6], [0.0, 0.0]]))


# ----------------------------------------------------------------------------
# Smooth max -> hard max
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_smooth_max_tends_to_hard_max(direction):
    mask_a = torch.tensor([[1, 1, 1, 0, 1], [1, 0, 1, 1, 1]], dtype=torch.bool)
    mask_b = torch.tensor([[1, 1, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    a = random_vectors((2, 5, 8), mask_a, 21, torch.float32)
    b = random_vectors((2, 6, 8), mask_b, 22, torch.float32)
    hard = maxsim_pairwise(a, mask_a, b, mask_b, direction=direction, reduction="mean")
    torch.testing.assert_close(
        hard.double(), reference_pairwise(a, mask_a, b, mask_b, direction, "mean", None), rtol=1e-5, atol=1e-5
    )
    temps = [1.0, 0.3, 0.1, 0.03, 0.01, 1e-3]
    errs = []
    for t in temps:
        smooth = maxsim_pairwise(a, mask_a, b, mask_b, direction=direction, reduction="mean", temperature=t)
        err = smooth - hard
        # hard max <= t*logsumexp(s/t) <= hard max + t*log(n unmasked doc tokens <= 5)
        assert (err >= -1e-6).all(), (t, err)
        assert (err <= t * math.log(5) + 1e-6).all(), (t, err)
        errs.append(err.abs().max().item())
    assert errs[-1] < 1e-2
    # Error is strictly increasing in t (d/dt of t*log(1 + sum exp(-g/t)) > 0), so it
    # must fall as t falls; once it reaches float32 resolution it may stay flat.
    for big, small in zip(errs, errs[1:]):
        assert small < big or small < 1e-6, errs
    assert errs[0] > errs[1] > errs[2]


# ----------------------------------------------------------------------------
# bf16 autocast
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [maxsim_pairwise, partial(maxsim_matrix, backend="dense"), partial(maxsim_matrix, backend="chunked")],
    ids=["pairwise", "matrix-dense", "matrix-chunked"],
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("temperature", [None, 0.1])
@pytest.mark.parametrize("cast_inputs", [False, True], ids=["f32-in", "bf16-in"])
def test_bf16_autocast(fn, reduction, temperature, cast_inputs):
    L, D = 6, 16
    am = torch.tensor([[1, 1, 1, 1, 0, 1], [1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    bm = torch.tensor([[1, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    a = random_vectors((3, L, D), am, 31, torch.float32, garbage=0.0)
    b = random_vectors((3, L, D), bm, 32, torch.float32, garbage=0.0)
    opts = dict(direction="both", reduction=reduction, temperature=temperature)
    full = fn(a, am, b, bm, **opts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # Sanity: autocast really does lower einsum to bf16 here, so this test
        # exercises the bf16 path.
        assert torch.einsum("ld,md->lm", a[0], b[0]).dtype == torch.bfloat16
        x, y = (a.bfloat16(), b.bfloat16()) if cast_inputs else (a, b)
        low = fn(x, am, y, bm, **opts)
    assert low.dtype == torch.float32
    # Tolerance: bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 2e-3). A
    # cosine of two unit vectors computed from bf16-rounded inputs and rounded to
    # bf16 again is off by at most ~3 * 2^-9 ~ 6e-3 (plus accumulation error), so
    # 1e-2 per cosine. Max, smooth max and mean do not amplify an absolute error;
    # a sum of up to L=6 maxima can add it up L times.
    per_cosine = 1e-2
    atol = per_cosine * (L if reduction == "sum" else 1)
    torch.testing.assert_close(low, full, rtol=0, atol=atol)


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------


def _ok_inputs(ba=2, bb=2, la=3, lb=4, d=5):
    a = torch.randn(ba, la, d)
    b = torch.randn(bb, lb, d)
    return a, torch.ones(ba, la, dtype=torch.bool), b, torch.ones(bb, lb, dtype=torch.bool)


@pytest.mark.parametrize("backend", ["dense", "chunked", "triton"])
@pytest.mark.parametrize("fn", [maxsim_pairwise, maxsim_matrix], ids=["pairwise", "matrix"])
@pytest.mark.parametrize("side", ["a", "b"])
def test_fully_masked_text_raises_naming_it(fn, side, backend):
    a, am, b, bm = _ok_inputs(ba=3, bb=3)
    if side == "a":
        am[1] = False
    else:
        bm[2] = False
    which = "[1] of a" if side == "a" else "[2] of b"
    with pytest.raises(ValueError, match=r"no token") as info:
        fn(a, am, b, bm, backend=backend)
    assert which in str(info.value)


@pytest.mark.parametrize("fn", [maxsim_pairwise, maxsim_matrix], ids=["pairwise", "matrix"])
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(direction="ab"), "direction"),
        (dict(direction="A2B"), "direction"),
        (dict(reduction="max"), "reduction"),
        (dict(reduction=None), "reduction"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(temperature="0.1"), "temperature"),
    ],
)
def test_bad_options_raise(fn, kwargs, match):
    a, am, b, bm = _ok_inputs()
    with pytest.raises(ValueError, match=match):
        fn(a, am, b, bm, **kwargs)


@pytest.mark.parametrize("fn", [maxsim_pairwise, maxsim_matrix], ids=["pairwise", "matrix"])
def test_mismatched_dtypes_and_non_float_vectors_raise(fn):
    a, am, b, bm = _ok_inputs()
    with pytest.raises(ValueError, match=r"share a dtype.*float32 and torch.float64"):
        fn(a, am, b.double(), bm)
    with pytest.raises(ValueError, match="b must hold floating-point token vectors, got torch.int64"):
        fn(a, am, b.long(), bm)
    with pytest.raises(ValueError, match="D = 0"):
        fn(a[..., :0], am, b[..., :0], bm)
    # Under autocast the products run in its dtype, as the einsum would: mixed inputs are fine there.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = fn(a, am, b.bfloat16(), bm)
    assert torch.isfinite(mixed).all()


@pytest.mark.parametrize("backend", ["dense", "chunked", TRITON])
def test_empty_batches_give_empty_score_matrices(backend):
    a, am, b, bm = (x.to(DEVICE) if backend == "triton" else x for x in _ok_inputs(ba=2, bb=3))
    for x, xm, y, ym, shape in ((a[:0], am[:0], b, bm, (0, 3)), (a, am, b[:0], bm[:0], (2, 0))):
        x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        scores = maxsim_matrix(x, xm, y, ym, backend=backend)
        assert scores.shape == shape
        grads = torch.autograd.grad(scores.sum(), (x, y), allow_unused=True)
        assert all(g is None or not g.any() for g in grads)


def test_chunk_budget_sets_the_chunks_and_not_the_scores(monkeypatch):
    a, am, b, bm = _ok_inputs(ba=7, bb=5, la=4, lb=6, d=8)
    blocks = []
    similarities = maxsim_module._similarities
    monkeypatch.setattr(maxsim_module, "_similarities",
                        lambda x, y, out: blocks.append((len(x), len(y))) or similarities(x, y, out))
    # A pair of texts costs La * Lb * 4 bytes of float32 similarities in the forward pass: 96 here.
    small = maxsim_matrix(a, am, b, bm, backend="chunked", chunk_budget_bytes=14 * 96)  # all of a, 2 b texts
    assert blocks == [(7, 2), (7, 2), (7, 1)]
    blocks.clear()
    large = maxsim_matrix(a, am, b, bm, backend="chunked", chunk_budget_bytes=10**6)
    assert blocks == [(7, 5)]
    blocks.clear()
    # Under one column of b (7 pairs) each column is cut along a, evenly: 4 + 3 for 5 pairs, not 5 + 2.
    cut = maxsim_matrix(a, am, b, bm, backend="chunked", chunk_budget_bytes=5 * 96)
    assert blocks == [(4, 1), (3, 1)] * 5
    torch.testing.assert_close(small, large, **TOL[torch.float32])  # products of other shapes: last bits
    torch.testing.assert_close(cut, large, **TOL[torch.float32])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="chunk_budget_bytes must be a positive integer"):
            maxsim_matrix(a, am, b, bm, backend="chunked", chunk_budget_bytes=bad)


class _Allocations(TorchDispatchMode):
    """Records ``(shape, bytes)`` of every tensor an operation allocates: not views, not in-place results."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func._schema.is_mutable and all(r.alias_info is None for r in func._schema.returns):
            self.made += [(tuple(t.shape), t.numel() * t.element_size())
                          for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("frozen", [None, "a", "b"])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("budget", [1, 700])
def test_chunked_stays_within_the_budget(budget, direction, frozen, dtype):
    # Many queries against a few documents (scoring a corpus cuts columns along a). Every tensor
    # a block allocates, forward or backward, stays within the budget, down to one pair of texts;
    # tensors over it are the few whole-batch ones (scores, indices, gradient sums), made once.
    (ba, la, dim), (bb, lb) = (11, 4, 6), (5, 9)
    a, am, b, bm = (x.to(dtype) if x.is_floating_point() else x for x in _ok_inputs(ba, bb, la, lb, dim))
    am[3, 2:], bm[1, 5:] = False, False
    a.requires_grad_(frozen != "a"), b.requires_grad_(frozen != "b")
    forward, backward = _Allocations(), _Allocations()
    with forward:
        scores = ChunkedMaxSim.apply(a, b, am, bm, direction, "mean", budget)
    weights = torch.randn(ba, bb)
    trained = [x for x in (a, b) if x.requires_grad]
    with backward:
        grads = torch.autograd.grad(scores, trained, weights)
    pair_bytes = {forward: la * lb * a.element_size(), backward: max(la, lb) * dim * 4}  # similarities; vectors
    whole_batch = {(ba, bb), (ba, bb, la), (ba, bb, lb), (ba * la, dim), (bb * lb, dim), (ba, la, dim), (bb, lb, dim),
                   (ba, la), (bb, lb)}
    for record, pair in pair_bytes.items():
        over = Counter(shape for shape, size in record.made if size > max(budget, pair))
        assert set(over) <= whole_batch, over
        # At most 3 of a shape (the token weights take three operations): one made per block would
        # appear 55 times at budget 1 (11 x 5 pairs), one made per column of b 5 times.
        assert max(over.values(), default=0) <= 3, over
    if dtype == torch.float32:  # against dense: the same scores and gradients
        want_scores = maxsim_matrix(a, am, b, bm, direction=direction, backend="dense")
        torch.testing.assert_close(scores, want_scores, **TOL[dtype])
        for got, want in zip(grads, torch.autograd.grad(want_scores, trained, weights)):
            torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("fn", [maxsim_pairwise, maxsim_matrix], ids=["pairwise", "matrix"])
def test_mismatched_vector_size_raises(fn):
    a, am, _, _ = _ok_inputs()
    b = torch.randn(2, 4, 6)
    with pytest.raises(ValueError, match="D"):
        fn(a, am, b, torch.ones(2, 4, dtype=torch.bool))


def test_pairwise_with_different_batch_sizes_raises():
    a, am, b, bm = _ok_inputs(ba=2, bb=3)
    with pytest.raises(ValueError, match="as many texts"):
        maxsim_pairwise(a, am, b, bm)
    # ... while the matrix accepts them.
    assert maxsim_matrix(a, am, b, bm).shape == (2, 3)


@pytest.mark.parametrize("fn", [maxsim_pairwise, maxsim_matrix], ids=["pairwise", "matrix"])
@pytest.mark.parametrize("mask_dtype", [torch.int64, torch.float32, torch.uint8])
@pytest.mark.parametrize("side", ["a", "b"])
def test_non_bool_mask_raises(fn, mask_dtype, side):
    a, am, b, bm = _ok_inputs()
    if side == "a":
        am = am.to(mask_dtype)
    else:
        bm = bm.to(mask_dtype)
    with pytest.raises(ValueError, match=f"{side}_mask must be a bool"):
        fn(a, am, b, bm)


@pytest.mark.parametrize("fn", [maxsim_pairwise, maxsim_matrix], ids=["pairwise", "matrix"])
def test_bad_shapes_raise(fn):
    a, am, b, bm = _ok_inputs()
    with pytest.raises(ValueError, match="a must be"):
        fn(a[0], am[0], b, bm)  # 2-D vectors
    with pytest.raises(ValueError, match="b_mask must be"):
        fn(a, am, b, bm[:, :-1])  # mask length != L


# ----------------------------------------------------------------------------
# The chunked and triton backends: the same scores and gradients in O(B^2 (La + Lb)) memory
# ----------------------------------------------------------------------------

def _lean(backend, a, am, b, bm, direction, reduction, budget=1):
    """The backend under test: ChunkedMaxSim with a tiny budget by default (one pair of texts
    a block, so the blocks are exercised), the dense einsum, or the triton kernels on DEVICE.
    Returns CPU tensors."""
    if backend == "dense":
        return maxsim_matrix(a, am, b, bm, direction=direction, reduction=reduction, backend="dense")
    if backend == "chunked":
        return ChunkedMaxSim.apply(a, b, am, bm, direction, reduction, budget)
    on = [x.to(DEVICE) for x in (a, am, b, bm)]
    return maxsim_matrix(*on, direction=direction, reduction=reduction, backend="triton").cpu()


def _check_against_reference(backend, direction, reduction, dtype, batch, budget=1, exact_order=False):
    """Scores and gradients of a backend against the float64 loops, on one ragged batch."""
    a, am, b, bm = _build(batch, dtype)
    a.requires_grad_(True)
    b.requires_grad_(True)
    got = _lean(backend, a, am, b, bm, direction, reduction, budget)
    torch.testing.assert_close(got.double(), reference_matrix(a, am, b, bm, direction, reduction, None), **TOL[dtype])
    # Gradients where no max is tied (with D = 1 ties are common): a tie's gradient may go to
    # either token, or be split by the dense max (see the ties test).
    if _has_ties(a.detach(), am, b.detach(), bm):
        return
    weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(batch[-1]), dtype=got.dtype)
    # exact_order: the triton backward's sorted path (deterministic), else its atomic one.
    with deterministic(exact_order):
        mine = torch.autograd.grad(got, (a, b), weights)
    want = reference_matrix_gradients(a.detach(), am, b.detach(), bm, direction, reduction, weights)
    for m, theirs in zip(mine, want):
        torch.testing.assert_close(m.double(), theirs, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@FAST
@given(batch=ragged_batch(paired=False), budget=st.sampled_from([1, 600, 10**9]))
def test_chunked_matches_reference_scores_and_gradients(direction, reduction, dtype, batch, budget):
    _check_against_reference("chunked", direction, reduction, dtype, batch, budget)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@FAST
@given(batch=ragged_batch(paired=False))
def test_dense_matches_reference_scores_and_gradients(direction, reduction, dtype, batch):
    _check_against_reference("dense", direction, reduction, dtype, batch)


@pytest.mark.parametrize("backend", [TRITON])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@FEW
@given(batch=ragged_batch(paired=False), exact_order=st.booleans())
def test_triton_matches_reference_scores_and_gradients(direction, reduction, batch, exact_order, backend):
    # float32 only: the kernels take float32/bf16/fp16 (float64 is handed to chunked, tested below).
    # Both backward paths: atomic adds (the default) and the deterministic one.
    _check_against_reference(backend, direction, reduction, torch.float32, batch, exact_order=exact_order)


def _has_ties(a, am, b, bm) -> bool:
    """Whether any token's best match (either direction) is shared by two tokens."""
    sims = torch.einsum("ild,jmd->ijlm", a, b).double()
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            for rows, row_mask, col_mask in ((sims[i, j], am[i], bm[j]), (sims[i, j].T, bm[j], am[i])):
                values = rows[row_mask][:, col_mask]
                if values.shape[1] >= 2 and bool((values == values.max(dim=1, keepdim=True).values).sum(1).gt(1).any()):
                    return True
    return False


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_chunked_gradcheck(direction, reduction):
    a, am, b, bm = _untied_inputs(100, 2, 3, 3, 4, 3)
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: _lean("chunked", x, am, y, bm, direction, reduction), (a, b),
                                    eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("backend", ["chunked", TRITON])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_ties_negative_cosines_single_tokens_and_batch_of_one(direction, backend):
    dtype = torch.float64 if backend == "chunked" else torch.float32
    atol = 1e-12 if dtype == torch.float64 else 1e-6
    # b's tokens 0 and 2 are the same vector: a tie for every token of a. Every cosine is negative.
    a = torch.nn.functional.normalize(torch.tensor([[[1.0, 0.2], [0.8, 0.6]]], dtype=dtype), dim=-1)
    tied = torch.nn.functional.normalize(torch.tensor([-1.0, -0.1], dtype=dtype), dim=0)
    b = torch.stack([tied, -torch.nn.functional.normalize(torch.tensor([0.1, 1.0], dtype=dtype), dim=0), tied])[None]
    am, bm = torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool)
    for x, xm, y, ym in ((a, am, b, bm), (a[:, :1], am[:, :1], b[:, :1], bm[:, :1])):  # and length-1 texts
        x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        got = _lean(backend, x, xm, y, ym, direction, "mean")
        want = maxsim_matrix(x, xm, y, ym, direction=direction, backend="dense")
        torch.testing.assert_close(got, want, rtol=0, atol=atol)
        torch.testing.assert_close(got.double(), reference_matrix(x, xm, y, ym, direction, "mean", None),
                                   rtol=0, atol=atol)
        assert float(got) < 0
        (ga, gb), (wa, wb) = torch.autograd.grad(got.sum(), (x, y)), torch.autograd.grad(want.sum(), (x, y))
        torch.testing.assert_close(ga, wa, rtol=0, atol=atol)  # the tied vectors are equal: same gradient for a
        # A tie is a valid subgradient either way: these backends give it to one token, the dense max
        # splits it; what the tied tokens receive in total is the same.
        if y.shape[1] == 3:
            torch.testing.assert_close(gb[0, 0] + gb[0, 2], wb[0, 0] + wb[0, 2], rtol=0, atol=atol)
            torch.testing.assert_close(gb[0, 1], wb[0, 1], rtol=0, atol=atol)


@pytest.mark.parametrize("backend", ["chunked", TRITON])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bf16_inputs_stay_within_bf16_rounding_of_float32(reduction, backend):
    L, D = 6, 16
    am = torch.tensor([[1, 1, 1, 1, 0, 1], [1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    bm = torch.tensor([[1, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    a = random_vectors((3, L, D), am, 31, torch.float32, garbage=0.0).requires_grad_(True)
    b = random_vectors((3, L, D), bm, 32, torch.float32, garbage=0.0).requires_grad_(True)
    full = maxsim_matrix(a, am, b, bm, reduction=reduction, backend="dense")
    a16, b16 = a.detach().bfloat16().requires_grad_(True), b.detach().bfloat16().requires_grad_(True)
    low = _lean(backend, a16, am, b16, bm, "both", reduction)
    assert low.dtype == torch.float32  # maxima summed in float32
    # As in test_bf16_autocast: 1e-2 per cosine from bf16's 8-bit significand, times L for a sum.
    torch.testing.assert_close(low, full, rtol=0, atol=1e-2 * (L if reduction == "sum" else 1))
    # Gradients: a sum of a few unit vectors, each rounded to bf16 (relative 2^-8 = 4e-3 per
    # component) and times a weight; 2e-2 absolute leaves room for a rounding-flipped argmax
    # only where two cosines are within bf16's resolution, which these seeds do not have.
    weights = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    for mine, theirs in zip(torch.autograd.grad(low, (a16, b16), weights), torch.autograd.grad(full, (a, b), weights)):
        assert mine.dtype == torch.bfloat16
        torch.testing.assert_close(mine.float(), theirs, rtol=0, atol=2e-2 * (L if reduction == "sum" else 1))


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of ``fn()``."""
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(saved)


@pytest.mark.parametrize("backend", ["chunked", TRITON])
def test_lean_backends_keep_a_fraction_of_the_dense_memory_for_backward(backend):
    # The CPU case: B = 128 texts, 32 x 180 tokens, D = 128 (here B = 32 to stay fast:
    # the ratio grows with Lb and does not depend on B).
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(32, 32, 128, generator=g), dim=-1).to(DEVICE).requires_grad_(True)
    b = torch.nn.functional.normalize(torch.randn(32, 180, 128, generator=g), dim=-1).to(DEVICE).requires_grad_(True)
    am = torch.ones(32, 32, dtype=torch.bool, device=DEVICE)
    bm = torch.ones(32, 180, dtype=torch.bool, device=DEVICE)
    dense = _saved_bytes(lambda: maxsim_matrix(a, am, b, bm, backend="dense"))
    lean = _saved_bytes(lambda: maxsim_matrix(a, am, b, bm, backend=backend))
    similarity_tensor = 32 * 32 * 32 * 180 * 4
    assert dense >= similarity_tensor  # autograd keeps at least the (B, B, La, Lb) similarities
    # What is kept: the inputs, int32 (chunked) or int16 (triton) indices of the best matches,
    # (B, B, La + Lb), per-token weights (B, La + Lb), and (chunked, whose inputs have their
    # padding zeroed first) the bool masks.
    assert lean <= a.numel() * 4 + b.numel() * 4 + 32 * 32 * (32 + 180) * 4 + 32 * (32 + 180) * (4 + 1)
    assert lean * 10 <= dense, (lean, dense)


@pytest.mark.parametrize("backend", ["chunked", TRITON])
def test_lean_backends_follow_autocast_like_dense(backend):
    # Under bf16 autocast the dense einsum multiplies in bf16; the triton kernels and chunked's
    # products into its buffer (which autocast does not reach) cast their float32 inputs the
    # same way (token vectors leave F.normalize in float32 even then).
    a, am, b, bm = _build((4, 6, 9, 32, torch.ones(4, 6, dtype=torch.bool), torch.ones(3, 9, dtype=torch.bool), 5),
                          torch.float32)
    a, am, b, bm = a.to(DEVICE), am.to(DEVICE), b.to(DEVICE), bm.to(DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        got = maxsim_matrix(a, am, b, bm, backend=backend)
        dense = maxsim_matrix(a, am, b, bm, backend="dense")
    # The dense einsum rounds each cosine to bf16 (8 bits: 4e-3 near 1) before the max; the
    # kernels keep the float32 sum of the bf16 products. Mean of maxima: within that rounding.
    # (chunked rounds as dense does, but its products may sum in another order.)
    torch.testing.assert_close(got, dense.float(), rtol=0, atol=8e-3)
    assert not torch.equal(got, maxsim_matrix(a, am, b, bm, backend=backend))  # it did take the bf16 path
    # ... and exactly what the kernels give the same inputs cast to bf16 by hand.
    torch.testing.assert_close(got, maxsim_matrix(a.bfloat16(), am, b.bfloat16(), bm, backend=backend), rtol=0, atol=0)


@pytest.mark.parametrize("backend", [TRITON])
# Every kernel of the deterministic path runs in direction "both": the interpreter is slow.
@pytest.mark.parametrize("direction, exact_order", [("a2b", False), ("b2a", False), ("both", False), ("both", True)],
                         ids=["a2b", "b2a", "both", "both-deterministic"])
@pytest.mark.parametrize("ba, la, bb, lb, d", [(20, 10, 4, 150, 200), (3, 150, 2, 64, 24)], ids=["many", "long-a"])
def test_triton_tiles_cover_many_texts_long_texts_and_wide_vectors(ba, la, bb, lb, d, direction, exact_order, backend,
                                                                   monkeypatch):
    """Shapes beyond one tile in every dimension: several blocks of a texts (backward blocks
    that straddle texts), b texts of 150 tokens (3 tiles of 64, the last partial; in the
    second case 64 tokens, one tile), D = 200 (float32 forward, sm_90's setting: 4 tiles of
    64, the last partial; D = 24 is one, with the a block loaded once; the setting before
    sm_90 has a test of its own), the loops over texts split over programs in the
    backward pass (as on a GPU with many multiprocessors), long lists of tokens that picked
    one token summed in parts; and a texts of 150 tokens, one per forward program. Forward
    programs take several b texts each, the last group short. Both backward paths: atomic
    adds and the deterministic one."""
    monkeypatch.setattr(maxsim_triton, "_parallel_units", lambda x: 16)
    monkeypatch.setattr(maxsim_triton, "COLLECT_PART", 32)  # long source lists cut into parts, as on long texts
    # Forward programs of 3 b texts (the last of 4 texts alone), as on a GPU with a large batch.
    monkeypatch.setattr(maxsim_triton, "_b_texts_per_program", lambda x, bb, a_blocks: min(bb, 3))
    g = torch.Generator().manual_seed(7)
    am, bm = torch.rand(ba, la, generator=g) < 0.8, torch.rand(bb, lb, generator=g) < 0.8
    am[:, 3], bm[:, lb - 1] = True, True  # every text keeps a token; the last tile's last token is real
    a = random_vectors((ba, la, d), am, 1, torch.float64)
    b = random_vectors((bb, lb, d), bm, 2, torch.float64)
    a64, b64 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    want = maxsim_matrix(a64, am, b64, bm, direction=direction, backend="dense")
    a32, b32 = a.float().to(DEVICE).requires_grad_(True), b.float().to(DEVICE).requires_grad_(True)
    got = maxsim_matrix(a32, am.to(DEVICE), b32, bm.to(DEVICE), direction=direction, backend=backend)
    torch.testing.assert_close(got.cpu().double(), want, **TOL[torch.float32])
    with torch.no_grad():  # no gradient wanted: no argmax indices written, the same scores
        torch.testing.assert_close(maxsim_matrix(a32, am.to(DEVICE), b32, bm.to(DEVICE), direction=direction,
                                                 backend=backend), got.detach())
    weights = torch.randn(ba, bb, generator=g, dtype=torch.float64)
    with deterministic(exact_order):
        mine = torch.autograd.grad(got, (a32, b32), weights.float().to(DEVICE))
    theirs = torch.autograd.grad(want, (a64, b64), weights)
    for m, t in zip(mine, theirs):
        torch.testing.assert_close(m.cpu().double(), t, **TOL[torch.float32])


@pytest.mark.parametrize("backend", [TRITON])
@pytest.mark.parametrize("ba, la, bb, lb, d", [(4, 10, 2, 150, 200), (2, 150, 2, 64, 24)], ids=["wide", "long-a"])
def test_triton_float32_forward_before_sm_90_takes_its_narrow_setting(ba, la, bb, lb, d, backend, monkeypatch):
    """float32 forward programs on a chip before sm_90 (an A100), which the interpreter does
    not otherwise run (it takes sm_90's setting): 32 dims a step on 8 warps (D = 200: 7 steps,
    the last partial) and, for a program of 256 rows (a 150-token a text), 32-token b tiles
    (64 tokens: two). Scores and gradients ("both") against float64."""
    monkeypatch.setattr(maxsim_triton, "_arch", lambda x: 80)
    configs, config = [], maxsim_triton.forward_config
    monkeypatch.setattr(maxsim_triton, "forward_config", lambda *args: configs.append(config(*args)) or configs[-1])
    g = torch.Generator().manual_seed(3)
    am, bm = torch.rand(ba, la, generator=g) < 0.8, torch.rand(bb, lb, generator=g) < 0.8
    am[:, 0], bm[:, lb - 1] = True, True
    a = random_vectors((ba, la, d), am, 1, torch.float64)
    b = random_vectors((bb, lb, d), bm, 2, torch.float64)
    a64, b64 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    want = maxsim_matrix(a64, am, b64, bm, direction="both", backend="dense")
    a32, b32 = a.float().to(DEVICE).requires_grad_(True), b.float().to(DEVICE).requires_grad_(True)
    got = maxsim_matrix(a32, am.to(DEVICE), b32, bm.to(DEVICE), direction="both", backend=backend)
    launched = configs[-1]
    assert (launched["BLOCK_D"], launched["num_warps"]) == (32, 8)
    assert launched["BLOCK_M"] == (32 if la > 128 else 64)
    torch.testing.assert_close(got.cpu().double(), want, **TOL[torch.float32])
    weights = torch.randn(ba, bb, generator=g, dtype=torch.float64)
    mine = torch.autograd.grad(got, (a32, b32), weights.float().to(DEVICE))
    for m, t in zip(mine, torch.autograd.grad(want, (a64, b64), weights)):
        torch.testing.assert_close(m.cpu().double(), t, **TOL[torch.float32])


@pytest.mark.parametrize("backend", ["chunked", TRITON])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_scores_may_be_changed_in_place_before_backward(direction, backend):
    # A loss may scale the score matrix in place (scores *= scale): nothing autograd keeps may be that tensor.
    a, am, b, bm = _build((3, 4, 5, 16, torch.ones(3, 4, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool), 9),
                          torch.float32)
    a, b = a.to(DEVICE).requires_grad_(True), b.to(DEVICE).requires_grad_(True)
    am, bm = am.to(DEVICE), bm.to(DEVICE)
    scores = maxsim_matrix(a, am, b, bm, direction=direction, backend=backend)
    scores.mul_(20.0)
    got = torch.autograd.grad(scores.sum(), (a, b))
    want = torch.autograd.grad(20.0 * maxsim_matrix(a, am, b, bm, direction=direction, backend="dense").sum(), (a, b))
    for mine, theirs in zip(got, want):
        torch.testing.assert_close(mine, theirs, **TOL[torch.float32])


@pytest.mark.parametrize("backend", [TRITON])
def test_triton_backward_path_follows_torch_deterministic_mode(backend, monkeypatch):
    # Atomic adds by default; the sorted, atomic-free path under use_deterministic_algorithms
    # (the interpreter runs programs one at a time, so only a GPU can show the atomics' reordering).
    taken = []
    for name in ("_atomic_backward", "_sorted_backward"):
        original = getattr(maxsim_triton, name)
        monkeypatch.setattr(maxsim_triton, name, lambda *args, _f=original, _n=name: taken.append(_n) or _f(*args))
    a, am, b, bm = _build((3, 4, 5, 8, torch.ones(3, 4, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool), 4),
                          torch.float32)
    a, b = a.to(DEVICE).requires_grad_(True), b.to(DEVICE).requires_grad_(True)
    am, bm = am.to(DEVICE), bm.to(DEVICE)
    grads = {}
    for exact_order in (False, True):
        with deterministic(exact_order):
            grads[exact_order] = torch.autograd.grad(maxsim_matrix(a, am, b, bm, backend=backend).sum(), (a, b))
    assert taken == ["_atomic_backward", "_sorted_backward"]
    for atomic, ordered in zip(grads[False], grads[True]):
        torch.testing.assert_close(atomic, ordered, rtol=1e-6, atol=1e-6)  # the same sums, in another order


def test_chunked_keeps_no_indices_without_a_gradient(monkeypatch):
    # Scoring a corpus (no gradient wanted): the int32 argmax indices, (Ba, Bb, La + Lb), are not even allocated.
    a, am, b, bm = _ok_inputs(ba=3, bb=4)
    indices = []
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *args, **kw: indices.append(kw.get("dtype")) or empty(*args, **kw))
    with torch.no_grad():
        maxsim_matrix(a, am, b, bm, backend="chunked")
    assert torch.int32 not in indices
    maxsim_matrix(a, am, b.requires_grad_(True), bm, backend="chunked")
    assert indices.count(torch.int32) == 2  # the check can see them: one tensor per direction ("both")


@pytest.mark.parametrize("backend", ["chunked", TRITON])
@pytest.mark.parametrize("exact_order", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("frozen", ["a", "b"])
def test_lean_backward_against_a_frozen_side(frozen, exact_order, backend):
    # Queries trained against a precomputed (frozen) corpus, and the reverse: only one gradient.
    a, am, b, bm = _build((4, 5, 7, 16, torch.ones(4, 5, dtype=torch.bool), torch.ones(3, 7, dtype=torch.bool), 8),
                          torch.float32)
    am[1, 3:], bm[2, :2] = False, False
    side = "b" if frozen == "a" else "a"
    on = {"a": a.to(DEVICE), "b": b.to(DEVICE)}
    trained = on[side] = on[side].requires_grad_(True)
    am, bm = am.to(DEVICE), bm.to(DEVICE)
    with deterministic(exact_order):
        scores = maxsim_matrix(on["a"], am, on["b"], bm, backend=backend)
        (got,) = torch.autograd.grad(scores.sum(), trained)
    (want,) = torch.autograd.grad(maxsim_matrix(on["a"], am, on["b"], bm, backend="dense").sum(), trained)
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    with torch.no_grad():  # nothing to differentiate: the same scores
        torch.testing.assert_close(maxsim_matrix(on["a"], am, on["b"], bm, backend=backend), scores.detach())


@pytest.mark.parametrize("backend", [TRITON])
@pytest.mark.parametrize("exact_order", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("direction, dtype, trained, one_hot_a2b", [
    ("a2b", torch.bfloat16, "ab", True), ("a2b", torch.float16, "ab", True), ("b2a", torch.bfloat16, "ab", True),
    ("both", torch.bfloat16, "ab", True), ("both", torch.bfloat16, "a", True), ("both", torch.bfloat16, "b", True),
    ("a2b", torch.bfloat16, "ab", False), ("both", torch.bfloat16, "ab", False),
], ids=["a2b-bf16", "a2b-fp16", "b2a-bf16", "both-bf16", "both-bf16-b-frozen", "both-bf16-a-frozen",
        "a2b-bf16-default-b-side", "both-bf16-default-b-side"])
def test_triton_16_bit_gradients_are_float32_sums_with_the_one_hot_picked_sides(direction, dtype, trained, one_hot_a2b,
                                                                                exact_order, backend, monkeypatch):
    """16-bit inputs: the picked side of each direction (a2b's b side with ``ONEHOT_A2B`` on,
    b2a's a side) as products of exact 0/1 matrices with the other side's vectors
    (``_onehot_kernel``), on both backward paths; in "both", each direction's other side
    added to the other's one-hot sums, and with one side frozen (no gradient: only the other
    side's kernels run). "default-b-side": a2b's b side as the defaults sum it for 16-bit
    inputs (atomic adds, or the sorted sums), beside b2a's one-hot sums.
    The backward's float32 gradients, before the cast to the inputs' dtype, must be the float64
    sums over the same 16-bit values to float32 accuracy. The shapes cover 3 b texts in programs
    of 2 (the last group short), 150 tokens in tiles of 64 (the last partial) and in chunks of 16
    (b2a's sources), a texts of 40 tokens in chunks of 16 and in tiles of 64 (the last partial),
    NaN padding on both sides, the mean's per-text weights, D = 200 in tiles of 128, and the
    source texts split over programs (as on a GPU with many multiprocessors)."""
    monkeypatch.setattr(maxsim_triton, "_parallel_units", lambda x: 16)
    config = maxsim_triton.backward_config
    monkeypatch.setattr(maxsim_triton, "backward_config",
                        lambda *args: {**config(*args), "ONEHOT_CHUNK": 16, "ONEHOT_A2B": one_hot_a2b})
    calls, results = [], []
    original = maxsim_triton._onehot_grad
    monkeypatch.setattr(maxsim_triton, "_onehot_grad",
                        lambda *args, **kwargs: calls.append(kwargs["a2b"]) or original(*args, **kwargs))
    for name in ("_atomic_backward", "_sorted_backward"):  # their float32 results, before the cast
        path = getattr(maxsim_triton, name)
        monkeypatch.setattr(maxsim_triton, name, lambda *args, _f=path: results.append(_f(*args)) or results[-1])
    ba, la, bb, lb, d = 5, 40, 3, 150, 200
    g = torch.Generator().manual_seed(11)
    am, bm = torch.rand(ba, la, generator=g) < 0.7, torch.rand(bb, lb, generator=g) < 0.8
    am[:, 0], bm[:, 0] = True, True
    a = random_vectors((ba, la, d), am, 5, torch.float64).to(dtype)
    b = random_vectors((bb, lb, d), bm, 6, torch.float64).to(dtype)
    a[~am], b[~bm] = float("nan"), float("nan")  # padding that must never be read: 0 x NaN is NaN
    weights = torch.randn(ba, bb, generator=g, dtype=torch.float64)
    x, y = a.to(DEVICE).requires_grad_("a" in trained), b.to(DEVICE).requires_grad_("b" in trained)
    inputs = [v for v, side in ((x, "a"), (y, "b")) if side in trained]
    with deterministic(exact_order):
        got = maxsim_matrix(x, am.to(DEVICE), y, bm.to(DEVICE), direction=direction, reduction="mean",
                            backend=backend)
        grads = torch.autograd.grad(got, inputs, weights.float().to(DEVICE))
    # One call per direction whose picked side is trained: a2b=True sums a2b's b side, a2b=False b2a's a side.
    assert sorted(calls) == sorted(([True] if one_hot_a2b and direction != "b2a" and "b" in trained else [])
                                   + ([False] if direction != "a2b" and "a" in trained else []))
    x64, y64 = a.double().requires_grad_(True), b.double().requires_grad_(True)
    want = maxsim_matrix(x64, am, y64, bm, direction=direction, reduction="mean", backend="dense")
    exact = dict(zip("ab", torch.autograd.grad(want, (x64, y64), weights)))
    full = dict(zip("ab", results[0]))  # the backward's float32 sums; None for a frozen side
    assert [side for side in "ab" if full[side] is not None] == list(trained)
    for mine, side in zip(grads, trained):
        torch.testing.assert_close(full[side].cpu().double().view_as(exact[side]), exact[side], **TOL[torch.float32])
        assert mine.dtype == dtype
        torch.testing.assert_close(mine.cpu(), full[side].cpu().view_as(exact[side]).to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("backend", [TRITON])
@pytest.mark.parametrize("a2b, n_sources, ls, n_targets, lt", [(True, 5, 40, 3, 70), (False, 3, 70, 5, 20),
                                                                (False, 3, 40, 5, 70)],
                         ids=["a2b-b-side", "b2a-a-side", "b2a-long-a-texts"])
@pytest.mark.parametrize("units", [1, 2, 3, 16])
def test_triton_one_hot_kernel_sums_splits_of_several_texts_and_reads_nothing_past_the_inputs(
        units, a2b, n_sources, ls, n_targets, lt, backend, monkeypatch):
    # _onehot_grad alone against a float64 loop, for each side it serves: a2b's b side (targets:
    # 3 b texts of 70 tokens, 2 a program, in 2 tiles of 64; sources: 5 a texts of 40 tokens)
    # and b2a's a side (targets: 5 a texts of 20 tokens, 4 a program, the last group short, or
    # of 70 tokens, 2 a program in 2 tiles; sources: 3 b texts), in chunks of 16 source tokens.
    # With 1, 2, 3 or 16 multiprocessors the source texts fall into 1 to 5 splits, several texts
    # a split. Every input is a view into a larger buffer whose tail holds huge values, so a
    # read past its end shows.
    monkeypatch.setattr(maxsim_triton, "_parallel_units", lambda x: units)
    g = torch.Generator().manual_seed(units)
    ba, bb = (n_sources, n_targets) if a2b else (n_targets, n_sources)
    d, spare = 24, 2
    mask = torch.rand(n_sources + spare, ls, generator=g) < 0.7
    mask[:, 0] = True
    weight = mask.float() / mask.float().sum(-1, keepdim=True)
    vectors = torch.randn(n_sources + spare, ls, d, generator=g).where(mask[..., None], 0.0).bfloat16()  # 0 padding
    # best and grad are (Ba, Bb, ...) as the forward pass writes them; their spare rows follow the last a text.
    picks = torch.randint(0, lt, (ba + spare, bb, ls), generator=g, dtype=torch.int16)
    grad = torch.randn(ba + spare, bb, generator=g)
    weight[n_sources:], vectors[n_sources:], picks[ba:], grad[ba:] = 1e3, 1e3, lt - 1, 1e3
    sources, w = vectors[:n_sources].to(DEVICE), weight[:n_sources].to(DEVICE)
    best, gr = picks[:ba].to(DEVICE), grad[:ba].to(DEVICE)
    config = {**maxsim_triton.backward_config(lt, d, torch.bfloat16, "both"), "ONEHOT_CHUNK": 16}
    got = maxsim_triton._onehot_grad(sources, w, best, gr, n_targets, lt, a2b=a2b, config=config).cpu()
    want = torch.zeros(n_targets, lt, d, dtype=torch.float64)
    for i in range(n_sources):
        for j in range(n_targets):
            pair = (i, j) if a2b else (j, i)  # (a text, b text)
            for s_ in range(ls):
                if mask[i, s_]:
                    want[j, int(picks[pair][s_])] += float(grad[pair]) * float(weight[i, s_]) * vectors[i, s_].double()
    torch.testing.assert_close(got.double(), want.view(n_targets * lt, d), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", [TRITON])
def test_triton_float32_gradients_do_not_take_the_one_hot_kernel(backend, monkeypatch):
    # Tensor cores would take float32 vectors as TF32 (or be slow in IEEE float32): atomic adds or sorted sums instead.
    monkeypatch.setattr(maxsim_triton, "_onehot_grad", lambda *args, **kwargs: pytest.fail("one-hot kernel on float32"))
    a, am, b, bm = _build((3, 4, 5, 16, torch.ones(3, 4, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool), 4),
                          torch.float32)
    a, b = a.to(DEVICE).requires_grad_(True), b.to(DEVICE).requires_grad_(True)
    for exact_order in (False, True):
        with deterministic(exact_order):
            torch.autograd.grad(maxsim_matrix(a, am.to(DEVICE), b, bm.to(DEVICE), backend=backend).sum(), (a, b))


@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU: the interpreter runs programs one at a time, so no add races")
@pytest.mark.parametrize("backend", [TRITON])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])  # bf16: b2a's one-hot side
def test_triton_gradients_are_deterministic(backend, dtype):
    # A shape where atomics would race (64 texts of 300 tokens).
    ba, la, bb, lb, d = 64, 32, 64, 300, 128
    g = torch.Generator().manual_seed(3)
    a, am, b, bm = _build((ba, la, lb, d, torch.rand(ba, la, generator=g) > 0.2, torch.rand(bb, lb, generator=g) > 0.2,
                           3), torch.float32)
    am[:, 0], bm[:, 0] = True, True
    a, b = a.to(DEVICE, dtype).requires_grad_(True), b.to(DEVICE, dtype).requires_grad_(True)
    am, bm = am.to(DEVICE), bm.to(DEVICE)
    with deterministic():
        runs = [torch.autograd.grad(maxsim_matrix(a, am, b, bm, backend=backend).sum(), (a, b)) for _ in range(2)]
        for first, second in zip(*runs):
            assert torch.equal(first, second)  # bit for bit: no atomics in the deterministic backward kernels


def test_auto_uses_chunked_for_large_similarity_tensors_and_dense_for_small(monkeypatch):
    import lightning_modules.maxsim as maxsim

    a, am, b, bm = _untied_inputs(100, 2, 3, 3, 4, 3)
    a.requires_grad_(True)
    assert "Chunked" not in type(maxsim_matrix(a, am, b, bm).grad_fn).__name__
    monkeypatch.setattr(maxsim, "AUTO_DENSE_LIMIT_BYTES", 0)
    assert "Chunked" in type(maxsim_matrix(a, am, b, bm).grad_fn).__name__
    # A smooth max needs every similarity: chunked and triton fall back to dense.
    for backend in ("chunked", "triton"):
        smooth = maxsim_matrix(a, am, b, bm, temperature=0.1, backend=backend)
        assert "MaxSim" not in type(smooth.grad_fn).__name__
    with pytest.raises(ValueError, match="backend must be one of"):
        maxsim_matrix(a, am, b, bm, backend="fused")


@pytest.mark.parametrize("backend", ["dense", "chunked", TRITON])
def test_float64_stays_float64_under_autocast(backend):
    # Autocast leaves float64 alone (the dense einsum stays float64), and so must the
    # backends that cast for it themselves (triton hands float64 to chunked).
    a, am, b, bm = (x.to(DEVICE) for x in _untied_inputs(100, 2, 3, 3, 4, 3))  # float64
    a.requires_grad_(True)
    want = maxsim_matrix(a, am, b, bm, backend=backend)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        got = maxsim_matrix(a, am, b, bm, backend=backend)
        (grad,) = torch.autograd.grad(got.sum(), a)
    assert got.dtype == grad.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_chunked_takes_non_contiguous_vectors(direction):
    # ChunkedMaxSim.apply on views (maxsim_matrix hands it contiguous copies; a direct caller may not).
    a, am, b, bm = _ok_inputs(ba=3, bb=4, la=5, lb=6, d=7)
    a_view = a.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_(True)  # (3, 5, 7), strides of (7, 21, 1)
    b_view = b.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)  # (4, 6, 7), strides of (42, 1, 6)
    assert not a_view.is_contiguous() and not b_view.is_contiguous()
    got = ChunkedMaxSim.apply(a_view, b_view, am, bm, direction, "mean", 1)
    grads = torch.autograd.grad(got.square().sum(), (a_view, b_view))
    want = maxsim_matrix(a_view, am, b_view, bm, direction=direction, backend="dense")
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    for g, w in zip(grads, torch.autograd.grad(want.square().sum(), (a_view, b_view))):
        torch.testing.assert_close(g, w, **TOL[torch.float32])


@pytest.mark.parametrize("backend", [TRITON])
def test_triton_hands_over_what_the_kernels_do_not_take(backend, monkeypatch):
    a, am, b, bm = _untied_inputs(100, 2, 3, 3, 4, 3)  # float64: handed to chunked
    a = a.to(DEVICE).requires_grad_(True)
    am, b, bm = am.to(DEVICE), b.to(DEVICE), bm.to(DEVICE)
    assert "Chunked" in type(maxsim_matrix(a, am, b, bm, backend=backend).grad_fn).__name__
    monkeypatch.setattr(maxsim_triton, "MAX_A_TOKENS", 2)  # a texts of 3 tokens are now "too long"
    assert "Chunked" in type(maxsim_matrix(a.float(), am, b.float(), bm, backend=backend).grad_fn).__name__
    monkeypatch.undo()
    assert "Triton" in type(maxsim_matrix(a.float(), am, b.float(), bm, backend=backend).grad_fn).__name__
    # A document of 65,536 tokens: more blocks than a grid's second axis allows.
    long = torch.nn.functional.normalize(torch.ones(1, 65536, a.shape[-1], device=DEVICE), dim=-1)
    long_mask = torch.ones(1, 65536, dtype=torch.bool, device=DEVICE)
    assert "Chunked" in type(maxsim_matrix(a.float(), am, long, long_mask, backend=backend).grad_fn).__name__
    if DEVICE == "cpu":  # outside the interpreter, CPU tensors are a configuration error
        monkeypatch.setattr(maxsim_triton, "interpreting", lambda: False)
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            maxsim_matrix(a.float(), am, b.float(), bm, backend=backend)


@pytest.mark.parametrize("backend", ["chunked", TRITON])
def test_contrastive_training_step_is_the_same_with_either_backend(minilm_path, backend):
    """The LightningModule's InfoNCE step through model.maxsim.backend: same loss and gradients as dense."""
    from lightning_modules.data.collate import ContrastiveCollator
    from lightning_modules.module import MaxSimModule

    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    items = [{"a": [101, 2000 + i, 102], "b": [101, 3000 + i, 3100 + i, 102], "a_key": i, "b_key": i,
              "negatives": [(100 + i, [101, 4000 + i, 102])]} for i in range(6)]
    batch = ContrastiveCollator(0, {i: {i} for i in range(6)}, max_negatives=1)(items)
    batch = {key: value.to(DEVICE) if torch.is_tensor(value) else value for key, value in batch.items()}
    results = []
    for name in ("dense", backend):
        torch.manual_seed(0)
        module = MaxSimModule(minilm_path, projection_dim=8, random_init=True, config_overrides=tiny,
                              maxsim={"backend": name}).to(DEVICE)
        module.eval()  # no dropout: both runs see the same network
        loss = module._contrastive_loss(batch)
        grads = torch.autograd.grad(loss, [p for p in module.parameters() if p.requires_grad])
        results.append((loss.detach(), grads))
    (loss_d, grads_d), (loss_c, grads_c) = results
    torch.testing.assert_close(loss_c, loss_d, rtol=1e-5, atol=1e-6)
    for gc, gd in zip(grads_c, grads_d):
        torch.testing.assert_close(gc, gd, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------
# The late-interaction-kernels backend: a peer's ColBERT score, composed into every direction
# ----------------------------------------------------------------------------


def _colbert_reference(q, d, q_mask, d_mask):
    """ColBERT's score as late_interaction_kernels.maxsim computes it: (Nq, Nd), a2b, sum."""
    sims = torch.einsum("ild,jmd->ijlm", q, d).masked_fill(~d_mask[None, :, None, :], float("-inf"))
    return sims.amax(dim=-1).masked_fill(~q_mask[:, None, :], 0.0).sum(dim=-1)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_late_interaction_kernels_score_is_composed_into_every_direction(direction, reduction):
    from lightning_modules import maxsim_lik

    a, am, b, bm = _untied_inputs(5, 3, 4, 2, 5, 6)
    a.requires_grad_(True)
    b.requires_grad_(True)
    got = maxsim_lik.maxsim_matrix(a, am, b, bm, direction, reduction, colbert=_colbert_reference)
    torch.testing.assert_close(got.double(), reference_matrix(a, am, b, bm, direction, reduction, None),
                               rtol=1e-6, atol=1e-6)
    want = maxsim_matrix(a, am, b, bm, direction=direction, reduction=reduction, backend="dense")
    weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(1), dtype=got.dtype)
    for mine, theirs in zip(torch.autograd.grad(got, (a, b), weights), torch.autograd.grad(want, (a, b), weights)):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-6)


def test_late_interaction_kernels_backend_says_what_is_missing(monkeypatch):
    from lightning_modules import maxsim_lik

    a, am, b, bm = _untied_inputs(5, 3, 4, 2, 5, 6)
    monkeypatch.setattr(maxsim_lik, "installed", lambda: False)
    with pytest.raises(ValueError, match="pip install late-interaction-kernels"):
        maxsim_matrix(a, am, b, bm, backend="late-interaction-kernels")
    # A smooth max needs every similarity: dense, as for the other lean backends.
    smooth = maxsim_matrix(a, am, b, bm, temperature=0.1, backend="late-interaction-kernels")
    torch.testing.assert_close(smooth, maxsim_matrix(a, am, b, bm, temperature=0.1, backend="dense"))
    monkeypatch.setattr(maxsim_lik, "installed", lambda: True)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        maxsim_matrix(a.float(), am, b.float(), bm, backend="late-interaction-kernels")


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("late_interaction_kernels") is None,
                    reason="needs a GPU and late-interaction-kernels")
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_late_interaction_kernels_backend_matches_dense_on_a_gpu(direction):
    g = torch.Generator().manual_seed(5)
    am, bm = torch.rand(6, 7, generator=g) > 0.3, torch.rand(5, 9, generator=g) > 0.3
    am[:, 0], bm[:, 0] = True, True
    a, am, b, bm = _build((6, 7, 9, 32, am, bm, 2), torch.float32)
    a, am, b, bm = a.cuda().requires_grad_(True), am.cuda(), b.cuda().requires_grad_(True), bm.cuda()
    got = maxsim_matrix(a, am, b, bm, direction=direction, backend="late-interaction-kernels")
    want = maxsim_matrix(a, am, b, bm, direction=direction, backend="dense")
    # Their kernels multiply float32 tiles in fp16 (late-interaction-kernels 0.4.5, _utils.pick_compute_dtype):
    # about 5e-4 relative per product.
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    for mine, theirs in zip(torch.autograd.grad(got.sum(), (a, b)), torch.autograd.grad(want.sum(), (a, b))):
        torch.testing.assert_close(mine, theirs, rtol=1e-3, atol=1e-3)
