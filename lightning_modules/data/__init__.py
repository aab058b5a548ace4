"""Data below the Lightning layer: reading and checking text pairs (formats, columns, pairs,
reading, splitting), the items and batches that flow through the loaders (``batches``), one
collator per kind of batch (``collate``), and the loaders' samplers (``loading``).

The DataModules that put these together live in ``lightning_modules.datamodules``.
"""

from lightning_modules.data.batches import (
    ContrastiveBatch,
    LabelledPairsBatch,
    RetrievalBatch,
    ScoredPairsBatch,
    TokenBatch,
)
from lightning_modules.data.collate import ContrastiveCollator, PairCollator, RetrievalCollator
from lightning_modules.data.reading import ScoredPairs, read_scored_pairs_csv
from lightning_modules.errors import DataError

__all__ = [
    "ContrastiveBatch",
    "ContrastiveCollator",
    "DataError",
    "LabelledPairsBatch",
    "PairCollator",
    "RetrievalBatch",
    "RetrievalCollator",
    "ScoredPairs",
    "ScoredPairsBatch",
    "TokenBatch",
    "read_scored_pairs_csv",
]
