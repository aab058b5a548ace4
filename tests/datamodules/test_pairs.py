"""The pairs DataModule: batches for each supervision, roles, truncation, mining, errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lightning_modules.callbacks.mining import mine_hard_negatives
from lightning_modules.data.batches import (
    ContrastiveBatch,
    ContrastiveItem,
    LabelledPairsBatch,
    QueryBatch,
    ScoredPairsBatch,
    TokenizedCorpus,
)
from lightning_modules.data.collate import ContrastiveCollator
from lightning_modules.datamodules import PairsDataModule
from lightning_modules.errors import DataError
from lightning_modules.datamodules.base import MiningRequest
from lightning_modules.evaluation import ClassificationEvaluator, CorrelationEvaluator, PairRetrievalEvaluator
from lightning_modules.encoder import EncoderOptions, TokenEncoder
from lightning_modules.maxsim import maxsim_pairwise
from lightning_modules.model import LateInteractionModel
from tests.helpers.tables import write_rows
from tests.helpers.models import TINY



def _datamodule(minilm_path, train, **options) -> PairsDataModule:
    datamodule = PairsDataModule(train=train and str(train), tokenizer_name_or_path=minilm_path, **options)
    datamodule.setup("fit")
    return datamodule


def _triplets(n=60):
    return [{"query": f"question number {i % 20}", "positive": f"answer {i}", "negative": f"wrong answer {i}"}
            for i in range(n)]


def test_graded_scores_are_scaled_by_the_observed_or_declared_range(tmp_path, minilm_path):
    rows = [{"sentence1": f"a {i}", "sentence2": f"b {i}", "score": 10 + i} for i in range(40)]
    path = write_rows(tmp_path / "g.csv", rows)
    datamodule = _datamodule(minilm_path, path, validation_fraction=0.25)
    assert datamodule.supervision == "graded" and datamodule.evaluator.primary_metric == "spearman"
    scores = [item.target for split in ("train", "validation") for item in datamodule.datasets[split]]
    assert min(scores) == 0.0 and max(scores) == 1.0
    assert len(datamodule.datasets["validation"]) == 10
    declared = _datamodule(minilm_path, path, validation_fraction=0.25, score_range=[0, 100])
    assert sorted(item.target for item in declared.datasets["train"])[0] >= 0.10
    batch = next(iter(declared.train_dataloader()))
    assert isinstance(batch, ScoredPairsBatch)
    assert isinstance(datamodule.evaluator, CorrelationEvaluator)


def test_binary_contrastive_uses_label_0_pairs_as_hard_negatives(tmp_path, minilm_path):
    rows = [{"text1": f"q{i}", "text2": f"good {i}", "label": 1} for i in range(30)]
    rows += [{"text1": f"q{i}", "text2": f"bad {i}", "label": 0} for i in range(30)]
    rows += [{"text1": "lonely", "text2": "nothing", "label": 0}]
    datamodule = _datamodule(minilm_path, write_rows(tmp_path / "b.csv", rows), validation_fraction=0.2, seed=1)
    assert datamodule.supervision == "binary" and datamodule.evaluator.primary_metric == "auc"
    assert any(n.startswith("binary_objective=auto chose contrastive") for n in datamodule.reports["train"].notes)
    train = datamodule.datasets["train"]
    assert all(item.negatives for item in train)  # every positive got its label-0 partner
    decode = datamodule.tokenizer.decode
    for item in train:
        query = decode(item.a, skip_special_tokens=True)
        assert [decode(ids, skip_special_tokens=True) for _, ids in item.negatives] == [
            query.replace("q", "bad ")]
    note = next(n for n in datamodule.reports["train"].notes if n.startswith("binary_objective=contrastive"))
    assert f"{len(train)} positive pairs train, {len(train)} label-0 pairs serve as their hard negatives" in note
    unused = 0 if "lonely" in datamodule.examples["validation"].text_a else 1
    assert f"{unused} label-0 pairs have no positive with the same text_a" in note
    val = next(iter(datamodule.val_dataloader()))
    assert isinstance(val, LabelledPairsBatch) and isinstance(datamodule.evaluator, ClassificationEvaluator)
    assert set(val.labels.tolist()) <= {0.0, 1.0}
    batch = next(iter(datamodule.train_dataloader()))
    assert isinstance(batch, ContrastiveBatch)
    pairs = batch.false_negatives.shape[0]
    assert batch.input_ids.shape[0] == 2 * pairs + (batch.false_negatives.shape[1] - pairs)


@pytest.mark.parametrize("objective", ["ranking", "auto"])
def test_binary_ranking_trains_cosent_on_all_pairs(tmp_path, minilm_path, objective):
    # Every pair has its own text_a: no label-0 pair can be a hard negative, so auto ranks.
    rows = [{"text1": f"q{i}", "text2": f"t{i}", "label": i % 2} for i in range(40)]
    datamodule = _datamodule(minilm_path, write_rows(tmp_path / "b.csv", rows), binary_objective=objective,
                             validation_fraction=0.25)
    assert len(datamodule.datasets["train"]) + len(datamodule.datasets["validation"]) == 40
    assert isinstance(next(iter(datamodule.train_dataloader())), ScoredPairsBatch)
    if objective == "auto":
        assert "binary_objective=auto chose ranking: 0% of the label-0 pairs" in " ".join(
            datamodule.reports["train"].notes)


def test_contrastive_validation_is_retrieval_over_unique_texts(tmp_path, minilm_path):
    datamodule = _datamodule(minilm_path, write_rows(tmp_path / "t.jsonl", _triplets()), validation_fraction=0.2)
    assert datamodule.supervision == "contrastive" and datamodule.evaluator.primary_metric == "mrr@10"
    validation = datamodule.examples["validation"]
    queries = datamodule.datasets["validation"]
    corpus = datamodule.corpora["validation"]
    assert len(queries) == len(set(validation.text_a))
    # The corpus: each distinct positive and hard negative of the validation pairs.
    assert len(corpus) == len(set(validation.text_b) | {n for ns in validation.negatives for n in ns})
    assert sum(len(item.judgements) for item in queries) == len(validation)
    # No query id is a corpus id: no document is ever excluded as a query's own (BEIR's rule).
    assert not {item.query_id for item in queries} & set(corpus.ids)
    batch = next(iter(datamodule.val_dataloader()))
    assert isinstance(batch, QueryBatch) and batch.corpus is corpus
    assert isinstance(datamodule.evaluator, PairRetrievalEvaluator)


def test_an_eval_corpus_of_all_splits_ranks_against_every_passage(tmp_path, minilm_path):
    rows = [{"question": f"question {i}", "passage": f"passage {i}", "negative": f"other passage {i}"} for i in range(60)]
    test = write_rows(tmp_path / "test.csv", [{"question": f"new question {i}", "passage": f"new passage {i}"}
                                             for i in range(5)])
    datamodule = _datamodule(minilm_path, write_rows(tmp_path / "qa.csv", rows), test=str(test),
                             validation_fraction=0.2, eval_corpus="all")
    corpus = datamodule.corpora["validation"]
    assert datamodule.corpora["test"] is corpus  # one corpus: encoded once per set of weights
    # Every distinct passage and negative of every split, training's included.
    assert len(corpus) == 60 + 60 + 5
    for split in ("validation", "test"):
        examples, items = datamodule.examples[split], datamodule.datasets[split]
        for item, passage in zip(items, examples.text_b):  # one pair per question here
            [relevant] = item.judgements
            assert corpus.token_ids[relevant] == datamodule.tokenizer(passage)["input_ids"]
    own = _datamodule(minilm_path, write_rows(tmp_path / "qa.csv", rows), validation_fraction=0.2)
    assert len(own.corpora["validation"]) == 2 * len(own.examples["validation"])  # the default: the split's own
    with pytest.raises(DataError, match=r"data.eval_corpus must be one of \['split', 'all'\], got 'every'"):
        _datamodule(minilm_path, write_rows(tmp_path / "qa.csv", rows), eval_corpus="every")


def test_contrastive_collator_masks_known_positives_only():
    # Two rows share text_a (key 0): each one's positive is a false negative of the other.
    items = [
        ContrastiveItem([1, 2], [3], a_key=0, b_key=10, negatives=[(12, [5])]),
        ContrastiveItem([1, 2], [4], a_key=0, b_key=11),
        ContrastiveItem([6], [7, 8, 9], a_key=1, b_key=13),
    ]
    batch = ContrastiveCollator(0, {0: {10, 11}, 1: {13}}, max_negatives=4)(items)
    assert batch.input_ids.shape == (7, 3)
    assert batch.input_ids[6].tolist() == [5, 0, 0]
    assert batch.false_negatives.tolist() == [
        [False, True, False, False],
        [True, False, False, False],
        [False, False, False, False],
    ]
    capped = ContrastiveCollator(0, {}, max_negatives=1)([replace(items[0], negatives=[(12, [5]), (14, [6])])])
    assert capped.input_ids.shape[0] == 3


def test_asymmetric_roles_mark_and_cut_queries(tmp_path, minilm_path):
    rows = [{"query": "what is " + "very " * 40 + f"long {i}", "positive": f"doc {i} " * 3} for i in range(30)]
    datamodule = _datamodule(
        minilm_path, write_rows(tmp_path / "q.jsonl", rows), roles="asymmetric", query_marker="[unused0]",
        document_marker="[unused1]", query_max_length=8,
    )
    tokenizer = datamodule.tokenizer
    q_marker, d_marker = tokenizer.convert_tokens_to_ids(["[unused0]", "[unused1]"])
    for item in datamodule.datasets["train"]:
        assert len(item.a) == 8 and item.a[1] == q_marker and item.a[-1] == tokenizer.sep_token_id
        assert item.b[1] == d_marker
    notes = " ".join(datamodule.reports["train"].notes)
    assert "query texts longer than 8 tokens were truncated" in notes
    with pytest.raises(DataError, match="marker 'not-a-token' is not a token of the vocabulary"):
        _datamodule(minilm_path, write_rows(tmp_path / "q.jsonl", rows), roles="asymmetric",
                    query_marker="not-a-token")


def test_a_validation_file_drops_leaked_pairs_from_training(tmp_path, minilm_path):
    train = write_rows(tmp_path / "train.csv", [{"text1": f"a{i}", "text2": f"b{i}", "label": i % 2} for i in range(20)])
    val = write_rows(tmp_path / "val.csv", [{"text1": "b3", "text2": "a3", "label": 1},
                                            {"text1": "x", "text2": "y", "label": 0}])
    datamodule = _datamodule(minilm_path, train, validation=str(val), binary_objective="ranking")
    assert len(datamodule.datasets["train"]) == 19 and len(datamodule.datasets["validation"]) == 2
    assert datamodule.reports["train"].dropped == {"pair also in validation": 1}
    assert datamodule.report_dict()["train"]["kept"] == 19


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"train": None}, "no training data"),
        ({"roles": "both"}, "data.roles must be one of"),
        ({"score_range": [5, 1]}, "score_range must be"),
        ({"supervision": "regression"}, "data.supervision must be one of"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path, minilm_path, options, message):
    path = write_rows(tmp_path / "g.csv", [{"sentence1": f"a{i}", "sentence2": "b", "score": i} for i in range(9)])
    with pytest.raises(DataError, match=message):
        _datamodule(minilm_path, options.pop("train", path), **options)


def test_test_loader_without_test_data_says_what_to_do(tmp_path, minilm_path):
    datamodule = _datamodule(minilm_path, write_rows(tmp_path / "t.jsonl", _triplets()))
    assert not datamodule.has_test
    with pytest.raises(DataError, match="no test data"):
        datamodule.test_dataloader()


@pytest.mark.parametrize("margin", [0.01, None], ids=["below the margin", "no ceiling"])
def test_mining_returns_the_best_non_positive_candidates_below_the_margin(minilm_path, margin):
    torch.manual_seed(0)
    encoder = TokenEncoder(EncoderOptions(minilm_path, projection_dim=8, random_init=True, config_overrides=TINY))
    model = LateInteractionModel(encoder).train()
    generator = torch.Generator().manual_seed(0)
    queries = [torch.randint(1000, 2000, (int(n),), generator=generator).tolist() for n in [5, 7, 3, 9]]
    corpus = [torch.randint(1000, 2000, (int(n),), generator=generator).tolist() for n in [4, 6, 8, 3, 5, 7, 2, 9]]
    positives = [{0}, {1, 2}, {3}, {4}]
    request = MiningRequest(queries, TokenizedCorpus([f"d{i}" for i in range(len(corpus))], corpus), positives,
                            k=3, margin=margin, batch_size=3)
    mined = mine_hard_negatives(model, request)
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        def score(q, c):  # one pair at a time, no padding: the reference
            a = model.embed(torch.tensor([queries[q]]), torch.ones(1, len(queries[q]), dtype=torch.long))
            b = model.embed(torch.tensor([corpus[c]]), torch.ones(1, len(corpus[c]), dtype=torch.long))
            return float(maxsim_pairwise(a.vectors, a.mask, b.vectors, b.mask))
        for q, known in enumerate(positives):
            ceiling = float("inf") if margin is None else min(score(q, c) for c in known) - margin
            expected = sorted((c for c in range(len(corpus)) if c not in known and score(q, c) <= ceiling),
                              key=lambda c: -score(q, c))[:3]
            assert mined[q] == expected


def test_binary_validation_with_one_label_is_an_error(tmp_path, minilm_path):
    train = write_rows(tmp_path / "train.csv", [{"text1": f"a{i}", "text2": f"b{i}", "label": i % 2} for i in range(20)])
    val = write_rows(tmp_path / "val.csv", [{"text1": "x", "text2": "y", "label": 1}, {"text1": "z", "text2": "w", "label": 1}])
    with pytest.raises(DataError, match=r"val\.csv: every validation pair is labelled 1; ROC-AUC"):
        _datamodule(minilm_path, train, validation=str(val))


def test_a_validation_file_equal_to_the_training_file_leaves_no_training_pair(tmp_path, minilm_path):
    path = write_rows(tmp_path / "t.jsonl", _triplets())
    with pytest.raises(DataError, match="(?s)no train pair is left.*pair also in validation"):
        _datamodule(minilm_path, path, validation=str(path))


def test_a_small_hold_out_is_raised_to_its_floor_and_warned_about(tmp_path, minilm_path):
    rows = [{"text1": f"sentence {i}", "text2": f"another sentence {i}", "score": i % 6} for i in range(60)]
    datamodule = _datamodule(minilm_path, write_rows(tmp_path / "mine.csv", rows))
    # 5% of 60 is 3 pairs; the floor (validation_min_pairs=100) raises it to a fifth of the file.
    assert len(datamodule.datasets["validation"]) == 12 and len(datamodule.datasets["train"]) == 48
    [warning] = datamodule.warnings
    assert "only 12 validation pairs held out of 60" in warning and "data.validation=FILE" in warning
    assert datamodule.report_dict()["warnings"] == [warning]
    assert warning in datamodule.report_dict()["validation"]["notes"]
    # A validation file of its own that is large enough: no warning.
    enough = _datamodule(minilm_path, write_rows(tmp_path / "mine.csv", rows), validation_min_pairs=10,
                         validation=str(write_rows(tmp_path / "val.csv", rows[:10])))
    assert enough.warnings == []
