"""Batching: dynamic padding of tokenised texts, one collator per kind of batch.

Every batch holds ``input_ids (T, L)`` and ``attention_mask (T, L)`` padded to its
own longest text, so the encoder runs once per batch. What else it holds tells
the LightningModule what to do with it:

* ``scores (B,)``: aligned pairs with graded targets (ranking losses, correlations);
* ``labels (B,)``: aligned pairs labelled 0/1 (classification metrics);
* ``false_negatives (B, B + N)``: positive pairs plus ``N`` hard negatives (InfoNCE);
* ``text_keys (T,)``: single texts of a retrieval evaluation.
"""

from __future__ import annotations

import torch


def pad_token_ids(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` of token ids -> ``input_ids (T, L)`` and ``attention_mask (T, L)``, L the longest row."""
    longest = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def batch_pair_count(batch: dict) -> int:
    """Training pairs in a batch of either training kind."""
    if "false_negatives" in batch:
        return int(batch["false_negatives"].shape[0])
    return int(batch["scores"].shape[0])


class PairCollator:
    """Aligned pairs: ``{"a": ids, "b": ids, "score": float}`` items.

    Returns ``input_ids (2B, L)`` (rows ``[:B]`` the ``a`` texts, ``[B:]`` the
    ``b`` texts), ``attention_mask (2B, L)`` and the targets ``(B,)`` float32 under
    ``target_key`` (``"scores"``, or ``"labels"`` for 0/1 labels).
    """

    def __init__(self, pad_token_id: int, target_key: str = "scores") -> None:
        self.pad_token_id = pad_token_id
        self.target_key = target_key

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_token_ids([i["a"] for i in items] + [i["b"] for i in items], self.pad_token_id)
        targets = torch.tensor([item["score"] for item in items], dtype=torch.float32)
        return {"input_ids": input_ids, "attention_mask": attention_mask, self.target_key: targets}


class ContrastiveCollator:
    """Positive pairs with their hard negatives, for in-batch contrastive training.

    Items: ``{"a", "b": ids, "a_key", "b_key": int, "negatives": [(key, ids), ...]}``
    where keys identify texts (equal texts, equal keys). Each item contributes at most
    ``max_negatives`` of its negatives, drawn at random each time.

    Returns ``input_ids (2B + N, L)``: the ``a`` texts, the ``b`` texts, then the
    ``N`` negatives; ``attention_mask``; and ``false_negatives (B, B + N)``, True where
    a column's text is a known positive of the row's ``a`` text (other than the row's
    own positive): those columns must not count as negatives.
    """

    def __init__(self, pad_token_id: int, positives: dict[int, set[int]], max_negatives: int) -> None:
        self.pad_token_id = pad_token_id
        self.positives = positives
        self.max_negatives = max_negatives

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        negatives = []
        for item in items:
            choices = item["negatives"]
            if len(choices) > self.max_negatives:
                choices = [choices[i] for i in torch.randperm(len(choices))[: self.max_negatives].tolist()]
            negatives.extend(choices)
        rows = [i["a"] for i in items] + [i["b"] for i in items] + [ids for _, ids in negatives]
        input_ids, attention_mask = pad_token_ids(rows, self.pad_token_id)
        column_keys = torch.tensor([item["b_key"] for item in items] + [key for key, _ in negatives])
        false_negatives = torch.stack([
            torch.isin(column_keys, torch.tensor(sorted(self.positives.get(item["a_key"], ())), dtype=torch.long))
            for item in items
        ])
        false_negatives.fill_diagonal_(False)  # each row's own positive is the target, not a negative
        return {"input_ids": input_ids, "attention_mask": attention_mask, "false_negatives": false_negatives}


class RetrievalCollator:
    """Single texts of a retrieval evaluation: ``{"ids", "key", "is_query", "relevant"}`` items.

    Returns ``input_ids (T, L)``, ``attention_mask``, ``text_keys (T,)``,
    ``is_query (T,)`` bool, and ``relevant``: for each text, the keys of the corpus
    texts relevant to it (empty for corpus texts), as a list of lists.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict]) -> dict:
        input_ids, attention_mask = pad_token_ids([item["ids"] for item in items], self.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "text_keys": torch.tensor([item["key"] for item in items], dtype=torch.long),
            "is_query": torch.tensor([item["is_query"] for item in items], dtype=torch.bool),
            "relevant": [list(item["relevant"]) for item in items],
        }
