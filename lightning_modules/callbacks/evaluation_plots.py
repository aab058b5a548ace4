"""Pictures of each validation: predicted against gold scores and how a few fixed pairs match token by
token (pair data), or each query's nDCG@10 and relevant document's rank before and after training and
how a few queries match their top document (retrieval)."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.trainer.states import TrainerFn

from lightning_modules.datamodules.base import LateInteractionDataModule
from lightning_modules.evaluation.beir import RANKING_DEPTH, CorpusRetrievalEvaluator, RankedSplit
from lightning_modules.plots import (
    draw_query_metric_change,
    draw_relevant_rank,
    draw_score_scatter,
    draw_token_heatmap,
    token_similarity_from_ids,
)

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
    Only the rank-zero process draws; under DDP the scatter gathers every process's
    predictions first.

    Retrieval validation (a ``CorpusRetrievalEvaluator``: a BEIR set, or contrastive
    pairs) has no pairs to score. It keeps the zero-shot validation's per-query results
    instead and, after every validation of ``fit``, compares this validation's with them,
    overwriting (so the files left are those of fit's last validation):

    * ``retrieval_per_query_ndcg.png``: each query's nDCG@10 after against before, with
      the counts of queries better, worse and unchanged;
    * ``retrieval_relevant_rank.png``: how many queries have their first relevant
      document at rank 1, 2, 3, 4-5, ..., 51-100, or beyond 100, before and after;
    * ``retrieval_heatmap_{k}.png`` for ``k < num_pairs``: the token heatmap of a query
      against its top document, for the most improved, the most worsened, the next most
      improved... queries (``_queries_to_draw``);

    logged to W&B as ``val/retrieval/per_query_ndcg``, ``val/retrieval/relevant_rank`` and
    ``val/retrieval/heatmap{k}``. Without a zero-shot validation (``zero_shot=false``, a
    resumed run) they show the trained model alone and their titles say so.

    Args:
        num_pairs: validation pairs (or retrieval queries) drawn as heatmaps each time (0: none).
        subdir: the folder, inside the run folder, that receives the pictures.
    """

    def __init__(self, num_pairs: int = 3, subdir: str = "plots") -> None:
        if num_pairs < 0:
            raise ValueError(f"num_pairs must be >= 0, got {num_pairs}")
        self.num_pairs = num_pairs
        self.subdir = subdir
        self._predicted: list[torch.Tensor] = []
        self._gold: list[torch.Tensor] = []
        self._zero_shot: RankedSplit | None = None  # retrieval: the untrained model's per-query results

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

    def on_validation_end(self, trainer, pl_module) -> None:
        # After on_validation_epoch_end: the module's own epoch end, which ranks the queries
        # (evaluator.compute), runs after the callbacks' one.
        evaluator = pl_module.evaluator
        ranked = evaluator.last_split if isinstance(evaluator, CorpusRetrievalEvaluator) else None
        if ranked is None or ranked.split != "val" or not _wanted(trainer):
            return
        if trainer.state.fn == TrainerFn.VALIDATING:  # the zero-shot validation: what training is compared with
            self._zero_shot = ranked
        elif trainer.is_global_zero:  # every process holds the same rankings
            self._draw_retrieval(trainer, pl_module.model, ranked)

    def _draw_retrieval(self, trainer, model, ranked: RankedSplit) -> None:
        """The three kinds of retrieval pictures of ``ranked`` (fit's validation) against the zero-shot one."""
        folder = Path(trainer.default_root_dir) / self.subdir
        step, before = trainer.global_step, self._zero_shot
        title = f"validation, step {step}, against zero-shot" if before else f"validation, step {step}"
        after_ndcg = _ndcg(ranked)
        before_ndcg = _ndcg(before) if before else None
        path = folder / "retrieval_per_query_ndcg.png"
        draw_query_metric_change(after_ndcg, before_ndcg, path, title)
        _log_images(trainer.loggers, "val/retrieval/per_query_ndcg", [path], step)

        path = folder / "retrieval_relevant_rank.png"
        draw_relevant_rank([q.relevant_rank for q in ranked.queries.values()],
                           [q.relevant_rank for q in before.queries.values()] if before else None,
                           path, title, depth=RANKING_DEPTH)
        _log_images(trainer.loggers, "val/retrieval/relevant_rank", [path], step)

        for k, query_id in enumerate(_queries_to_draw(after_ndcg, before_ndcg, self.num_pairs)):
            query = ranked.queries[query_id]
            if query.top_document is None:  # nothing was ranked (every document excluded)
                continue
            was = f"{before_ndcg[query_id]:.2f} -> " if before_ndcg and query_id in before_ndcg else ""
            verdict = "relevant" if query.relevant_rank == 1 else "not relevant"
            match = token_similarity_from_ids(model, query.token_ids, ranked.corpus.token_ids[query.top_document])
            path = draw_token_heatmap(match, folder / f"retrieval_heatmap_{k}.png",
                                      title=f"query {query_id}, nDCG@10 {was}{after_ndcg[query_id]:.2f}, step {step}\n"
                                            f"against its top document {ranked.corpus.ids[query.top_document]} "
                                            f"({verdict})")
            _log_images(trainer.loggers, f"val/retrieval/heatmap{k}", [path], step)


def _ndcg(ranked: RankedSplit) -> dict[str, float]:
    """Query id -> nDCG@10 of ``ranked``."""
    return {query_id: query.metrics["ndcg@10"] for query_id, query in ranked.queries.items()}


def _queries_to_draw(after: dict[str, float], before: dict[str, float] | None, count: int) -> list[str]:
    """``count`` query ids (of ``after``: query id -> nDCG@10) to draw: with ``before``, the most
    improved, the most worsened, the next most improved, ... then unchanged queries, the worst first;
    without, the worst queries after training (where a user looks for what went wrong). Ties: by id."""
    if before is None:
        return sorted(after, key=lambda q: (after[q], q))[:count]
    change = {q: after[q] - before[q] for q in sorted(after.keys() & before.keys())}
    improved = sorted((q for q in change if change[q] > 0), key=lambda q: (-change[q], q))
    worsened = sorted((q for q in change if change[q] < 0), key=lambda q: (change[q], q))
    unchanged = sorted((q for q in change if change[q] == 0), key=lambda q: (after[q], q))
    alternating = [q for pair in itertools.zip_longest(improved, worsened) for q in pair if q is not None]
    return (alternating + unchanged)[:count]


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
