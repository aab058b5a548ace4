"""Pictures of each validation: predicted against gold scores, and how a few fixed pairs match token by token."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.trainer.states import TrainerFn

from lightning_modules.datamodules.base import LateInteractionDataModule
from lightning_modules.plots import draw_score_scatter, draw_token_heatmap, token_similarity_from_ids

log = logging.getLogger(__name__)


class EvaluationPlots(pl.Callback):
    """After each validation, save a score scatter and token heatmaps into the run folder.

    Writes, into ``<trainer.default_root_dir>/<subdir>/``:

    * ``val_scatter_step{global_step:06d}.png``: every validation pair's predicted MaxSim
      against its gold score (or 0/1 label), with Spearman in the title;
    * ``val_pair{k}_step{global_step:06d}.png`` for ``k < num_pairs``: the token-by-token
      cosine heatmap (``lightning_modules.plots.draw_token_heatmap``) of the first
      ``num_pairs`` validation pairs of the DataModule, the same pairs every time.

    and logs them to W&B (``val/scatter``, ``val/token_similarity/pair{k}``) when a
    ``WandbLogger`` is in use.

    When: after every validation of ``fit`` (not the sanity check), and after the
    zero-shot validation that runs before training (a ``trainer.validate`` at global
    step 0), which gives the untrained model's pictures to compare with. Other
    ``trainer.validate`` calls draw nothing, so they never overwrite a picture of fit.
    Retrieval validation (PairsDataModule with contrastive data) returns no pair
    scores and has no pairs: it draws nothing. Only the rank-zero process draws;
    under DDP the scatter gathers every process's predictions first.

    Args:
        num_pairs: validation pairs drawn as heatmaps each time (0: none).
        subdir: the folder, inside the run folder, that receives the pictures.
    """

    def __init__(self, num_pairs: int = 3, subdir: str = "plots") -> None:
        if num_pairs < 0:
            raise ValueError(f"num_pairs must be >= 0, got {num_pairs}")
        self.num_pairs = num_pairs
        self.subdir = subdir
        self._predicted: list[torch.Tensor] = []
        self._gold: list[torch.Tensor] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._predicted, self._gold = [], []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if outputs is None or not _wanted(trainer):  # retrieval batches return None
            return
        self._predicted.append(outputs["predicted"].detach().float().cpu())
        self._gold.append(outputs["gold"].detach().float().cpu())

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not _wanted(trainer):
            return
        # Every process takes part in the gather; only rank zero draws.
        predicted, gold = _gather(self._predicted), _gather(self._gold)
        self._predicted, self._gold = [], []
        if not trainer.is_global_zero:
            return
        folder = Path(trainer.default_root_dir) / self.subdir
        step = trainer.global_step
        if predicted.numel():
            path = draw_score_scatter(predicted, gold, folder / f"val_scatter_step{step:06d}.png",
                                      title=f"validation, epoch {trainer.current_epoch}, step {step}")
            _log_images(trainer.loggers, "val/scatter", [path], step)
        pairs = _validation_pairs(trainer.datamodule, self.num_pairs)
        for k, (a, b, gold_score) in enumerate(pairs):
            path = draw_token_heatmap(token_similarity_from_ids(pl_module.model, a, b),
                                      folder / f"val_pair{k}_step{step:06d}.png",
                                      title=f"validation pair {k} (gold {gold_score:.2f}), step {step}")
            # One key per pair: W&B shows how the pair's matching evolves over steps, and
            # pictures of different sizes (token counts) never share a panel.
            _log_images(trainer.loggers, f"val/token_similarity/pair{k}", [path], step)


def _wanted(trainer) -> bool:
    """Validation of fit (no sanity check), or the zero-shot validation before any training step."""
    if trainer.sanity_checking:
        return False
    if trainer.state.fn == TrainerFn.FITTING:
        return True
    return trainer.state.fn == TrainerFn.VALIDATING and trainer.global_step == 0


def _gather(chunks: list[torch.Tensor]) -> torch.Tensor:
    """The concatenation of ``chunks`` (``(N_i,)`` CPU tensors) over every process: ``(N,)``."""
    values = torch.cat(chunks) if chunks else torch.empty(0)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # Objects, not tensors: the processes may hold different numbers of pairs.
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, values)
        values = torch.cat(gathered)
    return values


def _validation_pairs(datamodule, count: int) -> list[tuple[list[int], list[int], float]]:
    """The first ``count`` validation pairs as ``(ids_a, ids_b, gold)``: the token ids exactly as
    validation scored them (markers included), so no settings are needed to tokenise again.

    Empty when there is no DataModule of ours, or validation holds no pairs (it ranks queries).
    """
    return datamodule.validation_pairs(count) if isinstance(datamodule, LateInteractionDataModule) else []


def _log_images(loggers, key: str, paths: list[Path], step: int) -> None:
    """Send the pictures to every ``WandbLogger`` among ``loggers``."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(p) for p in paths], step=step)
