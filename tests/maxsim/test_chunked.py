"""The chunked backend (``lightning_modules/maxsim/chunked.py``): blocks within the budget,
scores and gradients against the reference, no indices without a gradient."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lightning_modules.maxsim import ChunkedMaxSim, chunked, maxsim_matrix
from tests.helpers.maxsim_inputs import (
    DIRECTIONS,
    REDUCTIONS,
    FAST,
    TOL,
    ragged_batch,
    untied_inputs,
    ok_inputs,
    lean,
    check_against_reference,
)


def test_chunk_budget_sets_the_chunks_and_not_the_scores(monkeypatch):
    a, am, b, bm = ok_inputs(ba=7, bb=5, la=4, lb=6, d=8)
    blocks = []
    similarities = chunked._similarities
    monkeypatch.setattr(chunked, "_similarities",
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
    a, am, b, bm = (x.to(dtype) if x.is_floating_point() else x for x in ok_inputs(ba, bb, la, lb, dim))
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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@FAST
@given(batch=ragged_batch(paired=False), budget=st.sampled_from([1, 600, 10**9]))
def test_chunked_matches_reference_scores_and_gradients(direction, reduction, dtype, batch, budget):
    check_against_reference("chunked", direction, reduction, dtype, batch, budget)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_chunked_gradcheck(direction, reduction):
    a, am, b, bm = untied_inputs(100, 2, 3, 3, 4, 3)
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: lean("chunked", x, am, y, bm, direction, reduction), (a, b),
                                    eps=1e-6, atol=1e-6, rtol=1e-4)


def test_chunked_keeps_no_indices_without_a_gradient(monkeypatch):
    # Scoring a corpus (no gradient wanted): the int32 argmax indices, (Ba, Bb, La + Lb), are not even allocated.
    a, am, b, bm = ok_inputs(ba=3, bb=4)
    indices = []
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *args, **kw: indices.append(kw.get("dtype")) or empty(*args, **kw))
    with torch.no_grad():
        maxsim_matrix(a, am, b, bm, backend="chunked")
    assert torch.int32 not in indices
    maxsim_matrix(a, am, b.requires_grad_(True), bm, backend="chunked")
    assert indices.count(torch.int32) == 2  # the check can see them: one tensor per direction ("both")


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_chunked_takes_non_contiguous_vectors(direction):
    # ChunkedMaxSim.apply on views (maxsim_matrix hands it contiguous copies; a direct caller may not).
    a, am, b, bm = ok_inputs(ba=3, bb=4, la=5, lb=6, d=7)
    a_view = a.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_(True)  # (3, 5, 7), strides of (7, 21, 1)
    b_view = b.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)  # (4, 6, 7), strides of (42, 1, 6)
    assert not a_view.is_contiguous() and not b_view.is_contiguous()
    got = ChunkedMaxSim.apply(a_view, b_view, am, bm, direction, "mean", 1)
    grads = torch.autograd.grad(got.square().sum(), (a_view, b_view))
    want = maxsim_matrix(a_view, am, b_view, bm, direction=direction, backend="dense")
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    for g, w in zip(grads, torch.autograd.grad(want.square().sum(), (a_view, b_view))):
        torch.testing.assert_close(g, w, **TOL[torch.float32])
