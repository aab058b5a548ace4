"""Contrastive training items, built one way for every DataModule: a ``ContrastiveItem`` per
(query, relevant document) pair, its hard negatives added as they come (from the data, from BM25,
or mined by the model being trained)."""

from __future__ import annotations

from lightning_modules.data.batches import ContrastiveItem, TokenizedCorpus


def contrastive_items(
    pairs: list[tuple[int, int]],
    query_ids: list[list[int]],
    corpus: TokenizedCorpus,
    negatives: list[list[int]] | None = None,
) -> tuple[list[ContrastiveItem], dict[int, set[int]]]:
    """The training items of positive ``pairs``, in their order.

    Args:
        pairs: ``(query key, corpus index)`` of each positive pair; a query key indexes ``query_ids``.
        query_ids: token ids of each query.
        corpus: the documents: every positive and every hard negative.
        negatives: for each query key, corpus indices of its hard negatives given by the data.

    Returns the items and, for each query key, the corpus indices of all its positives: what the
    collator masks (another positive of the row's query is no negative) and what mining skips.
    """
    positives: dict[int, set[int]] = {}
    for query, document in pairs:
        positives.setdefault(query, set()).add(document)
    items = [ContrastiveItem(query_ids[query], corpus.token_ids[document], query, document) for query, document in pairs]
    if negatives:
        add_negatives(items, negatives, positives, corpus)
    return items, positives


def add_negatives(items: list[ContrastiveItem], negatives: list[list[int]], positives: dict[int, set[int]],
                  corpus: TokenizedCorpus) -> int:
    """Give each item the corpus indices ``negatives[item.a_key]`` (in order) as hard negatives,
    leaving out its query's positives and the negatives it already has. Returns how many were added."""
    added = 0
    for item in items:
        present = {key for key, _ in item.negatives} | positives.get(item.a_key, set())
        new = [key for key in dict.fromkeys(negatives[item.a_key]) if key not in present]
        item.negatives.extend((key, corpus.token_ids[key]) for key in new)
        added += len(new)
    return added
