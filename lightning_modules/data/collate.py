"""Batching: dynamic padding of tokenised pairs."""

from __future__ import annotations

import torch


class PairCollator:
    """Pad a list of tokenised pairs to the longest text in the batch.

    Each item is ``{"a": list[int], "b": list[int], "score": float}``. Both sides
    are stacked into one tensor so that the encoder runs once per batch:

    Returns:
        ``input_ids (2B, L)``: rows ``[:B]`` are the ``a`` texts, ``[B:]`` the ``b`` texts;
        ``attention_mask (2B, L)``; ``scores (B,)`` float32 in [0, 1].
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        texts = [item["a"] for item in items] + [item["b"] for item in items]
        longest = max(len(ids) for ids in texts)
        input_ids = torch.full((len(texts), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(texts), longest), dtype=torch.long)
        for row, ids in enumerate(texts):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        scores = torch.tensor([item["score"] for item in items], dtype=torch.float32)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "scores": scores}
