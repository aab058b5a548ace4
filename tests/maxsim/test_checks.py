"""What ``maxsim_pairwise`` and ``maxsim_matrix`` refuse (``lightning_modules/maxsim/checks.py``)."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.maxsim import maxsim_matrix, maxsim_pairwise
from tests.helpers.maxsim_inputs import (
    ok_inputs,
)


@pytest.mark.parametrize("backend", ["dense", "chunked", "triton"])
@pytest.mark.parametrize("fn", [maxsim_pairwise, maxsim_matrix], ids=["pairwise", "matrix"])
@pytest.mark.parametrize("side", ["a", "b"])
def test_fully_masked_text_raises_naming_it(fn, side, backend):
    a, am, b, bm = ok_inputs(ba=3, bb=3)
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
    a, am, b, bm = ok_inputs()
    with pytest.raises(ValueError, match=match):
        fn(a, am, b, bm, **kwargs)


@pytest.mark.parametrize("fn", [maxsim_pairwise, maxsim_matrix], ids=["pairwise", "matrix"])
def test_mismatched_dtypes_and_non_float_vectors_raise(fn):
    a, am, b, bm = ok_inputs()
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


@pytest.mark.parametrize("fn", [maxsim_pairwise, maxsim_matrix], ids=["pairwise", "matrix"])
def test_mismatched_vector_size_raises(fn):
    a, am, _, _ = ok_inputs()
    b = torch.randn(2, 4, 6)
    with pytest.raises(ValueError, match="D"):
        fn(a, am, b, torch.ones(2, 4, dtype=torch.bool))


def test_pairwise_with_different_batch_sizes_raises():
    a, am, b, bm = ok_inputs(ba=2, bb=3)
    with pytest.raises(ValueError, match="as many texts"):
        maxsim_pairwise(a, am, b, bm)
    # ... while the matrix accepts them.
    assert maxsim_matrix(a, am, b, bm).shape == (2, 3)


@pytest.mark.parametrize("fn", [maxsim_pairwise, maxsim_matrix], ids=["pairwise", "matrix"])
@pytest.mark.parametrize("mask_dtype", [torch.int64, torch.float32, torch.uint8])
@pytest.mark.parametrize("side", ["a", "b"])
def test_non_bool_mask_raises(fn, mask_dtype, side):
    a, am, b, bm = ok_inputs()
    if side == "a":
        am = am.to(mask_dtype)
    else:
        bm = bm.to(mask_dtype)
    with pytest.raises(ValueError, match=f"{side}_mask must be a bool"):
        fn(a, am, b, bm)


@pytest.mark.parametrize("fn", [maxsim_pairwise, maxsim_matrix], ids=["pairwise", "matrix"])
def test_bad_shapes_raise(fn):
    a, am, b, bm = ok_inputs()
    with pytest.raises(ValueError, match="a must be"):
        fn(a[0], am[0], b, bm)  # 2-D vectors
    with pytest.raises(ValueError, match="b_mask must be"):
        fn(a, am, b, bm[:, :-1])  # mask length != L
