"""Which backend runs (``lightning_modules/maxsim/dispatch.py``): ``auto``'s choice, the fallbacks
of the lean backends, and the triton backend's hand-overs."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.maxsim import dispatch, maxsim_matrix
from tests.helpers.maxsim_inputs import (
    DEVICE,
    TRITON,
    untied_inputs,
    triton_settings,
)


def test_auto_uses_chunked_for_large_similarity_tensors_and_dense_for_small(monkeypatch):
    a, am, b, bm = untied_inputs(100, 2, 3, 3, 4, 3)
    a.requires_grad_(True)
    assert "Chunked" not in type(maxsim_matrix(a, am, b, bm).grad_fn).__name__
    monkeypatch.setattr(dispatch, "AUTO_DENSE_LIMIT_BYTES", 0)
    assert "Chunked" in type(maxsim_matrix(a, am, b, bm).grad_fn).__name__
    # A smooth max needs every similarity: chunked and triton fall back to dense.
    for backend in ("chunked", "triton"):
        smooth = maxsim_matrix(a, am, b, bm, temperature=0.1, backend=backend)
        assert "MaxSim" not in type(smooth.grad_fn).__name__
    with pytest.raises(ValueError, match="backend must be one of"):
        maxsim_matrix(a, am, b, bm, backend="fused")


@pytest.mark.parametrize("backend", [TRITON])
def test_triton_hands_over_what_the_kernels_do_not_take(backend, monkeypatch):
    a, am, b, bm = untied_inputs(100, 2, 3, 3, 4, 3)  # float64: handed to chunked
    a = a.to(DEVICE).requires_grad_(True)
    am, b, bm = am.to(DEVICE), b.to(DEVICE), bm.to(DEVICE)
    assert "Chunked" in type(maxsim_matrix(a, am, b, bm, backend=backend).grad_fn).__name__
    monkeypatch.setattr(triton_settings, "MAX_A_TOKENS", 2)  # a texts of 3 tokens are now "too long"
    assert "Chunked" in type(maxsim_matrix(a.float(), am, b.float(), bm, backend=backend).grad_fn).__name__
    monkeypatch.undo()
    assert "Triton" in type(maxsim_matrix(a.float(), am, b.float(), bm, backend=backend).grad_fn).__name__
    # A document of 65,536 tokens: more blocks than a grid's second axis allows.
    long = torch.nn.functional.normalize(torch.ones(1, 65536, a.shape[-1], device=DEVICE), dim=-1)
    long_mask = torch.ones(1, 65536, dtype=torch.bool, device=DEVICE)
    assert "Chunked" in type(maxsim_matrix(a.float(), am, long, long_mask, backend=backend).grad_fn).__name__
    if DEVICE == "cpu":  # outside the interpreter, CPU tensors are a configuration error
        monkeypatch.setattr(triton_settings, "interpreting", lambda: False)
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            maxsim_matrix(a.float(), am, b.float(), bm, backend=backend)
