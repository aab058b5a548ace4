"""Classification and retrieval metrics against brute force and independent libraries."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score
from torchmetrics.functional.retrieval import retrieval_recall, retrieval_reciprocal_rank

from lightning_modules.evaluation.metrics import best_threshold_metrics, metrics_at_threshold, ranking_metrics


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


@pytest.mark.parametrize("corpus_size", [1, 5, 30])
def test_ranking_metrics_of_binary_judgements_match_torchmetrics(corpus_size):
    """What a set of pairs reports (each query's text_b relevant, grade 1), with Recall@1 too."""
    generator = torch.Generator().manual_seed(corpus_size)
    scores = torch.rand(12, corpus_size, generator=generator)
    relevant = [torch.randperm(corpus_size, generator=generator)[: 1 + q % 3].tolist() for q in range(12)]
    ranked = torch.tensor([sorted(range(corpus_size), key=lambda c: -scores[q, c])[:100] for q in range(12)])
    result = ranking_metrics(ranked, [{c: 1 for c in r} for r in relevant], recall_at=(1, 10))
    # torchmetrics (no ties with random floats): per query, then the mean.
    targets = torch.zeros_like(scores, dtype=torch.bool)
    for row, wanted in enumerate(relevant):
        targets[row, wanted] = True
    for name, reference in (("mrr@10", lambda q: retrieval_reciprocal_rank(scores[q], targets[q], top_k=10)),
                            ("recall@1", lambda q: retrieval_recall(scores[q], targets[q], top_k=1)),
                            ("recall@10", lambda q: retrieval_recall(scores[q], targets[q], top_k=10))):
        assert result[name] == pytest.approx(float(torch.stack([reference(q) for q in range(12)]).mean()), abs=1e-6)
