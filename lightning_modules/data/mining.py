"""Hard-negative mining: the corpus texts the current model wrongly ranks high."""

from __future__ import annotations

import torch


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
        queries, corpus: token ids of each text.
        positives: for each query, the corpus indices of its positives.
        k: negatives per query.
        margin: skip a candidate scoring above ``(lowest positive score) - margin``:
            so close to a positive it is more likely an unlabelled positive than a
            negative (a false negative).

    Returns, for each query, up to ``k`` corpus indices, best first.
    """
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
