"""The late-interaction-kernels backend (``lightning_modules/maxsim/late_interaction_kernels.py``):
a peer's ColBERT score, composed into every direction."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from lightning_modules.maxsim import late_interaction_kernels, maxsim_matrix
from tests.helpers.maxsim_inputs import (
    DIRECTIONS,
    REDUCTIONS,
    build,
    untied_inputs,
)
from tests.helpers.maxsim_reference import reference_matrix


def _colbert_reference(q, d, q_mask, d_mask):
    """ColBERT's score as late_interaction_kernels.maxsim computes it: (Nq, Nd), a2b, sum."""
    sims = torch.einsum("ild,jmd->ijlm", q, d).masked_fill(~d_mask[None, :, None, :], float("-inf"))
    return sims.amax(dim=-1).masked_fill(~q_mask[:, None, :], 0.0).sum(dim=-1)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_late_interaction_kernels_score_is_composed_into_every_direction(direction, reduction):
    a, am, b, bm = untied_inputs(5, 3, 4, 2, 5, 6)
    a.requires_grad_(True)
    b.requires_grad_(True)
    got = late_interaction_kernels.maxsim_matrix(a, am, b, bm, direction, reduction, colbert=_colbert_reference)
    torch.testing.assert_close(got.double(), reference_matrix(a, am, b, bm, direction, reduction, None),
                               rtol=1e-6, atol=1e-6)
    want = maxsim_matrix(a, am, b, bm, direction=direction, reduction=reduction, backend="dense")
    weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(1), dtype=got.dtype)
    for mine, theirs in zip(torch.autograd.grad(got, (a, b), weights), torch.autograd.grad(want, (a, b), weights)):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-6)


def test_late_interaction_kernels_backend_says_what_is_missing(monkeypatch):
    a, am, b, bm = untied_inputs(5, 3, 4, 2, 5, 6)
    monkeypatch.setattr(late_interaction_kernels, "installed", lambda: False)
    with pytest.raises(ValueError, match="pip install late-interaction-kernels"):
        maxsim_matrix(a, am, b, bm, backend="late-interaction-kernels")
    # A smooth max needs every similarity: dense, as for the other lean backends.
    smooth = maxsim_matrix(a, am, b, bm, temperature=0.1, backend="late-interaction-kernels")
    torch.testing.assert_close(smooth, maxsim_matrix(a, am, b, bm, temperature=0.1, backend="dense"))
    monkeypatch.setattr(late_interaction_kernels, "installed", lambda: True)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        maxsim_matrix(a.float(), am, b.float(), bm, backend="late-interaction-kernels")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("late_interaction_kernels") is None,
                    reason="needs a GPU and late-interaction-kernels")
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_late_interaction_kernels_backend_matches_dense_on_a_gpu(direction):
    g = torch.Generator().manual_seed(5)
    am, bm = torch.rand(6, 7, generator=g) > 0.3, torch.rand(5, 9, generator=g) > 0.3
    am[:, 0], bm[:, 0] = True, True
    a, am, b, bm = build((6, 7, 9, 32, am, bm, 2), torch.float32)
    a, am, b, bm = a.cuda().requires_grad_(True), am.cuda(), b.cuda().requires_grad_(True), bm.cuda()
    got = maxsim_matrix(a, am, b, bm, direction=direction, backend="late-interaction-kernels")
    want = maxsim_matrix(a, am, b, bm, direction=direction, backend="dense")
    # Their kernels multiply float32 tiles in fp16 (late-interaction-kernels 0.4.5, _utils.pick_compute_dtype):
    # about 5e-4 relative per product.
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    for mine, theirs in zip(torch.autograd.grad(got.sum(), (a, b)), torch.autograd.grad(want.sum(), (a, b))):
        torch.testing.assert_close(mine, theirs, rtol=1e-3, atol=1e-3)
