"""Data: reading scored text pairs, batching them, and the DataModules."""

from lightning_modules.data.collate import PairCollator
from lightning_modules.data.errors import DataError
from lightning_modules.data.pairs_datamodule import PairsDataModule
from lightning_modules.data.reading import ScoredPairs, read_scored_pairs_csv
from lightning_modules.data.stsb import STSBDataModule

__all__ = ["DataError", "PairCollator", "PairsDataModule", "STSBDataModule", "ScoredPairs", "read_scored_pairs_csv"]
