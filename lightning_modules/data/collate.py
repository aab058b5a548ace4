"""Collators: a list of items (``lightning_modules.data.batches``) -> one batch, padded to its longest text."""

from __future__ import annotations

import torch

from lightning_modules.data.batches import (
    ContrastiveBatch,
    ContrastiveItem,
    DistillationBatch,
    DistillationItem,
    LabelledPairsBatch,
    PairItem,
    QueryBatch,
    QueryItem,
    ScoredPairsBatch,
    TokenizedCorpus,
)
from lightning_modules.tokenization import pad_token_ids

__all__ = ["ContrastiveCollator", "DistillationCollator", "PairCollator", "QueryCollator", "pad_token_ids"]


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


class DistillationCollator:
    """Queries with the teacher's scored candidates (``DistillationItem``) -> ``DistillationBatch``.

    Each query brings ``n_ways`` of its candidates: the teacher's best-scored one (the first of them
    on a tie), always, in column 0, then ``n_ways - 1`` of the others drawn at random each time
    (torch's RNG, so a resumed run draws what the uninterrupted one would). Keeping the best one:
    it is the mode of the teacher's distribution (for MS MARCO's lists, usually the labelled
    positive), without which a sample of mostly weak candidates teaches a flat target; and
    ``MarginMSELoss`` takes its margins over it. (PyLate keeps the first ``n_ways`` of each list.)

    ``queries``: the token ids of every query (``DistillationItem.query`` indexes them);
    ``corpus``: the tokenised documents (``DistillationItem.documents`` indexes them), shared.
    """

    def __init__(self, pad_token_id: int, queries: list[list[int]], corpus: TokenizedCorpus, n_ways: int) -> None:
        if n_ways < 2:
            raise ValueError(f"n_ways must be at least 2, got {n_ways}")
        self.pad_token_id = pad_token_id
        self.queries = queries
        self.corpus = corpus
        self.n_ways = n_ways

    def sample(self, item: DistillationItem) -> list[int]:
        """Positions in ``item.documents`` of the ``n_ways`` candidates to use: the best-scored first."""
        if len(item.documents) < self.n_ways:
            raise ValueError(f"query {item.query} has {len(item.documents)} candidates, fewer than "
                             f"n_ways={self.n_ways}")
        best = max(range(len(item.scores)), key=item.scores.__getitem__)
        others = [i for i in range(len(item.documents)) if i != best]
        drawn = torch.randperm(len(others))[: self.n_ways - 1].tolist()
        return [best] + [others[i] for i in drawn]

    def __call__(self, items: list[DistillationItem]) -> DistillationBatch:
        chosen = [self.sample(item) for item in items]
        documents = [self.corpus.token_ids[item.documents[i]] for item, picks in zip(items, chosen) for i in picks]
        input_ids, attention_mask = pad_token_ids([self.queries[item.query] for item in items] + documents,
                                                  self.pad_token_id)
        teacher = torch.tensor([[item.scores[i] for i in picks] for item, picks in zip(items, chosen)],
                               dtype=torch.float32)
        return DistillationBatch(input_ids, attention_mask, teacher_scores=teacher)
