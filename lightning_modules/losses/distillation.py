"""Score distillation: the student's MaxSim scores of each query's candidates taught by a teacher's.

Both losses take ``(Q, N)`` score matrices: row ``q`` holds query ``q``'s scores of its own ``N``
candidate documents, the student's (MaxSim, any direction or reduction) and the teacher's (any
model's scores: a cross-encoder's logits, another late-interaction model's MaxSim, ...). The
distillation collator puts the teacher's best-scored candidate in column 0
(``lightning_modules.data.collate.DistillationCollator``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.errors import SettingsError

# Keeps min-max normalisation finite when a query's scores are all equal (they become all 0).
NORMALIZE_EPSILON = 1e-8
LOSSES = ("kl", "margin_mse")


def min_max_normalize(scores: torch.Tensor, epsilon: float = NORMALIZE_EPSILON) -> torch.Tensor:
    """Each row of ``scores (Q, N)`` mapped to [0, 1]: ``(s - min_row) / (max_row - min_row + epsilon)``.

    PyLate's normalisation of the student's scores in its ``Distillation`` loss: whatever the score's
    range (a mean MaxSim in [-1, 1], a summed one in [0, query tokens]), each query's best candidate
    gets 1 and its worst 0, so that the softmax over them has a fixed scale. The gradient flows through
    the row's minimum and maximum too."""
    low = scores.min(dim=-1, keepdim=True).values
    high = scores.max(dim=-1, keepdim=True).values
    return (scores - low) / (high - low + epsilon)


def _check_temperature(name: str, value: float) -> float:
    if not value > 0:  # also refuses NaN
        raise SettingsError(f"{name} must be > 0, got {value}")
    return float(value)


class KLDistillationLoss(nn.Module):
    """KL(teacher || student) of the distributions over each query's candidates, averaged over queries.

    With ``s`` the student's scores and ``t`` the teacher's, both ``(Q, N)``::

        s' = min_max_normalize(s) if normalize_scores else s
        p  = softmax(t / teacher_temperature)          # over each row's N candidates
        q  = softmax(s' / student_temperature)
        loss = (1 / Q) * sum_q sum_n p[q, n] * (log p[q, n] - log q[q, n])

    (``KLDivLoss(reduction="batchmean")``: summed over candidates, averaged over queries.) Only the
    student's scores are normalised, as PyLate does: the teacher's are logits whose sharpness
    ``teacher_temperature`` sets. ``normalize_scores=True`` with both temperatures 1 is PyLate's
    ``Distillation`` loss, the recipe for cross-encoder scores such as ``ms-marco-en-bge``'s; for a
    teacher that scores like the student (another MaxSim model, mean reduction, scores in [-1, 1]),
    ``normalize_scores=False`` and one small temperature for both (0.05, the contrastive recipe's)
    let the student match the teacher's distribution exactly. No ``T**2`` factor (Hinton's): the
    temperatures set the targets, and the learning rate the step size.

    Inputs:
        student: ``(Q, N)`` the student's scores (with gradients).
        teacher: ``(Q, N)`` the teacher's scores of the same candidates, in the same order.

    Returns a scalar, 0 when the two distributions agree.

    Example::

        loss = KLDistillationLoss()(student_scores, teacher_scores)

    Citation: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015), arXiv:1503.02531;
    the ColBERTv2 recipe, Santhanam et al. (2022), arXiv:2112.01488; PyLate's ``losses.Distillation``.
    """

    def __init__(self, student_temperature: float = 1.0, teacher_temperature: float = 1.0,
                 normalize_scores: bool = True) -> None:
        super().__init__()
        self.student_temperature = _check_temperature("student_temperature", student_temperature)
        self.teacher_temperature = _check_temperature("teacher_temperature", teacher_temperature)
        self.normalize_scores = normalize_scores

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check_shapes(student, teacher, least=1)
        student = student.float()
        if self.normalize_scores:
            student = min_max_normalize(student)
        log_q = F.log_softmax(student / self.student_temperature, dim=-1)
        log_p = F.log_softmax(teacher.float() / self.teacher_temperature, dim=-1)
        return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


class MarginMSELoss(nn.Module):
    """Mean squared error between the student's and the teacher's margins over each query's first candidate.

    With ``s`` and ``t`` the scores ``(Q, N)`` divided by their temperatures, the margins are
    ``m[q, j] = x[q, 0] - x[q, j]`` for ``j = 1 .. N - 1`` (column 0 being the teacher's best-scored
    candidate, as the distillation collator arranges), and::

        loss = (1 / (Q * (N - 1))) * sum_q sum_{j >= 1} (ms[q, j] - mt[q, j]) ** 2

    With ``N = 2`` (a positive and a negative) this is Hofstätter et al.'s Margin-MSE. Only the
    differences count, so a constant offset between the two models' scores costs nothing, but their
    scale does: divide the scores so that both margins are on one scale (for a teacher whose scores
    span ten times the student's, ``teacher_temperature=10``).

    Inputs:
        student: ``(Q, N)``, teacher: ``(Q, N)``, ``N >= 2``.

    Returns a scalar.

    Citation: Hofstätter et al., "Improving Efficient Neural Ranking Models with Cross-Architecture
    Knowledge Distillation" (2020), arXiv:2010.02666.
    """

    def __init__(self, student_temperature: float = 1.0, teacher_temperature: float = 1.0) -> None:
        super().__init__()
        self.student_temperature = _check_temperature("student_temperature", student_temperature)
        self.teacher_temperature = _check_temperature("teacher_temperature", teacher_temperature)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check_shapes(student, teacher, least=2)
        student = student.float() / self.student_temperature
        teacher = teacher.float() / self.teacher_temperature
        return F.mse_loss(student[:, :1] - student[:, 1:], teacher[:, :1] - teacher[:, 1:])


def distillation_loss(name: str, student_temperature: float = 1.0, teacher_temperature: float = 1.0,
                      normalize_scores: bool = True) -> nn.Module:
    """The loss ``name`` (``kl`` or ``margin_mse``) with these settings (``normalize_scores``: KL only).

    Raises:
        SettingsError: an unknown name, or a temperature that is not > 0.
    """
    if name == "kl":
        return KLDistillationLoss(student_temperature, teacher_temperature, normalize_scores)
    if name == "margin_mse":
        return MarginMSELoss(student_temperature, teacher_temperature)
    raise SettingsError(f"model.distillation_loss={name!r}: expected one of {list(LOSSES)}")


def _check_shapes(student: torch.Tensor, teacher: torch.Tensor, least: int) -> None:
    if student.dim() != 2 or student.shape != teacher.shape or student.shape[1] < least:
        raise ValueError(f"student and teacher scores must both be (Q, N) with N >= {least}; got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
