"""Evaluators: each kind of batch finds its evaluator, metrics match independent references, and a new
kind of batch (a dataclass, a collator, an evaluator) runs through the unchanged Lightning system."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import pytorch_lightning as pl
import torch
from scipy.stats import pearsonr, spearmanr
from torch.utils.data import DataLoader

from lightning_modules.data.batches import (
    ContrastiveBatch,
    LabelledPairsBatch,
    PairItem,
    QueryBatch,
    ScoredPairsBatch,
    TokenBatch,
    TokenizedCorpus,
)
from lightning_modules.data.collate import PairCollator
from lightning_modules.evaluation import (
    ClassificationEvaluator,
    CorpusRetrievalEvaluator,
    CorrelationEvaluator,
    Evaluator,
    PairRetrievalEvaluator,
    evaluator_for,
    evaluator_named,
)
from lightning_modules.evaluation.base import score_aligned_pairs
from lightning_modules.module import MaxSimModule
from lightning_modules.tokenization import pad_token_ids
from tests.helpers.models import TINY



def _pairs(n: int = 12) -> list[PairItem]:
    generator = torch.Generator().manual_seed(0)
    return [PairItem([101, *torch.randint(1000, 5000, (3 + i % 4,), generator=generator).tolist(), 102],
                     [101, *torch.randint(1000, 5000, (2 + i % 5,), generator=generator).tolist(), 102],
                     target=(i % 5) / 4) for i in range(n)]


@pytest.fixture(scope="module")
def tiny_module(minilm_path) -> MaxSimModule:
    torch.manual_seed(0)
    return MaxSimModule(minilm_path, projection_dim=8, random_init=True, config_overrides=TINY).eval()


def test_each_batch_kind_finds_its_evaluator_and_primary_metric():
    ids, mask = torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)
    cases = [
        (ScoredPairsBatch(ids, mask, scores=torch.zeros(1)), CorrelationEvaluator, "spearman"),
        (LabelledPairsBatch(ids, mask, labels=torch.zeros(1)), ClassificationEvaluator, "auc"),
        (QueryBatch(ids, mask, query_ids=["q0", "q1"], judgements=[{0: 1}, {0: 1}],
                    corpus=TokenizedCorpus(["d0"], [[101, 102]])), CorpusRetrievalEvaluator, "ndcg@10"),
    ]
    for batch, kind, primary in cases:
        evaluator = evaluator_for(batch)
        assert type(evaluator) is kind and evaluator.primary_metric == primary
        assert type(evaluator_named(kind.__name__)) is kind
    # A variant of an evaluator (another primary metric) is found by name, as a checkpoint records it.
    assert evaluator_named("PairRetrievalEvaluator").primary_metric == "mrr@10"
    with pytest.raises(ValueError, match="unknown evaluator 'NoSuchEvaluator'"):
        evaluator_named("NoSuchEvaluator")
    with pytest.raises(TypeError, match="no evaluator reads ContrastiveBatch"):
        evaluator_for(ContrastiveBatch(ids, mask, false_negatives=torch.zeros(1, 1, dtype=torch.bool),
                                       column_keys=torch.zeros(1, dtype=torch.long),
                                       positive_keys=torch.zeros(1, 1, dtype=torch.long)))


def test_batches_count_their_pairs():
    ids, mask = torch.ones(6, 3, dtype=torch.long), torch.ones(6, 3, dtype=torch.long)
    assert ScoredPairsBatch(ids, mask, scores=torch.zeros(3)).num_pairs == 3
    assert ContrastiveBatch(ids, mask, false_negatives=torch.zeros(2, 4, dtype=torch.bool),
                            column_keys=torch.arange(4), positive_keys=torch.arange(2)[:, None]).num_pairs == 2
    queries = QueryBatch(ids, mask, query_ids=[f"q{i}" for i in range(6)], judgements=[{0: 1}] * 6,
                         corpus=TokenizedCorpus(["d0"], [[101, 102]]))
    assert queries.num_pairs == 6


def test_correlation_evaluator_matches_scipy_over_several_batches(tiny_module):
    items = _pairs(12)
    evaluator = CorrelationEvaluator()
    predicted = []
    for start in (0, 5, 9):  # uneven batches: the correlation is that of the whole split
        batch = PairCollator(0)(items[start : {0: 5, 5: 9, 9: 12}[start]])
        with torch.no_grad():
            predicted.append(evaluator.update(tiny_module.model, batch)["predicted"])
    metrics = evaluator.compute(tiny_module.model, "val")
    predicted = torch.cat(predicted).numpy()
    gold = [item.target for item in items]
    assert float(metrics["spearman"]) == pytest.approx(spearmanr(predicted, gold).statistic, abs=1e-5)
    assert float(metrics["pearson"]) == pytest.approx(pearsonr(predicted, gold).statistic, abs=1e-5)
    # compute() resets: the next split starts empty.
    assert not evaluator.spearman.update_called


def test_classification_thresholds_are_chosen_on_validation_only(tiny_module):
    items = [PairItem(item.a, item.b, float(item.target >= 0.5)) for item in _pairs(12)]
    evaluator = ClassificationEvaluator()
    collate = PairCollator(0, labelled=True)
    with torch.no_grad():
        evaluator.update(tiny_module.model, collate(items))
        during_sanity_check = evaluator.compute(tiny_module.model, "val", record=False)
        assert torch.isnan(evaluator.decision_thresholds).all()  # a sanity check records nothing
        evaluator.update(tiny_module.model, collate(items))
        validation = evaluator.compute(tiny_module.model, "val")
        evaluator.update(tiny_module.model, collate(items))
        test = evaluator.compute(tiny_module.model, "test")
    assert during_sanity_check["f1_threshold"] == validation["f1_threshold"]
    assert evaluator.decision_thresholds.tolist() == pytest.approx(
        [validation["f1_threshold"], validation["accuracy_threshold"]])
    # The same pairs on test, at validation's thresholds: validation's F1 and accuracy, and no thresholds.
    assert test["f1"] == pytest.approx(validation["f1"]) and test["accuracy"] == pytest.approx(validation["accuracy"])
    assert "f1_threshold" not in test


# ---- a new kind of batch: a dataclass, a collator and an evaluator, and nothing else -----------------


@dataclass
class WeightedPairsBatch(TokenBatch):
    """Aligned pairs with a weight each: a kind of batch the library does not know."""

    weights: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return int(self.weights.shape[0])


def collate_weighted(items: list[PairItem]) -> WeightedPairsBatch:
    input_ids, attention_mask = pad_token_ids([i.a for i in items] + [i.b for i in items], 0)
    return WeightedPairsBatch(input_ids, attention_mask, weights=torch.tensor([i.target + 1 for i in items]))


class WeightedMeanEvaluator(Evaluator):
    """The weighted mean MaxSim of the pairs."""

    batch_type = WeightedPairsBatch
    primary_metric = "weighted_mean"

    def __init__(self) -> None:
        super().__init__()
        self.total, self.weight = 0.0, 0.0

    def update(self, model, batch: WeightedPairsBatch) -> dict:
        scores = score_aligned_pairs(model, batch)
        self.total += float((scores * batch.weights).sum())
        self.weight += float(batch.weights.sum())
        return {"predicted": scores.detach(), "gold": batch.weights}

    def compute(self, model, split: str, record: bool = True) -> dict:
        value, self.total, self.weight = self.total / self.weight, 0.0, 0.0
        return {"weighted_mean": value}


class WeightedPairsDataModule(pl.LightningDataModule):
    def __init__(self, items: list[PairItem]) -> None:
        super().__init__()
        self.items = items
        self.evaluator = WeightedMeanEvaluator()

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.items, batch_size=5, collate_fn=collate_weighted)


def test_a_new_kind_of_batch_runs_through_the_unchanged_system(minilm_path):
    torch.manual_seed(0)
    module = MaxSimModule(minilm_path, projection_dim=8, random_init=True, config_overrides=TINY)
    items = _pairs(12)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(module, datamodule=WeightedPairsDataModule(items), verbose=False)[0]
    assert isinstance(module.evaluator, WeightedMeanEvaluator)
    assert evaluator_for(collate_weighted(items[:1])).primary_metric == "weighted_mean"
    # The reference: every pair scored alone with the model, outside Lightning.
    module.eval()
    with torch.no_grad():
        scores = torch.cat([module(*pad_token_ids([item.a, item.b], 0)) for item in items])
    weights = torch.tensor([item.target + 1 for item in items])
    expected = 100 * float((scores * weights).sum() / weights.sum())
    assert logged["val/weighted_mean"] == pytest.approx(expected, abs=1e-3)
