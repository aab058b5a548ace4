"""Collators: a list of items (``lightning_modules.data.batches``) -> one batch, padded to its longest text."""

from __future__ import annotations

import torch

from lightning_modules.data.batches import (
    ContrastiveBatch,
    ContrastiveItem,
    LabelledPairsBatch,
    PairItem,
    QueryBatch,
    QueryItem,
    ScoredPairsBatch,
    TokenizedCorpus,
)
from lightning_modules.tokenization import pad_token_ids

__all__ = ["ContrastiveCollator", "PairCollator", "QueryCollator", "pad_token_ids"]


class PairCollator:
    """Aligned pairs (``PairItem``) -> ``ScoredPairsBatch``, or ``LabelledPairsBatch`` with
    ``labelled=True`` (0/1 targets): ``input_ids (2B, L)``, the ``a`` texts then the ``b`` texts."""

    def __init__(self, pad_token_id: int, labelled: bool = False) -> None:
        self.pad_token_id = pad_token_id
        self.labelled = labelled

    def __call__(self, items: list[PairItem]) -> ScoredPairsBatch | LabelledPairsBatch:
        input_ids, attention_mask = pad_token_ids([i.a for i in items] + [i.b for i in items], self.pad_token_id)
        targets = torch.tensor([item.target for item in items], dtype=torch.float32)
        if self.labelled:
            return LabelledPairsBatch(input_ids, attention_mask, labels=targets)
        return ScoredPairsBatch(input_ids, attention_mask, scores=targets)


class ContrastiveCollator:
    """Positive pairs with their hard negatives (``ContrastiveItem``) -> ``ContrastiveBatch``.

    Each item contributes at most ``max_negatives`` of its negatives, drawn at random each
    time. ``positives``: for each ``a_key``, the keys of all its known positive texts, so that
    a column holding another positive of the row's ``a`` text is masked, not a negative.
    """

    def __init__(self, pad_token_id: int, positives: dict[int, set[int]], max_negatives: int) -> None:
        self.pad_token_id = pad_token_id
        self.positives = positives
        self.max_negatives = max_negatives

    def __call__(self, items: list[ContrastiveItem]) -> ContrastiveBatch:
        negatives = []
        for item in items:
            choices = item.negatives
            if len(choices) > self.max_negatives:
                choices = [choices[i] for i in torch.randperm(len(choices))[: self.max_negatives].tolist()]
            negatives.extend(choices)
        rows = [i.a for i in items] + [i.b for i in items] + [ids for _, ids in negatives]
        input_ids, attention_mask = pad_token_ids(rows, self.pad_token_id)
        column_keys = torch.tensor([item.b_key for item in items] + [key for key, _ in negatives], dtype=torch.long)
        positive_keys = pad_token_ids([sorted(self.positives.get(item.a_key, set()) | {item.b_key}) for item in items],
                                      pad_token_id=-1)[0]
        false_negatives = (column_keys[None, :, None] == positive_keys[:, None, :]).any(dim=-1)
        false_negatives.fill_diagonal_(False)  # each row's own positive is the target, not a negative
        return ContrastiveBatch(input_ids, attention_mask, false_negatives=false_negatives,
                                column_keys=column_keys, positive_keys=positive_keys)


class QueryCollator:
    """Queries of a retrieval evaluation (``QueryItem``) -> ``QueryBatch`` ranked against ``corpus``."""

    def __init__(self, pad_token_id: int, corpus: TokenizedCorpus) -> None:
        self.pad_token_id = pad_token_id
        self.corpus = corpus

    def __call__(self, items: list[QueryItem]) -> QueryBatch:
        input_ids, attention_mask = pad_token_ids([item.ids for item in items], self.pad_token_id)
        return QueryBatch(input_ids, attention_mask, query_ids=[item.query_id for item in items],
                          judgements=[dict(item.judgements) for item in items], corpus=self.corpus)
