"""Classification and retrieval metrics against brute force and independent libraries."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score
from torchmetrics.functional.retrieval import retrieval_recall, retrieval_reciprocal_rank

from lightning_modules.evaluation.metrics import best_threshold_metrics, metrics_at_threshold, retrieval_metrics


def _brute_force_best(scores, labels):
    """Try every threshold at and around each score with scikit-learn: the reference."""
    candidates = sorted({float(s) for s in scores} | {float(max(scores)) + 1.0})
    best_f1 = max(f1_score(labels, [int(s >= t) for s in scores], zero_division=0) for t in candidates)
    best_accuracy = max(accuracy_score(labels, [int(s >= t) for s in scores]) for t in candidates)
    return best_f1, best_accuracy


# Scores on a coarse grid so that ties happen often.
scores_and_labels = st.integers(2, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-5, 5).map(lambda x: x / 5), min_size=n, max_size=n),
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
    )
)


@settings(max_examples=100, deadline=None)
@given(scores_and_labels)
def test_best_f1_and_accuracy_match_brute_force(data):
    scores, labels = data
    result = best_threshold_metrics(torch.tensor(scores), torch.tensor(labels, dtype=torch.float32))
    best_f1, best_accuracy = _brute_force_best(scores, labels)
    assert result["f1"] == pytest.approx(best_f1, abs=1e-12)
    assert result["accuracy"] == pytest.approx(best_accuracy, abs=1e-12)
    # The thresholds reproduce the figures they were chosen for.
    at_f1 = metrics_at_threshold(torch.tensor(scores), torch.tensor(labels), result["f1_threshold"])
    at_accuracy = metrics_at_threshold(torch.tensor(scores), torch.tensor(labels), result["accuracy_threshold"])
    assert at_f1["f1"] == pytest.approx(best_f1, abs=1e-12)
    assert at_accuracy["accuracy"] == pytest.approx(best_accuracy, abs=1e-12)


@pytest.mark.parametrize("labels", [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 1.0]],
                         ids=["none-positive", "all-positive", "positive-scored-lowest"])
def test_thresholds_stay_within_the_scores_seen(labels):
    # On three pairs, the best cut can be "nothing positive" or "everything positive": its
    # threshold must still lie within the scores (once 1.83 on cosines of at most 1).
    scores = torch.tensor([0.83, 0.5, 0.2], dtype=torch.float64)
    result = best_threshold_metrics(scores, torch.tensor(labels))
    for name in ("f1_threshold", "accuracy_threshold"):
        assert 0.2 <= result[name] <= math.nextafter(0.83, 1.0), (name, result)
        at = metrics_at_threshold(scores, torch.tensor(labels), result[name])
        assert at[name.removesuffix("_threshold")] == pytest.approx(result[name.removesuffix("_threshold")])


def test_threshold_sits_between_the_classes():
    result = best_threshold_metrics(torch.tensor([0.9, 0.8, 0.3, 0.1]), torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert result == {"f1": 1.0, "f1_threshold": pytest.approx(0.55), "accuracy": 1.0,
                      "accuracy_threshold": pytest.approx(0.55)}


def _brute_force_retrieval(scores, relevant):
    """Rank each query's corpus with a Python sort; ties by corpus index."""
    mrr, recall1, recall10 = [], [], []
    for row, wanted in enumerate(relevant):
        ranking = sorted(range(len(scores[row])), key=lambda c: (-scores[row][c], c))
        hits = [rank for rank, c in enumerate(ranking[:10], start=1) if c in wanted]
        mrr.append(1 / hits[0] if hits else 0.0)
        recall1.append(len(set(ranking[:1]) & set(wanted)) / len(set(wanted)))
        recall10.append(len(set(ranking[:10]) & set(wanted)) / len(set(wanted)))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"mrr@10": mean(mrr), "recall@1": mean(recall1), "recall@10": mean(recall10)}


@pytest.mark.parametrize("corpus_size", [1, 5, 30])
def test_retrieval_metrics_match_a_python_ranking_and_torchmetrics(corpus_size):
    generator = torch.Generator().manual_seed(corpus_size)
    scores = torch.rand(12, corpus_size, generator=generator)
    relevant = [torch.randperm(corpus_size, generator=generator)[: 1 + q % 3].tolist() for q in range(12)]
    relevant = [r[: corpus_size] for r in relevant]
    result = retrieval_metrics(scores, relevant)
    expected = _brute_force_retrieval(scores.tolist(), relevant)
    for name in expected:
        assert result[name] == pytest.approx(expected[name], abs=1e-9), name
    # torchmetrics (no ties with random floats): per query, then the mean.
    targets = torch.zeros_like(scores, dtype=torch.bool)
    for row, wanted in enumerate(relevant):
        targets[row, wanted] = True
    tm_mrr = torch.stack([retrieval_reciprocal_rank(scores[q], targets[q], top_k=10) for q in range(12)]).mean()
    tm_recall = torch.stack([retrieval_recall(scores[q], targets[q], top_k=10) for q in range(12)]).mean()
    assert result["mrr@10"] == pytest.approx(float(tm_mrr), abs=1e-6)
    assert result["recall@10"] == pytest.approx(float(tm_recall), abs=1e-6)


def test_retrieval_beyond_rank_10_counts_zero_and_ties_rank_lower_index_first():
    scores = torch.zeros(1, 20)
    assert retrieval_metrics(scores, [[12]])["mrr@10"] == 0.0
    assert retrieval_metrics(scores, [[0]]) == {"mrr@10": 1.0, "recall@1": 1.0, "recall@10": 1.0}
    with pytest.raises(ValueError, match="no relevant corpus text"):
        retrieval_metrics(scores, [[]])
