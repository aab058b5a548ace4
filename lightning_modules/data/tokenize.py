"""Tokenising texts once, counting those cut at the length limit."""

from __future__ import annotations


def tokenize_texts(tokenizer, texts: list[str], max_length: int, marker_id: int | None = None) -> tuple[list, int]:
    """Token ids of each text, at most ``max_length`` of them, and how many texts were truncated.

    ``marker_id``: a token put right after the first one (``[CLS] [Q] ...``, as
    ColBERT marks queries and documents); it counts towards ``max_length``.
    """
    limit = max_length - (marker_id is not None)
    ids = tokenizer(texts, truncation=True, max_length=limit)["input_ids"] if texts else []
    # A text cut to the limit was longer; one of exactly the limit was not: re-tokenise only those.
    at_limit = [text for text, row in zip(texts, ids) if len(row) == limit]
    truncated = sum(len(row) > limit for row in tokenizer(at_limit)["input_ids"]) if at_limit else 0
    if marker_id is not None:
        ids = [row[:1] + [marker_id] + row[1:] for row in ids]
    return ids, truncated
