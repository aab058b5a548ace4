"""nDCG@10, MRR@10 and Recall@k against trec_eval (pytrec_eval, as BEIR computes them) and by hand."""

from __future__ import annotations

import math
import random

import pytest
import torch

from lightning_modules.evaluation.metrics import ranking_metrics

pytrec_eval = pytest.importorskip("pytrec_eval")


def _trec_reference(scores: torch.Tensor, judgements: list[dict[int, int]]) -> dict[str, float]:
    qrels = {f"q{i}": {f"d{d}": g for d, g in judged.items()} for i, judged in enumerate(judgements)}
    run = {f"q{i}": {f"d{d}": float(s) for d, s in enumerate(row)} for i, row in enumerate(scores.tolist())}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10", "recall.100"})
    per_query = evaluator.evaluate(run)
    mean = {key: sum(q[key] for q in per_query.values()) / len(per_query) for key in ("ndcg_cut_10", "recall_10", "recall_100")}
    # MRR@10 as BEIR computes it (trec_eval's recip_rank has no cut-off): 1 / rank of the first relevant.
    mrr = 0.0
    for row, judged in zip(scores, judgements):
        top = torch.argsort(row, descending=True)[:10].tolist()
        mrr += next((1.0 / (r + 1) for r, d in enumerate(top) if judged.get(d, 0) > 0), 0.0)
    return {"ndcg@10": mean["ndcg_cut_10"], "mrr@10": mrr / len(judgements),
            "recall@10": mean["recall_10"], "recall@100": mean["recall_100"]}


@pytest.mark.parametrize("seed", range(5))
def test_graded_judgements_match_trec_eval(seed):
    rng = random.Random(seed)
    queries, documents = 20, 150
    scores = torch.randperm(queries * documents, generator=torch.Generator().manual_seed(seed)).view(queries, documents).double()
    judgements = [{d: rng.choice([1, 1, 2, 3]) for d in rng.sample(range(documents), rng.randint(1, 12))}
                  for _ in range(queries)]
    ranked = torch.argsort(scores, dim=1, descending=True)[:, :100]
    ours = ranking_metrics(ranked, judgements)
    reference = _trec_reference(scores, judgements)
    assert ours == pytest.approx(reference, abs=1e-9)


def test_a_hand_computed_case_with_a_relevant_document_never_retrieved():
    # Query 0: relevant 5 (grade 2) at rank 2, 9 (grade 1) not in the list at all.
    # Query 1: its only relevant document at rank 1.
    ranked = torch.tensor([[3, 5, 7, -1], [4, 0, 1, 2]])
    judgements = [{5: 2, 9: 1}, {4: 1}]
    metrics = ranking_metrics(ranked, judgements, recall_at=(1, 4))
    ndcg0 = (2 / math.log2(3)) / (2 / math.log2(2) + 1 / math.log2(3))
    assert metrics["ndcg@10"] == pytest.approx((ndcg0 + 1.0) / 2)
    assert metrics["mrr@10"] == pytest.approx((1 / 2 + 1) / 2)
    assert metrics["recall@1"] == pytest.approx((0 + 1) / 2)
    assert metrics["recall@4"] == pytest.approx((1 / 2 + 1) / 2)


def test_a_query_without_relevant_documents_is_refused():
    with pytest.raises(ValueError, match="query 1 has no relevant document"):
        ranking_metrics(torch.tensor([[0, 1], [1, 0]]), [{0: 1}, {1: 0}])
