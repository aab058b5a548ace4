"""Evaluation metrics beyond correlations: pair classification and ranking.

Plain functions over tensors, so that they can be checked against brute force.
"""

from __future__ import annotations

import math

import torch


def best_threshold_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Best F1 and best accuracy over all decision thresholds, and those thresholds.

    A pair is predicted positive when its score is ``>= threshold``. Candidate
    thresholds sit halfway between consecutive distinct scores (or at the lowest,
    or just above the highest), so a threshold chosen on one split transfers to
    another and stays within the range of MaxSim scores.

    Args:
        scores: ``(N,)`` similarities.
        labels: ``(N,)`` 0/1.

    Returns ``f1``, ``f1_threshold``, ``accuracy``, ``accuracy_threshold`` (F1 and
    accuracy in [0, 1]).
    """
    scores, labels = scores.double().flatten(), labels.double().flatten()
    order = torch.argsort(scores, descending=True)
    scores, labels = scores[order], labels[order]
    # Predicting the top k as positive, k = 0..N: true and false positives.
    true_positives = torch.cat([labels.new_zeros(1), labels.cumsum(0)])
    false_positives = torch.cat([labels.new_zeros(1), (1 - labels).cumsum(0)])
    positives, n = labels.sum(), len(labels)
    # Only cuts between distinct scores are reachable with a threshold.
    cut = torch.ones(n + 1, dtype=torch.bool)
    cut[1:n] = scores[1:] != scores[:-1]
    f1 = 2 * true_positives / (true_positives + false_positives + positives).clamp(min=1)
    accuracy = (true_positives + (n - positives - false_positives)) / n
    f1[~cut], accuracy[~cut] = -1.0, -1.0
    return {
        "f1": float(f1.max()),
        "f1_threshold": _threshold_at(scores, int(f1.argmax())),
        "accuracy": float(accuracy.max()),
        "accuracy_threshold": _threshold_at(scores, int(accuracy.argmax())),
    }


def _threshold_at(sorted_scores: torch.Tensor, k: int) -> float:
    """The threshold that predicts exactly the top ``k`` (of descending ``sorted_scores``) as
    positive (``score >= threshold``), always within the range of the scores seen: never
    above what MaxSim can give, so that it still means something on other data."""
    if k == 0:  # nothing positive: the next float above the highest score
        return math.nextafter(float(sorted_scores[0]), math.inf)
    if k == len(sorted_scores):  # everything positive: the lowest score itself
        return float(sorted_scores[-1])
    return float((sorted_scores[k - 1] + sorted_scores[k]) / 2)


def metrics_at_threshold(scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float]:
    """F1 and accuracy when pairs with ``score >= threshold`` are predicted positive."""
    predicted = scores.double() >= threshold
    labels = labels.bool()
    true_positives = (predicted & labels).sum().item()
    f1_denominator = predicted.sum().item() + labels.sum().item()
    return {
        "f1": 2 * true_positives / f1_denominator if f1_denominator else 0.0,
        "accuracy": (predicted == labels).double().mean().item(),
    }


def ranking_metrics(ranked: torch.Tensor, judgements: list[dict[int, int]], ndcg_at: int = 10, mrr_at: int = 10,
                    recall_at: tuple[int, ...] = (10, 100)) -> dict[str, float]:
    """``per_query_ranking_metrics`` averaged over the queries (each in [0, 1])."""
    return mean_metrics(per_query_ranking_metrics(ranked, judgements, ndcg_at, mrr_at, recall_at))


def mean_metrics(per_query: list[dict[str, float]]) -> dict[str, float]:
    """Each metric of ``per_query`` (one dict a query, the same keys) averaged over the queries."""
    return {name: sum(query[name] for query in per_query) / len(per_query) for name in per_query[0]}


def per_query_ranking_metrics(ranked: torch.Tensor, judgements: list[dict[int, int]], ndcg_at: int = 10,
                              mrr_at: int = 10, recall_at: tuple[int, ...] = (10, 100)) -> list[dict[str, float]]:
    """nDCG, MRR and Recall of each ranked list against its graded judgements, as trec_eval (and so BEIR) counts them.

    Args:
        ranked: ``(Q, K)`` corpus indices, best first; ``-1`` pads a shorter list. ``K`` must reach
            the deepest cut-off, or the corpus size when that is smaller (then the list is complete).
        judgements: for each query, ``{corpus index: grade}`` of its relevant documents (grade > 0;
            the grade is the gain). Every query needs at least one.

    Returns, for each query in order, in [0, 1]: ``ndcg@{ndcg_at}`` (gain / log2(rank + 1), over the
    ideal ordering of all the query's relevant documents, retrieved or not), ``mrr@{mrr_at}``
    (1 / rank of the first relevant document, 0 if none is in the top ``mrr_at``) and
    ``recall@k`` (the share of the query's relevant documents in its top k).
    """
    if ranked.ndim != 2 or ranked.shape[0] != len(judgements):
        raise ValueError(f"ranked must be (Q, K) with Q = {len(judgements)} queries, got {tuple(ranked.shape)}")
    depth = max(ranked.shape[1], ndcg_at)
    discounts = 1.0 / torch.log2(torch.arange(2, depth + 2, dtype=torch.float64))
    per_query = []
    for row, judged in enumerate(judgements):
        relevant = {doc: grade for doc, grade in judged.items() if grade > 0}
        if not relevant:
            raise ValueError(f"query {row} has no relevant document (grade > 0)")
        gains = torch.tensor([float(relevant.get(int(doc), 0)) for doc in ranked[row]], dtype=torch.float64)
        ideal = torch.tensor(sorted(relevant.values(), reverse=True)[:ndcg_at], dtype=torch.float64)
        cut = gains[:ndcg_at]
        dcg = float((cut * discounts[: len(cut)]).sum())
        hits = (gains[:mrr_at] > 0).nonzero()
        per_query.append({
            f"ndcg@{ndcg_at}": dcg / float((ideal * discounts[: len(ideal)]).sum()),
            f"mrr@{mrr_at}": 1.0 / (int(hits[0]) + 1) if len(hits) else 0.0,
            **{f"recall@{k}": float((gains[:k] > 0).sum()) / len(relevant) for k in recall_at},
        })
    return per_query
