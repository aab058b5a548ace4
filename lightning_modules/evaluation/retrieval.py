"""Retrieval texts: each query ranked against the whole corpus of its split (MRR@10, Recall@k)."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from lightning_modules.data.batches import RetrievalBatch
from lightning_modules.evaluation.base import Evaluator
from lightning_modules.evaluation.metrics import retrieval_metrics

log = logging.getLogger(__name__)


class RetrievalEvaluator(Evaluator):
    """``mrr@10`` (primary), ``recall@1`` and ``recall@10`` of each query against the split's corpus.

    ``update`` keeps every text's token vectors on the CPU (only the tokens that take part
    in matching); ``compute`` gathers them from every process (texts differ in length, so
    as objects) and scores every query against the whole corpus.
    """

    batch_type = RetrievalBatch
    primary_metric = "mrr@10"

    def __init__(self) -> None:
        super().__init__()
        # (is_query, key, (L, D) float32 CPU vectors, relevant corpus keys) per text
        self._texts: list[tuple[bool, int, torch.Tensor, list[int]]] = []

    def update(self, model, batch: RetrievalBatch) -> None:
        encoded = model.embed(batch.input_ids, batch.attention_mask)
        for row, (is_query, key, relevant) in enumerate(zip(batch.is_query, batch.text_keys, batch.relevant)):
            vectors = encoded.vectors[row][encoded.mask[row]].float().cpu()
            self._texts.append((bool(is_query), int(key), vectors, relevant))
        return None  # single texts: no pairs to draw

    def compute(self, model, split: str, record: bool = True) -> dict:
        texts, self._texts = self._texts, []
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, texts)  # every process needs the whole corpus
            texts = [text for shard in gathered for text in shard]
        queries = {key: (vectors, relevant) for is_query, key, vectors, relevant in texts if is_query}
        corpus = {key: vectors for is_query, key, vectors, _ in texts if not is_query}
        # A partial pass (fast_dev_run, limit_val_batches) may miss corpus texts: keep the queries
        # whose relevant texts were all seen, and rank them against the corpus that was.
        complete = {k: q for k, q in queries.items() if all(c in corpus for c in q[1])}
        if len(complete) < len(queries):
            log.warning("Retrieval evaluation on %d of %d queries: the others' relevant texts were not embedded "
                        "(a partial validation pass)", len(complete), len(queries))
        queries = complete
        if not queries or not corpus:
            return {"mrr@10": float("nan"), "recall@1": float("nan"), "recall@10": float("nan")}
        query_keys, corpus_keys = sorted(queries), sorted(corpus)
        column = {key: i for i, key in enumerate(corpus_keys)}
        scores = model.score_vectors([queries[k][0] for k in query_keys], [corpus[k] for k in corpus_keys],
                                     show_progress_bar=True, desc="retrieval evaluation")
        return retrieval_metrics(scores, [[column[c] for c in queries[k][1]] for k in query_keys])
