"""The float64 reference itself (``tests/helpers/maxsim_reference.py``): a hand-computed
example, and its gradients against finite differences of its scores."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers.maxsim_inputs import (
    DIRECTIONS,
    REDUCTIONS,
    untied_inputs,
)
from tests.helpers.maxsim_reference import reference_maxsim, reference_matrix, reference_matrix_gradients


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
    a, am, b, bm = untied_inputs(100, 2, 3, 3, 4, 3)
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
