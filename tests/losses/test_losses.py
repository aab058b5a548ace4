"""Tests for the training objectives (lightning_modules/losses).

References are written with Python loops and ``math`` in float64, independent of
the torch implementations under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_modules.losses import CoSENTLoss, InfoNCELoss, ScoreRegressionLoss

FAST = settings(max_examples=40, deadline=None)
# The losses compute in float32: values of O(10) carry ~1e-6 absolute rounding.
F32 = dict(rtol=1e-5, atol=1e-5)


def _close(got: torch.Tensor, want: float, **tol):
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), **(tol or F32))


# ----------------------------------------------------------------------------
# CoSENT
# ----------------------------------------------------------------------------


def reference_cosent(pred, gold, scale):
    """log(1 + sum over (i, j) with gold_i > gold_j of exp(scale * (pred_j - pred_i)))."""
    terms = [
        math.exp(scale * (pred[j] - pred[i]))
        for i in range(len(pred))
        for j in range(len(pred))
        if gold[i] > gold[j]
    ]
    return math.log(1.0 + math.fsum(terms))


def test_cosent_reference_by_hand():
    # gold 1 > 0: a single pair, term exp(s * (p1 - p0)).
    assert reference_cosent([0.9, 0.1], [1.0, 0.0], 20.0) == pytest.approx(math.log(1 + math.exp(-16)))


def test_cosent_docstring_example():
    loss = CoSENTLoss(scale=20.0)(torch.tensor([0.9, 0.1]), torch.tensor([1.0, 0.0]))
    # float32 logsumexp rounds log(1 + 1.1e-7) to the float32 grid near 1 (ulp 1.2e-7).
    _close(loss, math.log1p(math.exp(-16.0)), rtol=0, atol=2e-8)


@FAST
@given(
    data=st.integers(1, 8).flatmap(
        lambda n: st.tuples(
            st.lists(st.floats(-1, 1, allow_nan=False), min_size=n, max_size=n),
            # few distinct gold values, so ties (pairs that must be skipped) occur
            st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.5, 5.0]), min_size=n, max_size=n),
        )
    ),
    scale=st.sampled_from([1.0, 5.0, 20.0]),
)
def test_cosent_matches_reference(data, scale):
    pred, gold = data
    loss = CoSENTLoss(scale=scale)(torch.tensor(pred), torch.tensor(gold))
    assert loss.dim() == 0
    _close(loss, reference_cosent(pred, gold, scale))


def test_cosent_order_of_predictions():
    gold = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    levels = torch.tensor([-0.8, -0.4, 0.0, 0.4, 0.8])
    loss = CoSENTLoss(scale=20.0)
    ordered = loss(levels, gold)  # same order as gold
    shuffled = loss(levels[torch.tensor([2, 0, 4, 1, 3])], gold)  # partly ordered
    reversed_ = loss(levels.flip(0), gold)  # opposite order
    assert ordered < shuffled < reversed_
    for pred in (levels, levels[torch.tensor([2, 0, 4, 1, 3])], levels.flip(0)):
        _close(loss(pred, gold), reference_cosent(pred.tolist(), gold.tolist(), 20.0))


def test_cosent_only_order_of_gold_matters():
    pred = torch.tensor([0.3, -0.2, 0.7, 0.1])
    gold = torch.tensor([1.0, 0.0, 3.0, 2.0])
    loss = CoSENTLoss(scale=10.0)
    torch.testing.assert_close(loss(pred, gold), loss(pred, gold.exp() * 7 + 100))


@pytest.mark.parametrize("n", [1, 2, 5])
def test_cosent_all_gold_equal_is_zero(n):
    pred = torch.linspace(-1, 1, n).requires_grad_(True)
    gold = torch.full((n,), 3.0)
    loss = CoSENTLoss()(pred, gold)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros(n))  # zero and finite, no NaN from -inf


def test_cosent_gradient_pushes_higher_gold_up():
    pred = torch.tensor([0.2, 0.3, 0.1], requires_grad=True)
    gold = torch.tensor([5.0, 1.0, 3.0])
    loss_fn = CoSENTLoss(scale=20.0)
    loss = loss_fn(pred, gold)
    loss.backward()
    # Item 0 has the highest gold score: descending the loss raises it; item 1 has
    # the lowest: descending lowers it.
    assert pred.grad[0] < 0
    assert pred.grad[1] > 0
    # Gradient against the analytic one: d/dp_k log(1 + S) = (dS/dp_k) / (1 + S),
    # S = sum_{g_i > g_j} exp(s (p_j - p_i)).
    p, g, s = pred.detach().double().tolist(), gold.tolist(), 20.0
    S = sum(math.exp(s * (p[j] - p[i])) for i in range(3) for j in range(3) if g[i] > g[j])
    grad = [0.0, 0.0, 0.0]
    for i in range(3):
        for j in range(3):
            if g[i] > g[j]:
                e = s * math.exp(s * (p[j] - p[i]))
                grad[j] += e
                grad[i] -= e
    torch.testing.assert_close(pred.grad.double(), torch.tensor(grad, dtype=torch.float64) / (1 + S), **F32)
    # And a small step down the gradient lowers the loss.
    with torch.no_grad():
        stepped = loss_fn(pred - 1e-3 * pred.grad, gold)
    assert stepped < loss


# ----------------------------------------------------------------------------
# InfoNCE
# ----------------------------------------------------------------------------


def _xent(logits_row, target):
    m = max(logits_row)
    lse = m + math.log(math.fsum(math.exp(x - m) for x in logits_row))
    return lse - logits_row[target]


def reference_infonce(scores, temperature, symmetric, mask=None):
    """scores: list of Ba rows of Bb floats. Row i's positive is column i.
    mask[i][j] True: column j is no candidate of row i (nor row i of column j)."""
    n = len(scores)
    mask = mask or [[False] * len(row) for row in scores]
    logits = [[s / temperature for s in row] for row in scores]
    # Drop masked candidates from the list; the positive keeps its place among the rest.
    def kept(values, flags, target):
        return [v for v, f in zip(values, flags) if not f], sum(not f for f in flags[:target])
    rows = math.fsum(_xent(*kept(logits[i], mask[i], i)) for i in range(n)) / n
    if not symmetric:
        return rows
    # Column j (j < n) picks its partner a_j among the Ba a-texts only.
    cols = math.fsum(
        _xent(*kept([logits[i][j] for i in range(n)], [mask[i][j] for i in range(n)], j)) for j in range(n)
    ) / n
    return 0.5 * (rows + cols)


def test_infonce_reference_by_hand():
    # 2x2, temperature 1: row loss = log(e^a + e^b) - a.
    s = [[1.0, 0.0], [0.5, 2.0]]
    rows = (math.log(math.e + 1) - 1 + math.log(math.exp(0.5) + math.exp(2)) - 2) / 2
    cols = (math.log(math.e + math.exp(0.5)) - 1 + math.log(1 + math.exp(2)) - 2) / 2
    assert reference_infonce(s, 1.0, False) == pytest.approx(rows)
    assert reference_infonce(s, 1.0, True) == pytest.approx(0.5 * (rows + cols))


@FAST
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(0, 3)),
    seed=st.integers(0, 2**31 - 1),
    temperature=st.sampled_from([0.05, 0.3, 1.0]),
    symmetric=st.booleans(),
)
def test_infonce_matches_reference(shape, seed, temperature, symmetric):
    ba, extra = shape  # extra > 0: hard-negative columns appended after column Ba
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(ba, ba + extra, generator=g, dtype=torch.float64) * 2 - 1
    loss = InfoNCELoss(temperature=temperature, symmetric=symmetric)(scores)
    assert loss.dim() == 0
    # logits up to 1/0.05 = 20: float32 rounding ~ 20 * 6e-8 per term
    _close(loss, reference_infonce(scores.tolist(), temperature, symmetric), rtol=1e-5, atol=2e-5)


@FAST
@given(
    shape=st.tuples(st.integers(2, 5), st.integers(0, 3)),
    seed=st.integers(0, 2**31 - 1),
    symmetric=st.booleans(),
)
def test_infonce_mask_removes_false_negatives_from_the_candidates(shape, seed, symmetric):
    ba, extra = shape
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(ba, ba + extra, generator=g, dtype=torch.float64) * 2 - 1
    mask = torch.rand(ba, ba + extra, generator=g) < 0.3
    mask.fill_diagonal_(False)
    loss = InfoNCELoss(temperature=0.1, symmetric=symmetric)(scores, mask=mask)
    _close(loss, reference_infonce(scores.tolist(), 0.1, symmetric, mask.tolist()), rtol=1e-5, atol=2e-5)
    # A masked column's score cannot move the loss.
    if mask.any():
        moved = scores.clone()
        moved[mask] = 5.0
        assert InfoNCELoss(temperature=0.1, symmetric=symmetric)(moved, mask=mask) == loss


def test_infonce_mask_on_a_positive_is_refused():
    with pytest.raises(ValueError, match="False diagonal"):
        InfoNCELoss()(torch.zeros(2, 3), mask=torch.eye(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("extra", [0, 2])
def test_infonce_falls_as_diagonal_rises(symmetric, extra):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(4, 4 + extra, generator=g) * 2 - 1
    loss_fn = InfoNCELoss(temperature=0.1, symmetric=symmetric)
    eye = torch.eye(4, 4 + extra)
    losses = [loss_fn(base + alpha * eye).item() for alpha in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert all(x > y for x, y in zip(losses, losses[1:])), losses
    assert losses[-1] < 1e-3  # positives far ahead of every negative: near 0
    # Raising the diagonal instead lowers the positives: loss rises.
    assert loss_fn(base - eye).item() > losses[0]


def test_infonce_docstring_example():
    assert InfoNCELoss(temperature=0.05)(torch.eye(4)).item() < 1e-6


def test_infonce_uniform_scores_is_log_of_candidates():
    # Equal scores: every candidate has probability 1/Bb, loss = log Bb for rows and
    # log Ba for the (square) columns.
    scores = torch.full((3, 5), 0.2)
    _close(InfoNCELoss(symmetric=False)(scores), math.log(5))
    _close(InfoNCELoss(symmetric=True)(scores), 0.5 * (math.log(5) + math.log(3)))


def test_infonce_hard_negative_columns():
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.0, 0.8, -0.5]])  # Bb = 3 > Ba = 2
    loss_fn = InfoNCELoss(temperature=0.1, symmetric=False)
    _close(loss_fn(scores), reference_infonce(scores.tolist(), 0.1, False))
    # A harder hard negative (closer to the positive) raises the loss.
    harder = scores.clone()
    harder[0, 2] = 0.85
    assert loss_fn(harder) > loss_fn(scores)
    # The symmetric column term covers only the square part: hard negatives change
    # only the row term.
    sym = InfoNCELoss(temperature=0.1, symmetric=True)
    _close(sym(scores), reference_infonce(scores.tolist(), 0.1, True))
    diff_sym = (sym(harder) - sym(scores)).item()
    diff_rows = (loss_fn(harder) - loss_fn(scores)).item()
    assert diff_sym == pytest.approx(0.5 * diff_rows, rel=1e-4)


@pytest.mark.parametrize(
    "shape",
    [(3, 2), (4, 1), (3,), (2, 2, 2)],
    ids=["Bb<Ba", "Bb<Ba-2", "1-D", "3-D"],
)
def test_infonce_bad_shape_raises(shape):
    with pytest.raises(ValueError, match="scores must be"):
        InfoNCELoss()(torch.zeros(shape))


def test_infonce_scalar_scores_raises_value_error():
    with pytest.raises(ValueError, match="scores must be"):
        InfoNCELoss()(torch.tensor(0.5))


@pytest.mark.parametrize("temperature", [0.0, -0.05, -1.0])
def test_infonce_non_positive_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=temperature)


def test_infonce_nan_temperature_raises():
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=float("nan"))


# ----------------------------------------------------------------------------
# Score regression
# ----------------------------------------------------------------------------


def reference_mse(pred, gold):
    return math.fsum((p - g) ** 2 for p, g in zip(pred, gold)) / len(pred)


def test_regression_docstring_example():
    _close(ScoreRegressionLoss()(torch.tensor([0.8]), torch.tensor([1.0])), 0.04, rtol=1e-6, atol=1e-7)


@FAST
@given(
    data=st.integers(1, 8).flatmap(
        lambda n: st.tuples(
            st.lists(st.floats(-1, 1, allow_nan=False), min_size=n, max_size=n),
            st.lists(st.floats(0, 1, allow_nan=False), min_size=n, max_size=n),
        )
    )
)
def test_regression_matches_hand_mse(data):
    pred, gold = data
    loss = ScoreRegressionLoss()(torch.tensor(pred), torch.tensor(gold, dtype=torch.float64))
    assert loss.dim() == 0
    _close(loss, reference_mse(pred, gold), rtol=1e-5, atol=1e-7)


def test_regression_zero_when_equal():
    gold = torch.tensor([0.0, 0.25, 0.5, 1.0])
    pred = gold.clone().requires_grad_(True)
    loss = ScoreRegressionLoss()(pred, gold)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros(4))


def test_regression_gradient():
    pred = torch.tensor([0.2, 0.9, -0.1], requires_grad=True)
    gold = torch.tensor([0.5, 0.5, 0.0])
    ScoreRegressionLoss()(pred, gold).backward()
    # d/dp_k mean((p - g)^2) = 2 (p_k - g_k) / B
    torch.testing.assert_close(pred.grad, torch.tensor([2 * -0.3, 2 * 0.4, 2 * -0.1]) / 3)
