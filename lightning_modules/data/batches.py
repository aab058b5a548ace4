"""What flows through the loaders: one dataclass per kind of item and per kind of batch.

A collator turns a list of items into one batch; the Lightning system and the evaluators
dispatch on the batch's type, never on which keys it holds. Lightning moves every tensor
field to the device (a dataclass is a collection to it); other fields pass through as they are.

Every batch holds ``input_ids (T, L)`` and ``attention_mask (T, L)``, padded to its own longest
text, so the encoder runs once per batch, and says how many training pairs it holds
(``num_pairs``: what throughput counts and what ``self.log`` takes as ``batch_size``).

Adding a kind of batch means a dataclass here, a collator (``lightning_modules.data.collate``)
and an evaluator (``lightning_modules.evaluation``), and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# ---- items: one tokenised example, as a DataModule stores it ------------------------------------


@dataclass
class PairItem:
    """Two texts and their target: a graded score in [0, 1], or a 0/1 label."""

    a: list[int]
    b: list[int]
    target: float


@dataclass
class ContrastiveItem:
    """A positive pair with the hard negatives of its ``a`` text.

    Keys identify texts (equal texts, equal keys): ``a_key`` among the ``a`` texts,
    ``b_key`` and each negative's key among the ``b`` texts and negatives.
    """

    a: list[int]
    b: list[int]
    a_key: int
    b_key: int
    negatives: list[tuple[int, list[int]]] = field(default_factory=list)


@dataclass
class TextItem:
    """One text of a retrieval evaluation: a query (with the keys of its relevant corpus texts) or a corpus text."""

    ids: list[int]
    key: int
    is_query: bool
    relevant: list[int] = field(default_factory=list)


# ---- batches --------------------------------------------------------------------------------------


@dataclass
class TokenBatch:
    """Tokenised texts: ``input_ids (T, L)`` and ``attention_mask (T, L)``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def num_pairs(self) -> int:
        raise NotImplementedError


@dataclass
class ScoredPairsBatch(TokenBatch):
    """Aligned pairs with graded targets: ``input_ids (2B, L)``, rows ``[:B]`` the ``a`` texts and
    ``[B:]`` the ``b`` texts; ``scores (B,)`` float32 in [0, 1]. Trains ranking losses; evaluated by
    correlation."""

    scores: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return int(self.scores.shape[0])


@dataclass
class LabelledPairsBatch(TokenBatch):
    """Aligned pairs labelled 0/1: ``input_ids (2B, L)`` as in ``ScoredPairsBatch``; ``labels (B,)``
    float32. Evaluated by pair classification (ROC-AUC, F1, accuracy)."""

    labels: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class ContrastiveBatch(TokenBatch):
    """Positive pairs with ``N`` hard negatives: ``input_ids (2B + N, L)`` holds the ``a`` texts, the
    ``b`` texts, then the negatives; ``false_negatives (B, B + N)`` bool, True where a column's text
    is a known positive of the row's ``a`` text (other than the row's own): those columns must not
    count as negatives. Trains InfoNCE."""

    false_negatives: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return int(self.false_negatives.shape[0])


@dataclass
class RetrievalBatch(TokenBatch):
    """Single texts of a retrieval evaluation: ``input_ids (T, L)``; ``text_keys (T,)`` long;
    ``is_query (T,)`` bool; ``relevant``: for each text, the keys of the corpus texts relevant to it
    (empty for corpus texts), a list of lists. Evaluated by ranking each query against the corpus."""

    text_keys: torch.Tensor
    is_query: torch.Tensor
    relevant: list[list[int]]

    @property
    def num_pairs(self) -> int:
        """The queries of the batch: each is judged against the whole corpus."""
        return int(self.is_query.sum())
