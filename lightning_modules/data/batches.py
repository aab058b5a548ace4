"""What flows through the loaders: one dataclass per kind of item and per kind of batch.

A collator turns a list of items into one batch; the Lightning system and the evaluators
dispatch on the batch's type, never on which keys it holds. Lightning moves every tensor
field to the device (a dataclass is a collection to it); other fields pass through as they are.

Every batch holds ``input_ids (T, L)`` and ``attention_mask (T, L)``, padded to its own longest
text, so the encoder runs once per batch, and says how many training pairs it holds
(``num_pairs``: what throughput counts and what ``self.log`` takes as ``batch_size``).
A training batch also says which items of the training split it holds (``item_indices``), so
that a message about a bad batch can name its rows.

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


# ---- batches --------------------------------------------------------------------------------------


@dataclass
class TokenBatch:
    """Tokenised texts: ``input_ids (T, L)`` and ``attention_mask (T, L)``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    # Positions of the batch's items in the training split (set by the training loader).
    item_indices: tuple[int, ...] = field(default=(), kw_only=True)

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
    count as negatives. Trains InfoNCE.

    The same facts as text keys, for masking columns that come from other processes
    (``model.gather_across_devices``): ``column_keys (B + N,)`` int64, the key of each ``b`` text
    and negative; ``positive_keys (B, P)`` int64, the keys of all known positives of each row's
    ``a`` text (its own ``b`` included), padded with -1."""

    false_negatives: torch.Tensor
    column_keys: torch.Tensor
    positive_keys: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return int(self.false_negatives.shape[0])


# ---- retrieval against a whole corpus -------------------------------------------------------------


class TokenizedCorpus:
    """The documents every query of a retrieval evaluation is ranked against: ``ids`` (their corpus
    ids, in order; ``position`` maps an id to its index) and ``token_ids`` (one list of token ids each).

    Shared, never copied: each ``QueryBatch`` points to the same one (Lightning deep-copies batches
    when it moves them to a device, and a corpus can be large), so that the evaluation layer can
    keep one encoding of it per set of weights (``lightning_modules.evaluation.corpus``) for
    validation, test and mining alike. Not a dataclass on purpose: Lightning would walk into it on
    every batch.
    """

    def __init__(self, ids: list[str], token_ids: list[list[int]]) -> None:
        if len(ids) != len(token_ids):
            raise ValueError(f"{len(ids)} corpus ids for {len(token_ids)} tokenised documents")
        self.ids = list(ids)
        self.position = {doc_id: i for i, doc_id in enumerate(self.ids)}  # corpus id -> index
        self.token_ids = token_ids

    def __len__(self) -> int:
        return len(self.ids)

    def __deepcopy__(self, memo) -> TokenizedCorpus:
        return self

    def __repr__(self) -> str:
        return f"TokenizedCorpus({len(self)} documents)"


@dataclass
class QueryItem:
    """One query of a retrieval evaluation: its token ids, its id, and its judgements
    (corpus index -> grade > 0)."""

    ids: list[int]
    query_id: str
    judgements: dict[int, int]


@dataclass
class QueryBatch(TokenBatch):
    """Queries to rank against a whole corpus: ``input_ids (Q, L)``; ``query_ids`` (Q strings);
    ``judgements``: for each query, ``{corpus index: grade}`` of its relevant documents;
    ``corpus``: the ``TokenizedCorpus`` they are ranked against (the same object in every batch).
    Evaluated by nDCG@10, MRR@10, Recall@10 and Recall@100."""

    query_ids: list[str]
    judgements: list[dict[int, int]]
    corpus: TokenizedCorpus

    @property
    def num_pairs(self) -> int:
        return len(self.query_ids)


# ---- score distillation ----------------------------------------------------------------------------


@dataclass
class DistillationItem:
    """One query with the teacher's scored candidates: ``query`` (its position among the DataModule's
    tokenised queries), ``documents`` (corpus indices) and ``scores`` (the teacher's, one a document).
    Positions, not texts: the tokenised queries and corpus are shared by the collator, never copied
    into items."""

    query: int
    documents: list[int]
    scores: list[float]


@dataclass
class DistillationBatch(TokenBatch):
    """Queries with ``N`` candidate documents each and the teacher's scores of them:
    ``input_ids (Q + Q * N, L)``, rows ``[:Q]`` the queries, then query 0's ``N`` documents, query
    1's, ...; ``teacher_scores (Q, N)`` float32, column 0 the teacher's best-scored candidate of the
    row. Trains the distillation losses (``lightning_modules.losses.distillation``)."""

    teacher_scores: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return int(self.teacher_scores.shape[0])
