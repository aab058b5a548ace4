"""Retrieval against a whole corpus: each query ranked by MaxSim against every document (BEIR's
protocol), scored by nDCG@10, MRR@10, Recall@10 and Recall@100; and the same for any model on a
BEIR folder (``python -m train.evaluate tasks=[FOLDER]``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from lightning_modules.data.batches import QueryBatch, TokenizedCorpus
from lightning_modules.data.beir import read_beir
from lightning_modules.evaluation.base import Evaluator
from lightning_modules.evaluation.corpus import process_shard, rank_corpus
from lightning_modules.evaluation.metrics import mean_metrics, per_query_ranking_metrics

# How deep each query's list goes: the deepest cut-off reported (Recall@100).
RANKING_DEPTH = 100


@dataclass
class RankedQuery:
    """What one query's ranking gave: ``metrics`` (``per_query_ranking_metrics``, in [0, 1]),
    ``relevant_rank`` (the 1-based rank of its first relevant document, None when none is in the
    top ``RANKING_DEPTH``), ``top_document`` (the corpus index of its best document, None when
    nothing was ranked) and ``token_ids`` (the query as the model read it, markers included)."""

    metrics: dict[str, float]
    relevant_rank: int | None
    top_document: int | None
    token_ids: list[int]


@dataclass
class RankedSplit:
    """The per-query results of one computed split (for pictures: ``EvaluationPlots``): ``split``
    (``"val"``, ``"test"``), ``queries`` (query id -> ``RankedQuery``) and the ``corpus`` they
    were ranked against (shared, not copied). No vectors: a few numbers and token ids a query."""

    split: str
    queries: dict[str, RankedQuery]
    corpus: TokenizedCorpus


class CorpusRetrievalEvaluator(Evaluator):
    """``ndcg@10`` (primary), ``mrr@10``, ``recall@10`` and ``recall@100`` of the split's queries,
    each ranked exactly against the whole corpus of its batches (``QueryBatch.corpus``).

    ``update`` encodes the queries; ``compute`` gathers them from every process, encodes the
    corpus (once per set of weights, each process its own shard) and merges the shards' top 100.
    A document whose id is the query's own is never a hit (BEIR's convention). ``last_split``
    keeps the per-query results of the latest computed split (``RankedSplit``; None before any,
    or when the split had no queries).
    """

    batch_type = QueryBatch
    primary_metric = "ndcg@10"
    recall_at: tuple[int, ...] = (10, 100)
    encode_batch_size = 64  # documents per encoder call when the corpus is encoded

    def __init__(self) -> None:
        super().__init__()
        # (id, (L, D) CPU vectors, judgements, token ids)
        self._queries: list[tuple[str, torch.Tensor, dict[int, int], list[int]]] = []
        self._corpus: TokenizedCorpus | None = None
        self.last_split: RankedSplit | None = None

    def update(self, model, batch: QueryBatch) -> None:
        self._corpus = batch.corpus
        encoded = model.embed(batch.input_ids, batch.attention_mask)
        input_ids, attention_mask = batch.input_ids.cpu(), batch.attention_mask.cpu().bool()
        for row, (query_id, judged) in enumerate(zip(batch.query_ids, batch.judgements)):
            self._queries.append((query_id, encoded.vectors[row][encoded.mask[row]].float().cpu(), judged,
                                  input_ids[row][attention_mask[row]].tolist()))
        return None  # queries alone: no pairs to draw

    def compute(self, model, split: str, record: bool = True) -> dict:
        queries, self._queries = self._queries, []
        _, world = process_shard()
        if world > 1:  # every process ranks every query against its own shard of the corpus
            gathered = [None] * world
            dist.all_gather_object(gathered, queries)
            queries = [query for shard in gathered for query in shard]
        # One entry per query (the distributed sampler repeats a few to even out the shards), in id order.
        unique = sorted({query[0]: query for query in queries}.values(), key=lambda query: query[0])
        if not unique or self._corpus is None:
            self.last_split = None
            return {name: float("nan") for name in ("ndcg@10", "mrr@10", *(f"recall@{k}" for k in self.recall_at))}
        corpus = self._corpus
        _, top = rank_corpus(model, [vectors for _, vectors, _, _ in unique], corpus, RANKING_DEPTH,
                             exclude=[corpus.position.get(query_id) for query_id, _, _, _ in unique],
                             batch_size=self.encode_batch_size)
        per_query = per_query_ranking_metrics(top, [judged for _, _, judged, _ in unique], recall_at=self.recall_at)
        self.last_split = RankedSplit(split, {
            query_id: RankedQuery(metrics, self._first_relevant_rank(ranked, judged),
                                  ranked[0] if ranked and ranked[0] >= 0 else None, token_ids)
            for (query_id, _, judged, token_ids), ranked, metrics in zip(unique, top.tolist(), per_query)
        }, corpus)
        return mean_metrics(per_query)

    @staticmethod
    def _first_relevant_rank(ranked: list[int], judged: dict[int, int]) -> int | None:
        """The 1-based rank of the first document of ``ranked`` (corpus indices, best first) with a grade
        above 0 in ``judged``; None when there is none."""
        return next((rank for rank, doc in enumerate(ranked, start=1) if judged.get(doc, 0) > 0), None)


class PairRetrievalEvaluator(CorpusRetrievalEvaluator):
    """The same exact ranking for a set of positive pairs (``PairsDataModule``: each distinct
    ``text_a`` a query, the split's distinct ``text_b`` and negatives its corpus): ``mrr@10`` picks
    the checkpoint, and ``recall@1`` says how often the first answer is right."""

    primary_metric = "mrr@10"
    recall_at = (1, 10, 100)


def evaluate_beir(model, source: str, split: str = "test", batch_size: int = 64) -> dict:
    """nDCG@10, MRR@10, Recall@10 and Recall@100 (x100) of ``model`` on one split of a BEIR folder
    (or ``BeIR/<name>`` with hub access), the queries encoded with the model's query settings.

    Returns the averages under their names, ``queries``, ``documents``, ``source``, ``kind``
    (``"retrieval"``), ``per_query`` (query id -> the same four metrics, x100) and ``ranking``
    (query id -> its ``RANKING_DEPTH`` best ``(corpus id, MaxSim score)``, best first: what a
    TREC run file holds) and ``warnings`` (what the data reader noticed: empty documents kept). Only
    queries with a relevant document in ``split`` are ranked."""
    data = read_beir(source, [split])
    judged = data.judgements[split]
    query_ids = sorted(judged.by_query)
    corpus = TokenizedCorpus(data.corpus_ids, model.tokenize(data.corpus_texts, is_query=False, allow_empty=True))
    query_vectors = model.encode([data.queries[q] for q in query_ids], is_query=True, batch_size=batch_size)
    scores, top = rank_corpus(model, [v.float() for v in query_vectors], corpus, RANKING_DEPTH,
                              exclude=[corpus.position.get(q) for q in query_ids], batch_size=batch_size)
    per_query = per_query_ranking_metrics(
        top, [{corpus.position[d]: g for d, g in judged.by_query[q].items()} for q in query_ids])
    ranking = {q: [(corpus.ids[i], s) for i, s in zip(top[row].tolist(), scores[row].tolist()) if i >= 0]
               for row, q in enumerate(query_ids)}
    return {**_percent(mean_metrics(per_query)),
            "queries": len(query_ids), "documents": len(corpus), "source": judged.source, "kind": "retrieval",
            "per_query": {q: _percent(metrics) for q, metrics in zip(query_ids, per_query)}, "ranking": ranking,
            "warnings": list(data.warnings)}


def _percent(metrics: dict[str, float]) -> dict[str, float]:
    return {name: round(100 * value, 2) for name, value in metrics.items()}
