"""BeirDataModule: the hold-out, training pairs and their masks, negatives, and its errors."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.callbacks.mining import mine_hard_negatives
from lightning_modules.data.batches import ContrastiveBatch, QueryBatch
from lightning_modules.datamodules import BeirDataModule
from lightning_modules.errors import DataError
from tests.helpers.beir import write_beir
from tests.helpers.models import tiny_model

TOPICS = ["insulin resistance in liver cells", "tumor growth in mouse models", "vitamin D and bone density",
          "virus entry into immune cells", "statin dose and heart risk", "gene expression in the brain"]


@pytest.fixture
def folder(tmp_path):
    corpus = [{"_id": f"d{i}", "title": f"Study {i}", "text": f"We report on {TOPICS[i % 6]}, case {i}."} for i in range(30)]
    queries = [{"_id": f"q{i}", "text": f"Is there evidence about {TOPICS[i % 6]} (claim {i})?"} for i in range(40)]
    # Train queries q0..q29: two relevant documents for the first six; test queries q30..q39.
    train = [(f"q{i}", f"d{i}", 1) for i in range(30)] + [(f"q{i}", f"d{(i + 6) % 30}", 1) for i in range(6)]
    test = [(f"q{i}", f"d{i - 30}", 1) for i in range(30, 40)]
    return write_beir(tmp_path / "beir", corpus, queries, {"train": train, "test": test})


def _datamodule(folder, minilm_path, **options):
    options = {"negatives_from": "none", "validation_min_queries": 5, "batch_size": 8, "seed": 3, **options}
    datamodule = BeirDataModule(str(folder), minilm_path, **options)
    datamodule.setup("fit")
    return datamodule


def test_an_empty_document_stays_judgeable_and_the_run_reports_it(tmp_path, minilm_path):
    corpus = [{"_id": f"d{i}", "title": "", "text": "" if i == 3 else f"A study of {TOPICS[i % 6]}."} for i in range(30)]
    queries = [{"_id": f"q{i}", "text": f"Evidence on {TOPICS[i % 6]}, claim {i}?"} for i in range(40)]
    qrels = {"train": [(f"q{i}", f"d{i % 30}", 1) for i in range(30)], "test": [("q30", "d3", 1), ("q31", "d4", 1)]}
    datamodule = _datamodule(write_beir(tmp_path / "beir", corpus, queries, qrels), minilm_path)
    assert len(datamodule.corpus) == 30 and datamodule.corpus.token_ids[3] == [101, 102]  # [CLS] [SEP]
    assert [item.judgements for item in datamodule.datasets["test"]] == [{3: 1}, {4: 1}]
    [warning] = datamodule.report_dict()["warnings"]
    assert "1 document" in warning and "'d3'" in warning


def test_the_hold_out_takes_whole_queries_seeded_and_never_test_ones(folder, minilm_path):
    first = _datamodule(folder, minilm_path)
    again = _datamodule(folder, minilm_path)
    other = _datamodule(folder, minilm_path, seed=4)
    train, validation = set(first.splits["train"]), set(first.splits["validation"])
    assert len(validation) == 5 and not train & validation and train | validation == {f"q{i}" for i in range(30)}
    assert not (train | validation) & set(first.splits["test"])
    assert set(again.splits["validation"]) == validation != set(other.splits["validation"])
    # Every pair of a training query trains; none of a validation query does.
    trained = {first._train_queries[item.a_key] for item in first.datasets["train"]}
    assert trained == train
    assert len(first.datasets["train"]) == sum(len(d) for d in first.splits["train"].values())


def test_a_query_judged_in_test_is_dropped_from_training(folder, minilm_path, tmp_path):
    rows = [(f"q{i}", f"d{i}", 1) for i in range(30)]
    shared = write_beir(tmp_path / "shared", [{"_id": f"d{i}", "title": "", "text": TOPICS[i % 6]} for i in range(30)],
                        [{"_id": f"q{i}", "text": TOPICS[i % 6]} for i in range(30)],
                        {"train": rows, "test": rows[:3]})
    datamodule = _datamodule(shared, minilm_path)
    assert not {"q0", "q1", "q2"} & (set(datamodule.splits["train"]) | set(datamodule.splits["validation"]))
    assert any("dropped 3 queries that are also judged in test" in note for note in datamodule.notes)


def test_training_batches_mask_each_querys_other_relevant_documents(folder, minilm_path):
    datamodule = _datamodule(folder, minilm_path, batch_size=64)
    batch = next(iter(datamodule.train_dataloader()))
    assert isinstance(batch, ContrastiveBatch)
    pairs = batch.num_pairs
    items = [datamodule.datasets["train"][i] for i in range(len(datamodule.datasets["train"]))]
    # Rebuild which column holds which document, then check the mask against the judgements.
    documents = [row[row.bool()] for row in (batch.input_ids[pairs:] * batch.attention_mask[pairs:])]
    position = {tuple(item.b): item.b_key for item in items}
    column_docs = [position[tuple(d.tolist())] for d in documents]
    queries = [row[row.bool()].tolist() for row in (batch.input_ids[:pairs] * batch.attention_mask[:pairs])]
    query_key = {tuple(item.a): item.a_key for item in items}
    for row, query in enumerate(queries):
        relevant = datamodule._positives[query_key[tuple(query)]]
        for column, doc in enumerate(column_docs):
            expected = doc in relevant and column != row
            assert bool(batch.false_negatives[row, column]) == expected
    assert batch.false_negatives.any()  # the fixture's two-document queries put one to the test


def test_evaluation_batches_rank_against_the_one_shared_corpus(folder, minilm_path):
    # Even with loader workers, which would each send back their own copy of the corpus.
    datamodule = _datamodule(folder, minilm_path, eval_batch_size=4, num_workers=2)
    batches = list(datamodule.test_dataloader())
    assert all(isinstance(b, QueryBatch) and b.corpus is datamodule.corpus for b in batches)
    assert sorted(q for b in batches for q in b.query_ids) == sorted(f"q{i}" for i in range(30, 40))
    assert all(len(j) == 1 for b in batches for j in b.judgements)


def test_bm25_negatives_are_lexical_neighbours_and_never_relevant(folder, minilm_path):
    pytest.importorskip("bm25s")
    datamodule = _datamodule(folder, minilm_path, negatives_from="bm25", mine_negatives=3)
    for item in datamodule.datasets["train"]:
        keys = [k for k, _ in item.negatives]
        assert len(keys) == 3 and not set(keys) & datamodule._positives[item.a_key]
    # Query q1 is about topic 1: its BM25 neighbours share that topic's words.
    item = next(i for i in datamodule.datasets["train"] if datamodule._train_queries[i.a_key] == "q1")
    assert all(k % 6 == 1 for k, _ in item.negatives)
    assert datamodule.mining_request() is None


def test_model_mining_over_the_corpus_skips_relevant_documents_and_those_above_them(folder, minilm_path):
    datamodule = _datamodule(folder, minilm_path, negatives_from="model", mine_negatives=4, mine_margin=0.0)
    request = datamodule.mining_request()
    model = tiny_model(minilm_path)
    assert (request.k, request.margin) == (4, 0.0)
    mined = mine_hard_negatives(model, request)
    vectors = model.embed_token_ids(request.corpus.token_ids)
    scores = model.score_vectors(model.embed_token_ids(request.queries), vectors)
    for row, negatives in enumerate(mined):
        known = request.positives[row]
        assert not set(negatives) & known
        ceiling = scores[row, sorted(known)].min()
        allowed = [i for i in torch.argsort(scores[row], descending=True, stable=True).tolist()
                   if i not in known and scores[row, i] <= ceiling + 1e-6]
        assert negatives == allowed[: len(negatives)]
    datamodule.add_hard_negatives(mined)
    assert datamodule.mining_request() is None


def test_model_negatives_without_the_mining_callback_are_refused(folder, minilm_path):
    datamodule = _datamodule(folder, minilm_path, negatives_from="model")
    with pytest.raises(DataError, match="no HardNegativeMining callback mined"):
        datamodule.train_dataloader()


@pytest.mark.parametrize(("option", "message"), [
    ({"negatives_from": "dense"}, "negatives_from must be one of"),
    ({"roles": "both"}, "roles must be one of"),
    ({"validation_fraction": 1.5}, "validation_fraction must be between 0 and 1"),
    ({"limit_corpus": 0}, "limit_corpus must be at least 1"),
    ({"limit_eval_queries": -2}, "limit_eval_queries must be at least 1"),
])
def test_bad_options_fail_before_any_reading(folder, minilm_path, option, message):
    with pytest.raises(DataError, match=message):
        BeirDataModule(str(folder), minilm_path, **option)


def test_a_slice_keeps_every_judged_document_of_its_queries_and_seeded_others(folder, minilm_path):
    whole = _datamodule(folder, minilm_path)
    sliced = _datamodule(folder, minilm_path, limit_train_queries=6, limit_eval_queries=4, limit_corpus=20)
    again = _datamodule(folder, minilm_path, limit_train_queries=6, limit_eval_queries=4, limit_corpus=20)
    other = _datamodule(folder, minilm_path, limit_train_queries=6, limit_eval_queries=4, limit_corpus=20, seed=4)
    assert [len(sliced.splits[s]) for s in ("train", "validation", "test")] == [6, 4, 4]
    for split in ("validation", "test"):  # subsets of the full run's queries, with all their judgements
        assert set(sliced.splits[split]) < set(whole.splits[split])
        assert all(sliced.splits[split][q] == whole.splits[split][q] for q in sliced.splits[split])
    kept = sliced.corpus.ids
    judged = {d for split in sliced.splits.values() for judgements in split.values() for d in judgements}
    assert len(kept) == 20 and judged <= set(kept)  # every judged document, then others up to the limit
    assert kept == [d for d in whole.corpus.ids if d in set(kept)]  # in the file's order
    assert again.corpus.ids == kept and again.splits == sliced.splits  # seeded
    assert other.corpus.ids != kept
    # Evaluation ranks against the slice, and the run says its figures are not the set's.
    test_items = sliced.datasets["test"]
    assert all(sliced.corpus.ids[i] in sliced.splits["test"][item.query_id] for item in test_items
               for i in item.judgements)
    [warning] = sliced.report_dict()["warnings"]
    assert "a slice of" in warning and "not the full set's" in warning and "20 of 30 documents" in warning
    assert not whole.report_dict()["warnings"] and len(whole.corpus) == 30
