"""The distillation losses (lightning_modules/losses/distillation.py) against hand-written formulas.

References use Python floats and ``math`` in float64, not the torch functions under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.errors import SettingsError
from lightning_modules.losses import KLDistillationLoss, MarginMSELoss, distillation_loss
from lightning_modules.losses.distillation import NORMALIZE_EPSILON, min_max_normalize

# A toy case: two queries, three candidates each.
STUDENT = [[0.9, 0.5, 0.1], [0.2, 0.8, 0.4]]
TEACHER = [[3.0, 1.0, 0.0], [0.0, 2.0, 1.5]]


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(x) for x in row]
    total = math.fsum(exps)
    return [e / total for e in exps]


def _min_max(row: list[float]) -> list[float]:
    low, high = min(row), max(row)
    return [(x - low) / (high - low + NORMALIZE_EPSILON) for x in row]


def reference_kl(student, teacher, student_temperature=1.0, teacher_temperature=1.0, normalize=True) -> float:
    """(1 / Q) * sum_q sum_n p log(p / q), p = softmax(t / Tt), q = softmax(s' / Ts)."""
    total = 0.0
    for s, t in zip(student, teacher):
        s = _min_max(s) if normalize else s
        p = _softmax([x / teacher_temperature for x in t])
        q = _softmax([x / student_temperature for x in s])
        total += math.fsum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    return total / len(student)


def _close(got: torch.Tensor, want: float, tol: float = 1e-6) -> None:
    assert got.dtype == torch.float32 and got.dim() == 0
    assert float(got) == pytest.approx(want, abs=tol, rel=tol)


def test_min_max_normalisation_maps_each_row_to_zero_one():
    got = min_max_normalize(torch.tensor([[0.9, 0.5, 0.1], [2.0, -2.0, 0.0], [0.3, 0.3, 0.3]]))
    # By hand: (s - min) / (max - min); a constant row has no range and becomes zeros, not NaN.
    want = torch.tensor([[1.0, 0.5, 0.0], [1.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(got, want, atol=1e-7, rtol=0)


def test_kl_matches_the_hand_computed_value_on_a_two_by_three_case():
    # PyLate's recipe: the student's scores min-max normalised, temperatures 1.
    want = reference_kl(STUDENT, TEACHER)
    # The first row by hand, to pin the formula itself: s' = [1, 0.5, 0] (to 1e-8), p = softmax([3, 1, 0]).
    p = [math.exp(3) / (math.exp(3) + math.e + 1), math.e / (math.exp(3) + math.e + 1), 1 / (math.exp(3) + math.e + 1)]
    q = [math.e / (math.e + math.exp(0.5) + 1), math.exp(0.5) / (math.e + math.exp(0.5) + 1),
         1 / (math.e + math.exp(0.5) + 1)]
    first = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert reference_kl(STUDENT[:1], TEACHER[:1]) == pytest.approx(first, rel=1e-7)
    _close(KLDistillationLoss()(torch.tensor(STUDENT), torch.tensor(TEACHER)), want)


@pytest.mark.parametrize(("student_temperature", "teacher_temperature", "normalize"),
                         [(1.0, 1.0, False), (0.05, 0.05, False), (0.2, 2.0, True), (0.5, 1.0, False)])
def test_kl_temperatures_and_normalisation(student_temperature, teacher_temperature, normalize):
    loss = KLDistillationLoss(student_temperature, teacher_temperature, normalize_scores=normalize)
    want = reference_kl(STUDENT, TEACHER, student_temperature, teacher_temperature, normalize)
    _close(loss(torch.tensor(STUDENT), torch.tensor(TEACHER)), want, tol=1e-5)


def test_kl_is_zero_when_the_student_agrees_and_its_gradient_moves_towards_the_teacher():
    teacher = torch.tensor(STUDENT)
    assert float(KLDistillationLoss(normalize_scores=False)(teacher.clone(), teacher)) == pytest.approx(0, abs=1e-7)
    # The gradient of KL(p || softmax(s)) is (softmax(s) - p) / Q: a step against it raises the
    # student's score where the teacher puts more mass than the student.
    student = torch.tensor([[0.0, 0.0, 0.0]], requires_grad=True)
    KLDistillationLoss(normalize_scores=False)(student, torch.tensor([[2.0, 0.0, -2.0]])).backward()
    p = _softmax([2.0, 0.0, -2.0])
    torch.testing.assert_close(student.grad, torch.tensor([[1 / 3 - p[0], 1 / 3 - p[1], 1 / 3 - p[2]]]))


def test_margin_mse_matches_the_hand_computed_value():
    # Margins over the first candidate: teacher / 10 -> [0.2, 0.3] and [-0.2, -0.15];
    # student -> [0.4, 0.8] and [-0.6, -0.2]; squared errors 0.04, 0.25, 0.16, 0.0025.
    got = MarginMSELoss(teacher_temperature=10.0)(torch.tensor(STUDENT), torch.tensor(TEACHER))
    _close(got, (0.04 + 0.25 + 0.16 + 0.0025) / 4)
    # A constant offset between the models costs nothing; N = 2 is Hofstätter's Margin-MSE.
    offset = torch.tensor(STUDENT) + 7.0
    _close(MarginMSELoss()(offset, torch.tensor(STUDENT)), 0.0)
    _close(MarginMSELoss()(torch.tensor([[0.9, 0.1]]), torch.tensor([[0.5, 0.4]])), (0.8 - 0.1) ** 2)


def test_bad_settings_and_shapes_are_refused():
    with pytest.raises(SettingsError, match=r"model.distillation_loss='mse': expected one of \['kl', 'margin_mse'\]"):
        distillation_loss("mse")
    with pytest.raises(SettingsError, match="student_temperature must be > 0, got 0"):
        distillation_loss("kl", student_temperature=0.0)
    with pytest.raises(SettingsError, match="teacher_temperature must be > 0, got nan"):
        distillation_loss("margin_mse", teacher_temperature=float("nan"))
    assert isinstance(distillation_loss("margin_mse"), MarginMSELoss)
    with pytest.raises(ValueError, match=r"both be \(Q, N\) with N >= 1; got \(2, 3\) and \(2, 2\)"):
        KLDistillationLoss()(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="N >= 2"):
        MarginMSELoss()(torch.zeros(2, 1), torch.zeros(2, 1))
