"""The dense MaxSim (``lightning_modules/maxsim/dense.py``) and ``maxsim_pairwise``: scores and
gradients against the float64 reference, dtypes, padding, smooth max, autocast."""

from __future__ import annotations

from functools import partial
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lightning_modules.maxsim import maxsim_matrix, maxsim_pairwise
from tests.helpers.maxsim_inputs import (
    DIRECTIONS,
    REDUCTIONS,
    TEMPERATURES,
    FAST,
    TOL,
    random_vectors,
    ragged_batch,
    build,
    untied_inputs,
    check_against_reference,
)
from tests.helpers.maxsim_reference import reference_pairwise, reference_matrix


# ----------------------------------------------------------------------------
# Random ragged batches
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@FAST
@given(batch=ragged_batch(paired=True), temperature=st.sampled_from(TEMPERATURES))
def test_pairwise_matches_reference(direction, reduction, dtype, batch, temperature):
    a, am, b, bm = build(batch, dtype)
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
    a, am, b, bm = build(batch, dtype)
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
    a, am, b, bm = build(batch, torch.float32)
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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@FAST
@given(batch=ragged_batch(paired=False))
def test_dense_matches_reference_scores_and_gradients(direction, reduction, dtype, batch):
    check_against_reference("dense", direction, reduction, dtype, batch)


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


# ----------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [None, 0.5], ids=["hard", "smooth"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("kind", ["pairwise", "matrix"])
def test_gradcheck(kind, direction, reduction, temperature):
    if kind == "pairwise":
        a, am, b, bm = untied_inputs(0, 2, 2, 3, 4, 3)
        fn = maxsim_pairwise
    else:
        a, am, b, bm = untied_inputs(100, 2, 3, 3, 4, 3)
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
