"""Hard-negative mining: the corpus texts the current model wrongly ranks high.

``HardNegativeMining`` mines once, when ``fit`` sets up (before the training loader is built),
for a DataModule that asks for it (``data.mine_negatives``; for a BEIR set, ``data.negatives_from=model``):
the DataModule says what to mine (a ``MiningRequest``) and takes the result
(``add_hard_negatives``), and never reaches into the model itself.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch

from lightning_modules.datamodules.base import LateInteractionDataModule, MiningRequest
from lightning_modules.evaluation.corpus import rank_corpus

log = logging.getLogger(__name__)


class HardNegativeMining(pl.Callback):
    """When ``fit`` sets up, mine hard negatives with the model for a DataModule that requests them."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        # setup runs before Lightning builds the training loader (configure_optimizers asks for
        # its length), so the negatives are there from the first batch on.
        datamodule = trainer.datamodule
        if stage != "fit" or not isinstance(datamodule, LateInteractionDataModule):
            return
        request = datamodule.mining_request()
        if request is None:
            return
        pl_module.to(trainer.strategy.root_device)  # where training runs; Lightning would move it next anyway
        log.info("Mining %d hard negatives for each of %d texts among %d candidates",
                 request.k, len(request.queries), len(request.corpus))
        datamodule.add_hard_negatives(mine_hard_negatives(pl_module.model, request))


@torch.no_grad()
def mine_hard_negatives(model, request: MiningRequest) -> list[list[int]]:
    """For each query of ``request``, up to ``request.k`` corpus indices, best first: the
    best-scoring documents that are not its positives, nor closer to it than its lowest positive
    minus ``request.margin`` (likely unlabelled positives); with ``request.margin`` None, the
    best-scoring non-positives whatever their score, those that outrank a positive included.

    Each query is ranked against the whole corpus (``rank_corpus``: in shards under several
    processes, and the corpus encoding shared with the evaluations at the same weights), deep
    enough to leave ``k`` after its positives and the margin; a positive ranked below that depth
    scores under every candidate, so all of them are too close to it (none is mined).
    ``model`` (a ``LateInteractionModel``) is put in eval mode for the duration and restored after.
    """
    was_training = model.training
    model.eval()
    try:
        query_vectors = [v.float() for v in model.embed_token_ids(request.queries, request.batch_size, True,
                                                                   "mining: encoding queries")]
    finally:
        model.train(was_training)
    positives, k = request.positives, request.k
    depth = 3 * k + max((len(p) for p in positives), default=0)
    top_scores, top_indices = rank_corpus(model, query_vectors, request.corpus, depth, batch_size=request.batch_size)
    mined = []
    for scores, indices, known in zip(top_scores.tolist(), top_indices.tolist(), positives):
        found = [s for s, i in zip(scores, indices) if i in known]
        if not known or request.margin is None:
            ceiling = float("inf")
        elif len(found) < len(known):  # a positive ranked below the depth: every candidate scores above it
            ceiling = float("-inf")
        else:
            ceiling = min(found) - request.margin
        mined.append([i for s, i in zip(scores, indices) if i not in known and i >= 0 and s <= ceiling][:k])
    return mined
