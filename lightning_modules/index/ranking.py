"""Exact MaxSim ranking of queries against documents held in memory: the one scoring loop that
evaluation (``lightning_modules.evaluation.corpus.rank_corpus``) and search (``Index.search``)
share, so that a search reproduces an evaluation's rankings.

Documents are kept as blocks of at most ``SCORE_CHUNK`` documents of similar length (little
padding), each scored against every query at once while a running top-k per query is kept:
memory grows with the documents' token vectors and ``Q * (k + SCORE_CHUNK)`` scores, never with
``Q * documents``.
"""

from __future__ import annotations

import torch

from lightning_modules.encoder import TokenEmbeddings
from lightning_modules.progress import progress

# Documents scored against all queries at once: bounds the (Q, chunk) score block and its padding.
SCORE_CHUNK = 512
# Queries scored together, grouped by length.
QUERY_GROUP = 64

# ``(document indices (C,), TokenEmbeddings (C, L, D))``: a block of documents and where they sit.
Block = tuple[torch.Tensor, TokenEmbeddings]


def length_blocks(indices: list[int], vectors: list[torch.Tensor], dtype: torch.dtype | None = None) -> list[Block]:
    """The documents ``indices`` (their ``(L_i, D)`` ``vectors``, in the same order) as scoring blocks
    of at most ``SCORE_CHUNK`` documents of similar length, shortest first; in ``dtype`` if given."""
    order = sorted(range(len(indices)), key=lambda i: len(vectors[i]))
    blocks = []
    for start in range(0, len(order), SCORE_CHUNK):
        chunk = order[start : start + SCORE_CHUNK]
        stacked = TokenEmbeddings.stack([vectors[i] if dtype is None else vectors[i].to(dtype) for i in chunk])
        blocks.append((torch.tensor([indices[i] for i in chunk]), stacked))
    return blocks


def rank_blocks(model, queries: list[torch.Tensor], blocks: list[Block], excluded: torch.Tensor, depth: int,
                show_progress_bar: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``depth`` best documents of ``blocks`` for each query, by ``model.score_matrix`` under
    ``model.inference_context()``.

    Args:
        queries: ``(L_q, D)`` token vectors of each query.
        excluded: ``(Q,)`` a document index never to return for each query, or -1.

    Returns ``scores (Q, K)`` and ``indices (Q, K)`` float32 and int64 on the CPU, best first (equal
    scores: lower index first), ``K = min(depth, documents in blocks)``; a place that only an
    excluded document could fill has score ``-inf``.
    """
    top_scores = torch.full((len(queries), 0), float("-inf"))
    top_indices = torch.zeros((len(queries), 0), dtype=torch.long)
    # Queries of similar length together: padding a short query to the longest would multiply its work.
    by_length = sorted(range(len(queries)), key=lambda i: len(queries[i]))
    groups = [by_length[start : start + QUERY_GROUP] for start in range(0, len(by_length), QUERY_GROUP)]
    query_blocks = [(torch.tensor(group), TokenEmbeddings.stack([queries[i] for i in group])) for group in groups]
    for block_indices, block in progress(blocks, "scoring queries against the corpus", unit="block",
                                         disable=not show_progress_bar, leave=False):
        scores = torch.empty(len(queries), len(block_indices))
        for rows_of_group, query_block in query_blocks:
            with model.inference_context():
                scores[rows_of_group] = model.score_matrix(query_block, block).float().cpu()
        indices = block_indices.expand(len(queries), -1)
        scores = scores.masked_fill(indices == excluded[:, None], float("-inf"))
        top_scores, top_indices = best(torch.cat([top_scores, scores], 1), torch.cat([top_indices, indices], 1), depth)
    return top_scores, top_indices


def best(scores: torch.Tensor, indices: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``depth`` highest ``scores (Q, N)`` per row with their ``indices``; equal scores: lower index first."""
    by_index = torch.argsort(indices, dim=1, stable=True)
    scores, indices = scores.gather(1, by_index), indices.gather(1, by_index)
    by_score = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :depth]
    return scores.gather(1, by_score), indices.gather(1, by_score)
