"""Exact brute-force retrieval: every query scored by MaxSim against every document of a corpus.

The corpus is encoded once per set of weights (``encode_corpus`` keeps the latest encoding of each
``TokenizedCorpus`` in ``latest_encodings``, as padded blocks of documents of similar length:
validation, test and mining at the same weights share it) and scored by the loop that search
shares (``lightning_modules.index.ranking``: a block at a time, keeping a running top-k per
query, so memory grows with the corpus's token vectors, never with ``Q * corpus size``). Under
several processes, each encodes and scores its own shard of the corpus (every ``world_size``-th document) and the
shards' top-k lists are merged. How time and memory grow: docs/retrieval.md.

Across runs, encodings and rankings are also kept on disk when a cache is active
(``encoding_cache.use_cache``), keyed by everything they depend on (``encoding_key``).
``corpus_work`` counts what a process computed and what it took from a cache.
"""

from __future__ import annotations

import weakref
from array import array
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import transformers

from lightning_modules.data.batches import TokenizedCorpus
from lightning_modules.encoder import TokenEmbeddings
from lightning_modules.evaluation.encoding_cache import active_cache
from lightning_modules.index.index import embed_documents
from lightning_modules.index.ranking import best, length_blocks, rank_blocks
from lightning_modules.index.storage import digest, model_fingerprint, tensor_bytes


def weights_fingerprint(model: torch.nn.Module) -> tuple:
    """A cheap key that changes whenever any weight does (a float64 sum per tensor, and the dtype)."""
    sums = torch.stack([p.detach().sum(dtype=torch.float64).cpu() for p in model.parameters()])
    return tuple(sums.tolist()) + (str(next(model.parameters()).dtype),)


@dataclass
class CorpusWork:
    """What this process did with corpora: ``passes_encoded`` / ``passes_from_cache``, in whole-corpus
    passes (a process's shard counts as its share times the processes, so the figure is the run's
    when every process did the same, as the ranks of one run do: ``results.json`` reports rank 0's);
    ``queries_scored`` / ``queries_from_cache``: queries ranked against a whole corpus."""

    passes_encoded: float = 0.0
    passes_from_cache: float = 0.0
    queries_scored: int = 0
    queries_from_cache: int = 0

    def reset(self) -> None:
        self.__init__()

    def as_dict(self) -> dict:
        return {name: round(value, 2) if isinstance(value, float) else value for name, value in asdict(self).items()}


corpus_work = CorpusWork()


@dataclass
class CorpusEncoding:
    """One encoding of (a shard of) a corpus: ``blocks`` of ``(corpus indices (C,), TokenEmbeddings
    (C, L, D))``; ``key``: the weights, rows and precision it was made with; ``disk_key``: its entry
    in the on-disk cache (None when none is active); ``tokens`` and ``documents`` it holds."""

    key: tuple
    disk_key: str | None
    blocks: list[tuple[torch.Tensor, TokenEmbeddings]]
    tokens: int
    documents: int


# The latest encoding of each corpus, the one owner of them: one at a time per corpus (an older one
# is stale, and may be large), dropped with the corpus itself.
latest_encodings: weakref.WeakKeyDictionary[TokenizedCorpus, CorpusEncoding] = weakref.WeakKeyDictionary()


def encoding_key(model, corpus: TokenizedCorpus, rows: list[int]) -> str:
    """A digest of everything the encoding of ``rows`` depends on: every weight (bytes, dtype, shape),
    the encoder's architecture settings and its matching mask (skipped tokens), the documents'
    token ids (so the tokenizer, the lengths and the texts), the inference precision, the device type
    and the versions of torch and transformers.
    (Dropout settings are left out: evaluation runs in eval mode.)"""
    parts: list[bytes | str] = ["encoding", torch.__version__, transformers.__version__, model_fingerprint(model),
                                model.inference_precision, next(model.parameters()).device.type]
    for row in rows:
        parts.append(array("q", corpus.token_ids[row]).tobytes())
    return digest(*parts)


def process_shard() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def encode_corpus(model, corpus: TokenizedCorpus, rows: list[int], batch_size: int = 64,
                  show_progress_bar: bool = True) -> list[tuple[torch.Tensor, TokenEmbeddings]]:
    """The documents ``rows`` of ``corpus`` encoded in eval mode, as scoring blocks of documents of
    similar length (``index.ranking.length_blocks``): ``(corpus indices (C,), TokenEmbeddings (C, L, D))``
    each. Reused while the weights (and ``rows``) are unchanged."""
    key = (weights_fingerprint(model), tuple(rows), model.inference_precision)
    latest = latest_encodings.get(corpus)
    if latest is None or latest.key != key:
        latest_encodings.pop(corpus, None)  # freed before the new one is made
        _, world = process_shard()
        passes = len(rows) * world / max(len(corpus), 1)
        cache = active_cache()
        disk_key = encoding_key(model, corpus, rows) if cache and rows else None
        vectors = _cached_encoding(cache, disk_key, len(rows), model.encoder.dim)
        if vectors is None:
            vectors = embed_documents(model, [corpus.token_ids[i] for i in rows], batch_size, show_progress_bar,
                                      f"encoding {len(rows)} corpus documents")
            corpus_work.passes_encoded += passes
            if disk_key:
                lengths = torch.tensor([len(v) for v in vectors])
                cache.save("encoding", disk_key, {"vectors": torch.cat(vectors).cpu(), "lengths": lengths})
        else:
            corpus_work.passes_from_cache += passes
            device = next(model.parameters()).device
            vectors = [v.to(device) for v in vectors]
        blocks = length_blocks(rows, vectors)
        latest = latest_encodings[corpus] = CorpusEncoding(key, disk_key, blocks, sum(len(v) for v in vectors), len(rows))
    return latest.blocks


def _cached_encoding(cache, key: str | None, documents: int, dim: int) -> list[torch.Tensor] | None:
    """The ``(L_i, D)`` vectors of ``documents`` documents stored in ``cache`` under ``key``, or None
    (not cached, or an entry whose shapes do not fit: ignored with a warning)."""
    entry = cache.load("encoding", key) if cache and key else None
    if entry is None:
        return None
    vectors, lengths = entry.get("vectors"), entry.get("lengths")
    if (vectors is None or lengths is None or vectors.ndim != 2 or vectors.shape[1] != dim
            or lengths.shape != (documents,) or int(lengths.sum()) != vectors.shape[0]):
        cache.discard(cache.path("encoding", key), "its shapes do not fit this corpus and model")
        return None
    return list(vectors.split(lengths.tolist()))


def _cached_ranking(cache, key: str | None, queries: int, depth: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(scores (Q, K), indices (Q, K))`` stored in ``cache`` under ``key``, or None (as ``_cached_encoding``)."""
    entry = cache.load("ranking", key) if cache and key else None
    if entry is None:
        return None
    scores, indices = entry.get("scores"), entry.get("indices")
    if scores is None or indices is None or scores.shape != (queries, depth) or indices.shape != scores.shape:
        cache.discard(cache.path("ranking", key), "its shapes do not fit these queries")
        return None
    return scores, indices


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
    cache, disk_key = active_cache(), latest_encodings[corpus].disk_key
    if cache and disk_key:  # the encoding is on disk: so can this ranking be, keyed by it and by the queries
        # The shard's corpus positions too: the indices returned are positions, and two shards (or
        # corpora) can hold the same documents at other positions.
        disk_key = digest("ranking", disk_key, tensor_bytes(torch.tensor(rows)), str(depth),
                          repr(sorted(model.scoring_options().items())), model.backend, tensor_bytes(excluded),
                          *[tensor_bytes(q) + str(q.dtype).encode() for q in queries])
    cached = _cached_ranking(cache, disk_key, len(queries), min(depth, len(rows)))
    if cached is not None:
        top_scores, top_indices = cached
        corpus_work.queries_from_cache += len(queries)
    else:
        top_scores, top_indices = rank_blocks(model, queries, blocks, excluded, depth, show_progress_bar and rank == 0)
        corpus_work.queries_scored += len(queries)
        if cache and disk_key:
            cache.save("ranking", disk_key, {"scores": top_scores, "indices": top_indices})
    if world > 1:  # merge the shards' lists: each process holds the best of its own documents
        shards = [None] * world
        dist.all_gather_object(shards, (top_scores, top_indices))
        top_scores, top_indices = best(torch.cat([s for s, _ in shards], 1), torch.cat([i for _, i in shards], 1),
                                       depth)
    # An excluded document can fill a place only when too few others remain: it is padding, not a hit.
    return top_scores, top_indices.masked_fill(top_scores == float("-inf"), -1)
