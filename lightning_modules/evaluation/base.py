"""The evaluator contract: one evaluator per kind of evaluation batch.

Shaped like sentence-transformers' ``SentenceEvaluator``: an evaluator names its
``primary_metric`` (what picks the best checkpoint and what ``optimized_metric: auto``
becomes, as ``val/<primary_metric>``) and returns a dict of named metrics. It is an
``nn.Module`` holding torchmetrics state, so it moves to the model's device and its
state is gathered from every process when computed.

A subclass declares the ``batch_type`` it reads and registers itself: ``evaluator_for``
finds it from a batch, so a new kind of batch brings its evaluator with it and the
Lightning system needs no change.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from lightning_modules.data.batches import TokenBatch

# batch type -> the evaluator class that reads it, and class name -> every evaluator class (a
# variant too, such as one with another primary metric); filled by Evaluator.__init_subclass__.
EVALUATORS: dict[type, type[Evaluator]] = {}
EVALUATORS_BY_NAME: dict[str, type[Evaluator]] = {}


class Evaluator(nn.Module):
    """Metrics of one split, accumulated batch by batch.

    Subclasses set ``batch_type`` and ``primary_metric`` and implement:

    * ``update(model, batch)``: score the batch with the model (a ``LateInteractionModel``)
      and accumulate; return ``{"predicted": (B,), "gold": (B,)}`` for callbacks that draw
      pairs (``EvaluationPlots``), or None when the batch holds no pairs;
    * ``compute(model, split, record=True)``: the split's metrics as ``{name: value}`` in
      natural units (correlations and rates in [0, 1]; the system logs them x100, except
      names ending in ``threshold``), then reset for the next split. ``record``: keep what
      this split decides for later ones (validation's decision thresholds); False during
      Lightning's sanity check.
    """

    batch_type: ClassVar[type[TokenBatch]]
    primary_metric: ClassVar[str]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        EVALUATORS_BY_NAME[cls.__name__] = cls
        if "batch_type" in cls.__dict__:
            EVALUATORS[cls.batch_type] = cls

    def update(self, model, batch: TokenBatch) -> dict | None:
        raise NotImplementedError

    def compute(self, model, split: str, record: bool = True) -> dict[str, torch.Tensor | float]:
        raise NotImplementedError


def evaluator_for(batch: TokenBatch) -> Evaluator:
    """A new evaluator for batches of ``batch``'s kind."""
    for kind in type(batch).__mro__:
        if kind in EVALUATORS:
            return EVALUATORS[kind]()
    raise TypeError(f"no evaluator reads {type(batch).__name__}; known batch kinds: "
                    f"{sorted(k.__name__ for k in EVALUATORS)}")


def evaluator_named(name: str) -> Evaluator:
    """A new evaluator of the class called ``name`` (as a checkpoint records it)."""
    if name not in EVALUATORS_BY_NAME:
        raise ValueError(f"unknown evaluator {name!r}; known: {sorted(EVALUATORS_BY_NAME)}")
    return EVALUATORS_BY_NAME[name]()


def score_aligned_pairs(model, batch) -> torch.Tensor:
    """MaxSim of each aligned pair of a pair batch (``input_ids (2B, L)``: ``a`` texts then ``b``): ``(B,)``."""
    a, b = model.embed(batch.input_ids, batch.attention_mask).split(batch.num_pairs)
    return model.score_pairs(a, b)
