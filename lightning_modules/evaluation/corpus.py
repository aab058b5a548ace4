"""Exact brute-force retrieval: every query scored by MaxSim against every document of a corpus.

The corpus is encoded once per set of weights (``encode_corpus`` keeps the latest encoding on the
``TokenizedCorpus``, as padded blocks of documents of similar length: validation, test and mining
at the same weights share it) and scored a block at a time, keeping a running top-k per query, so memory grows with the corpus's token
vectors and ``Q * (k + chunk)`` scores, never with ``Q * corpus size``. Under several processes,
each encodes and scores its own shard of the corpus (every ``world_size``-th document) and the
shards' top-k lists are merged. How time and memory grow: docs/retrieval.md.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from lightning_modules.data.batches import TokenizedCorpus
from lightning_modules.encoder import TokenEmbeddings
from lightning_modules.progress import progress

# Documents scored against all queries at once: bounds the (Q, chunk) score block and its padding.
SCORE_CHUNK = 512
# Queries scored together, grouped by length.
QUERY_GROUP = 64


def weights_fingerprint(model: torch.nn.Module) -> tuple:
    """A cheap key that changes whenever any weight does (a float64 sum per tensor, and the dtype)."""
    sums = torch.stack([p.detach().sum(dtype=torch.float64).cpu() for p in model.parameters()])
    return tuple(sums.tolist()) + (str(next(model.parameters()).dtype),)


def process_shard() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def encode_corpus(model, corpus: TokenizedCorpus, rows: list[int], batch_size: int = 64,
                  show_progress_bar: bool = True) -> list[tuple[torch.Tensor, TokenEmbeddings]]:
    """The documents ``rows`` of ``corpus`` encoded in eval mode, as scoring blocks of at most
    ``SCORE_CHUNK`` documents of similar length (little padding): ``(corpus indices (C,),
    TokenEmbeddings (C, L, D))`` each. Reused while the weights (and ``rows``) are unchanged."""
    key = (weights_fingerprint(model), tuple(rows))
    if corpus.cache.get("key") != key:
        corpus.cache.clear()  # one encoding at a time: the old one is stale and may be large
        was_training = model.training
        model.eval()
        try:
            vectors = model.embed_token_ids([corpus.token_ids[i] for i in rows], batch_size, show_progress_bar,
                                            f"encoding {len(rows)} corpus documents")
        finally:
            model.train(was_training)
        order = sorted(range(len(rows)), key=lambda i: len(vectors[i]))
        blocks = []
        for start in range(0, len(order), SCORE_CHUNK):
            chunk = order[start : start + SCORE_CHUNK]
            blocks.append((torch.tensor([rows[i] for i in chunk]), TokenEmbeddings.stack([vectors[i] for i in chunk])))
        corpus.cache.update(key=key, blocks=blocks, tokens=sum(len(v) for v in vectors), documents=len(rows))
    return corpus.cache["blocks"]


@torch.no_grad()
def rank_corpus(
    model,
    queries: list[torch.Tensor],
    corpus: TokenizedCorpus,
    depth: int = 100,
    exclude: list[int | None] | None = None,
    batch_size: int = 64,
    show_progress_bar: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``depth`` best documents of the whole corpus for each query, by MaxSim.

    Args:
        queries: ``(L_q, D)`` token vectors of each query (the same list on every process).
        exclude: for each query, a corpus index never to return (BEIR drops the document whose
            id is the query's own), or None.

    Returns ``scores (Q, K)`` and ``indices (Q, K)`` (corpus indices, best first; ties go to the
    lower index; ``-1`` where only excluded documents were left), ``K = min(depth, corpus size)``, on the CPU; the same on every process.
    """
    rank, world = process_shard()
    rows = list(range(rank, len(corpus), world))
    blocks = encode_corpus(model, corpus, rows, batch_size, show_progress_bar and rank == 0)
    depth = min(depth, len(corpus))
    excluded = torch.tensor([-1 if e is None else e for e in (exclude or [None] * len(queries))])
    top_scores = torch.full((len(queries), 0), float("-inf"))
    top_indices = torch.zeros((len(queries), 0), dtype=torch.long)
    # Queries of similar length together: padding a short query to the longest would multiply its work.
    by_length = sorted(range(len(queries)), key=lambda i: len(queries[i]))
    groups = [by_length[start : start + QUERY_GROUP] for start in range(0, len(by_length), QUERY_GROUP)]
    query_blocks = [(torch.tensor(group), TokenEmbeddings.stack([queries[i] for i in group])) for group in groups]
    for block_indices, block in progress(blocks, "scoring queries against the corpus", unit="block",
                                         disable=not (show_progress_bar and rank == 0), leave=False):
        scores = torch.empty(len(queries), len(block_indices))
        for rows_of_group, query_block in query_blocks:
            scores[rows_of_group] = model.score_matrix(query_block, block).float().cpu()
        indices = block_indices.expand(len(queries), -1)
        scores = scores.masked_fill(indices == excluded[:, None], float("-inf"))
        top_scores, top_indices = _best(torch.cat([top_scores, scores], 1), torch.cat([top_indices, indices], 1), depth)
    if world > 1:  # merge the shards' lists: each process holds the best of its own documents
        shards = [None] * world
        dist.all_gather_object(shards, (top_scores, top_indices))
        top_scores, top_indices = _best(torch.cat([s for s, _ in shards], 1), torch.cat([i for _, i in shards], 1), depth)
    # An excluded document can fill a place only when too few others remain: it is padding, not a hit.
    return top_scores, top_indices.masked_fill(top_scores == float("-inf"), -1)


def _best(scores: torch.Tensor, indices: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``depth`` highest ``scores (Q, N)`` per row with their ``indices``; equal scores: lower index first."""
    by_index = torch.argsort(indices, dim=1, stable=True)
    scores, indices = scores.gather(1, by_index), indices.gather(1, by_index)
    by_score = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :depth]
    return scores.gather(1, by_score), indices.gather(1, by_score)
