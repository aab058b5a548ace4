"""Training objectives, one per file. Each takes scores, not embeddings, so any
similarity (MaxSim in any direction or reduction) can be trained with any loss."""

from lightning_modules.losses.cosent import CoSENTLoss
from lightning_modules.losses.cross_device import UnequalBatchesError, cross_device_infonce
from lightning_modules.losses.distillation import KLDistillationLoss, MarginMSELoss, distillation_loss
from lightning_modules.losses.infonce import InfoNCELoss
from lightning_modules.losses.regression import ScoreRegressionLoss

__all__ = ["CoSENTLoss", "InfoNCELoss", "KLDistillationLoss", "MarginMSELoss", "ScoreRegressionLoss",
           "UnequalBatchesError", "cross_device_infonce", "distillation_loss"]
