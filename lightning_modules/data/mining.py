"""Hard-negative mining: the corpus texts the current model wrongly ranks high."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from lightning_modules.data.collate import pad_token_ids
from lightning_modules.encoder import TokenEmbeddings


@torch.no_grad()
def encode_texts(model, rows: list[list[int]], pad_token_id: int, batch_size: int, device, desc: str) -> list:
    """Token vectors of each tokenised text: a list of ``(L_i, D)`` float32 CPU tensors, padding removed."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together: little padding
    vectors: list = [None] * len(rows)
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch", leave=False):
        chunk = order[start : start + batch_size]
        input_ids, attention_mask = pad_token_ids([rows[i] for i in chunk], pad_token_id)
        encoded = model.embed(input_ids.to(device), attention_mask.to(device))
        for row, index in enumerate(chunk):
            vectors[index] = encoded.vectors[row][encoded.mask[row]].float().cpu()
    return vectors


@torch.no_grad()
def score_all(model, queries: list, corpus: list, chunk: int = 256, desc: str = "scoring") -> torch.Tensor:
    """MaxSim of every query against every corpus text, ``(Q, C)``, in chunks (bounded memory)."""
    scores = torch.empty(len(queries), len(corpus))
    for q in tqdm(range(0, len(queries), chunk), desc=desc, unit="chunk", leave=False):
        q_emb = TokenEmbeddings.stack(queries[q : q + chunk])
        for c in range(0, len(corpus), chunk):
            scores[q : q + chunk, c : c + chunk] = model.score_matrix(q_emb, TokenEmbeddings.stack(corpus[c : c + chunk]))
    return scores


@torch.no_grad()
def mine_hard_negatives(
    model,
    queries: list[list[int]],
    corpus: list[list[int]],
    positives: list[set[int]],
    k: int,
    margin: float,
    pad_token_id: int,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> list[list[int]]:
    """For each query, the ``k`` best-scoring corpus texts that are not its positives.

    Args:
        model: a ``LateInteractionModel`` (``embed``, ``score_matrix``); put in eval
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
        query_vectors = encode_texts(model, queries, pad_token_id, batch_size, device, "mining: encoding queries")
        corpus_vectors = encode_texts(model, corpus, pad_token_id, batch_size, device, "mining: encoding corpus")
        scores = score_all(model, query_vectors, corpus_vectors, desc="mining: scoring")
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
