"""LightningDataModules: read, check and tokenise the data once, serve batches, and name the
evaluator of their evaluation batches (``datamodule.evaluator``). What the rest of the code may
ask of them: ``LateInteractionDataModule`` (``datamodules.base``)."""

from lightning_modules.datamodules.base import LateInteractionDataModule, MiningRequest
from lightning_modules.datamodules.beir import BeirDataModule
from lightning_modules.datamodules.distillation import DistillationDataModule
from lightning_modules.datamodules.pairs import PairsDataModule
from lightning_modules.datamodules.stsb import STSBDataModule

__all__ = ["BeirDataModule", "DistillationDataModule", "LateInteractionDataModule", "MiningRequest", "PairsDataModule",
           "STSBDataModule"]
