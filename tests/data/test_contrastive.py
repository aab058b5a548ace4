"""The one builder of contrastive training items, which both the pairs and the BEIR DataModules use."""

from __future__ import annotations

from lightning_modules.data.batches import TokenizedCorpus
from lightning_modules.data.contrastive import add_negatives, contrastive_items


def _corpus(n: int) -> TokenizedCorpus:
    return TokenizedCorpus([f"d{i}" for i in range(n)], [[100 + i] for i in range(n)])


def test_one_item_per_pair_in_order_with_each_querys_positives():
    corpus = _corpus(6)
    pairs = [(1, 4), (0, 2), (1, 3)]  # query 1 has two positives: two items
    items, positives = contrastive_items(pairs, [[10], [11]], corpus)
    assert [(item.a_key, item.b_key) for item in items] == pairs
    assert [(item.a, item.b) for item in items] == [([11], [104]), ([10], [102]), ([11], [103])]
    assert positives == {0: {2}, 1: {3, 4}}
    assert all(item.negatives == [] for item in items)


def test_negatives_skip_the_querys_positives_repeats_and_those_already_held():
    corpus = _corpus(8)
    items, positives = contrastive_items([(0, 1), (0, 2), (1, 3)], [[10], [11]], corpus,
                                         negatives=[[5, 2, 5, 6], [1]])
    # Query 0: 2 is its own positive (of the other item), 5 comes once; query 1: 1 is query 0's, not its own.
    assert [[key for key, _ in item.negatives] for item in items] == [[5, 6], [5, 6], [1]]
    assert items[0].negatives[0] == (5, [105])  # the document's token ids come with its index
    added = add_negatives(items, [[7, 6, 1], [3, 0]], positives, corpus)  # mined later: only what is new
    assert [[key for key, _ in item.negatives] for item in items] == [[5, 6, 7], [5, 6, 7], [1, 0]]
    assert added == 3
