"""What the MaxSim tests share: options, random ragged batches, tolerances, the device and the
triton marks, and the runs of a backend against the float64 reference."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st

from lightning_modules.maxsim import ChunkedMaxSim, maxsim_matrix, triton_installed
from tests.helpers.maxsim_reference import reference_matrix, reference_matrix_gradients

if triton_installed():  # (importing the kernels needs triton)
    from lightning_modules.maxsim.triton import host as triton_host
    from lightning_modules.maxsim.triton import settings as triton_settings
else:
    triton_host = triton_settings = None

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
        not triton_installed() or not (torch.cuda.is_available() or triton_settings.interpreting()),
        reason="triton is not installed, or there is no GPU and TRITON_INTERPRET is not 1",
    ),
)


# The interpreter runs each kernel program in Python: fewer random examples for triton, and
# fewer still without a GPU (there each example takes a second or more).
FEW = settings(max_examples=30 if torch.cuda.is_available() else 12, deadline=None)


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


def build(batch, dtype):
    ba, la, lb, d, a_mask, b_mask, seed = batch
    a = random_vectors((ba, la, d), a_mask, seed, dtype)
    b = random_vectors((b_mask.shape[0], lb, d), b_mask, seed + 1, dtype)
    return a, a_mask, b, b_mask


# float64 inputs must be exact up to rounding (1e-10); float32 to ~1e-5
# (sum reduction: at most 7 terms of magnitude <= 1, float32 eps ~ 1.2e-7).
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def untied_inputs(seed, ba, bb, la, lb, d):
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


def ok_inputs(ba=2, bb=2, la=3, lb=4, d=5):
    a = torch.randn(ba, la, d)
    b = torch.randn(bb, lb, d)
    return a, torch.ones(ba, la, dtype=torch.bool), b, torch.ones(bb, lb, dtype=torch.bool)


def has_ties(a, am, b, bm) -> bool:
    """Whether any token's best match (either direction) is shared by two tokens."""
    sims = torch.einsum("ild,jmd->ijlm", a, b).double()
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            for rows, row_mask, col_mask in ((sims[i, j], am[i], bm[j]), (sims[i, j].T, bm[j], am[i])):
                values = rows[row_mask][:, col_mask]
                if values.shape[1] >= 2 and bool((values == values.max(dim=1, keepdim=True).values).sum(1).gt(1).any()):
                    return True
    return False


def triton_matrix(*args, **kwargs):
    """``maxsim_matrix`` on the triton backend, on DEVICE; the scores come back to the CPU."""
    return maxsim_matrix(*[x.to(DEVICE) for x in args], backend="triton", **kwargs).cpu()


def lean(backend, a, am, b, bm, direction, reduction, budget=1):
    """The backend under test: ChunkedMaxSim with a tiny budget by default (one pair of texts
    a block, so the blocks are exercised), the dense einsum, or the triton kernels on DEVICE.
    Returns CPU tensors."""
    if backend == "dense":
        return maxsim_matrix(a, am, b, bm, direction=direction, reduction=reduction, backend="dense")
    if backend == "chunked":
        return ChunkedMaxSim.apply(a, b, am, bm, direction, reduction, budget)
    on = [x.to(DEVICE) for x in (a, am, b, bm)]
    return maxsim_matrix(*on, direction=direction, reduction=reduction, backend="triton").cpu()


def check_against_reference(backend, direction, reduction, dtype, batch, budget=1, exact_order=False):
    """Scores and gradients of a backend against the float64 loops, on one ragged batch."""
    a, am, b, bm = build(batch, dtype)
    a.requires_grad_(True)
    b.requires_grad_(True)
    got = lean(backend, a, am, b, bm, direction, reduction, budget)
    torch.testing.assert_close(got.double(), reference_matrix(a, am, b, bm, direction, reduction, None), **TOL[dtype])
    # Gradients where no max is tied (with D = 1 ties are common): a tie's gradient may go to
    # either token, or be split by the dense max (see the ties test).
    if has_ties(a.detach(), am, b.detach(), bm):
        return
    weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(batch[-1]), dtype=got.dtype)
    # exact_order: the triton backward's sorted path (deterministic), else its atomic one.
    with deterministic(exact_order):
        mine = torch.autograd.grad(got, (a, b), weights)
    want = reference_matrix_gradients(a.detach(), am, b.detach(), bm, direction, reduction, weights)
    for m, theirs in zip(mine, want):
        torch.testing.assert_close(m.double(), theirs, **TOL[dtype])
