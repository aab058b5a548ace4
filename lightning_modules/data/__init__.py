"""Data below the Lightning layer: reading and checking text pairs (formats, columns, pairs,
reading, splitting) and retrieval benchmarks in BEIR's layout (``beir``), the items and batches that flow through the loaders (``batches``), one
collator per kind of batch (``collate``), and the loaders' samplers (``loading``).

The DataModules that put these together live in ``lightning_modules.datamodules``.
"""

from lightning_modules.data.batches import (
    ContrastiveBatch,
    LabelledPairsBatch,
    QueryBatch,
    ScoredPairsBatch,
    TokenBatch,
    TokenizedCorpus,
)
from lightning_modules.data.beir import BeirData, read_beir
from lightning_modules.data.collate import ContrastiveCollator, PairCollator, QueryCollator
from lightning_modules.data.reading import ScoredPairs, read_scored_pairs_csv
from lightning_modules.errors import DataError

__all__ = [
    "BeirData",
    "ContrastiveBatch",
    "ContrastiveCollator",
    "DataError",
    "LabelledPairsBatch",
    "PairCollator",
    "QueryBatch",
    "QueryCollator",
    "ScoredPairs",
    "ScoredPairsBatch",
    "TokenBatch",
    "TokenizedCorpus",
    "read_beir",
    "read_scored_pairs_csv",
]
