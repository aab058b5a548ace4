"""Hard-negative mining: the corpus texts the current model wrongly ranks high.

``HardNegativeMining`` mines once, when ``fit`` sets up (before the training loader is built),
for a DataModule that asks for it (``PairsDataModule`` with ``data.mine_negatives``): the
DataModule says what to mine (``mining_request``) and takes the result
(``add_hard_negatives``), and never reaches into the model itself.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch

from lightning_modules.data.batches import TokenizedCorpus
from lightning_modules.evaluation.corpus import rank_corpus

log = logging.getLogger(__name__)


class HardNegativeMining(pl.Callback):
    """When ``fit`` sets up, mine hard negatives with the model for a DataModule that requests them."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        # setup runs before Lightning builds the training loader (configure_optimizers asks for
        # its length), so the negatives are there from the first batch on.
        request = getattr(trainer.datamodule, "mining_request", lambda: None)() if stage == "fit" else None
        if request is None:
            return
        pl_module.to(trainer.strategy.root_device)  # where training runs; Lightning would move it next anyway
        log.info("Mining %d hard negatives for each of %d texts among %d candidates",
                 request["k"], len(request["queries"]), len(request["corpus"]))
        mined = mine_hard_negatives(pl_module.model, request["queries"], request["corpus"], request["positives"],
                                    request["k"], request["margin"], batch_size=request["batch_size"])
        trainer.datamodule.add_hard_negatives(mined)


@torch.no_grad()
def mine_hard_negatives(
    model,
    queries: list[list[int]],
    corpus: list[list[int]],
    positives: list[set[int]],
    k: int,
    margin: float,
    batch_size: int = 64,
) -> list[list[int]]:
    """For each query, the ``k`` best-scoring corpus texts that are not its positives.

    Args:
        model: a ``LateInteractionModel`` (``embed_token_ids``, ``score_vectors``); put in eval
            mode for the duration and restored after.
        queries: token ids of each query.
        corpus: token ids of each candidate text, or a ``TokenizedCorpus`` (a retrieval corpus:
            ranked in shards under several processes, and its encoding shared with the
            evaluations at the same weights).
        positives: for each query, the corpus indices of its positives.
        k: negatives per query.
        margin: skip a candidate scoring above ``(lowest positive score) - margin``:
            so close to a positive it is more likely an unlabelled positive than a
            negative (a false negative).

    Returns, for each query, up to ``k`` corpus indices, best first.
    """
    if isinstance(corpus, TokenizedCorpus):
        return _mine_corpus(model, queries, corpus, positives, k, margin, batch_size)
    was_training = model.training
    model.eval()
    try:
        query_vectors = model.embed_token_ids(queries, batch_size, True, "mining: encoding queries")
        corpus_vectors = model.embed_token_ids(corpus, batch_size, True, "mining: encoding corpus")
        scores = model.score_vectors(query_vectors, corpus_vectors, show_progress_bar=True, desc="mining: scoring")
    finally:
        model.train(was_training)
    mined = []
    for row, known in enumerate(positives):
        ceiling = scores[row, sorted(known)].min() - margin if known else float("inf")
        candidates = scores[row].clone()
        candidates[sorted(known)] = float("-inf")
        candidates[candidates > ceiling] = float("-inf")
        best = candidates.topk(min(k, len(corpus))).indices.tolist()
        mined.append([i for i in best if candidates[i] > float("-inf")])
    return mined


def _mine_corpus(model, queries, corpus: TokenizedCorpus, positives, k, margin, batch_size) -> list[list[int]]:
    """``mine_hard_negatives`` over a retrieval corpus: each query's top of the whole corpus, deep
    enough to leave ``k`` after its positives and the margin; a positive ranked below that depth
    scores under every candidate, so all of them are too close to it (none is mined)."""
    was_training = model.training
    model.eval()
    try:
        query_vectors = [v.float() for v in model.embed_token_ids(queries, batch_size, True, "mining: encoding queries")]
    finally:
        model.train(was_training)
    depth = 3 * k + max((len(p) for p in positives), default=0)
    top_scores, top_indices = rank_corpus(model, query_vectors, corpus, depth, batch_size=batch_size)
    mined = []
    for scores, indices, known in zip(top_scores.tolist(), top_indices.tolist(), positives):
        found = [s for s, i in zip(scores, indices) if i in known]
        if not known:
            ceiling = float("inf")
        elif len(found) < len(known):  # a positive ranked below the depth: every candidate scores above it
            ceiling = float("-inf")
        else:
            ceiling = min(found) - margin
        mined.append([i for s, i in zip(scores, indices) if i not in known and i >= 0 and s <= ceiling][:k])
    return mined
