"""Exact retrieval over a corpus: chunked top-k against the full score matrix, the encoding cache,
the evaluator's metrics, and the sharded ranking of several processes against one process."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_modules.data.batches import TokenizedCorpus
from lightning_modules.data.collate import QueryCollator
from lightning_modules.data.batches import QueryItem
from lightning_modules.evaluation import CorpusRetrievalEvaluator
from lightning_modules.index import ranking as ranking_module
from lightning_modules.evaluation.corpus import encode_corpus, latest_encodings, rank_corpus
from lightning_modules.evaluation.metrics import ranking_metrics
from tests.helpers.models import tiny_model

WORDS = ("protein cell gene cancer brain heart vitamin blood virus immune drug dose risk trial mouse human "
         "tumor liver lung insulin").split()


def _texts(n: int, seed: int, length: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (int(torch.randint(2, length, (1,), generator=g)),),
                                                      generator=g).tolist()) for _ in range(n)]


@pytest.fixture(scope="module")
def setup(minilm_path):
    model = tiny_model(minilm_path)
    model.direction = "a2b"
    documents = _texts(70, seed=1, length=30)
    corpus = TokenizedCorpus([f"d{i}" for i in range(70)], model.tokenize(documents))
    queries = model.encode(_texts(9, seed=2, length=8), is_query=True)
    return model, corpus, queries


def _brute_force(model, queries, corpus):
    full = model.score_vectors(queries, model.embed_token_ids(corpus.token_ids), chunk=7).double()
    return full


def test_chunked_top_k_is_the_full_matrix_sorted(setup, monkeypatch):
    model, corpus, queries = setup
    monkeypatch.setattr(ranking_module, "SCORE_CHUNK", 16)  # several chunks, each merged into the top-k
    monkeypatch.setattr(ranking_module, "QUERY_GROUP", 4)  # and several groups of queries, by length
    latest_encodings.pop(corpus, None)
    scores, indices = rank_corpus(model, queries, corpus, depth=25, show_progress_bar=False)
    full = _brute_force(model, queries, corpus)
    expected = torch.sort(full, dim=1, descending=True, stable=True)
    torch.testing.assert_close(scores.double(), expected.values[:, :25], atol=1e-5, rtol=0)
    assert torch.equal(full.gather(1, indices).double().argsort(dim=1, descending=True, stable=True),
                       torch.arange(25).expand(9, -1))  # what came back is in score order
    # Ties aside (none at these random weights), the same documents as the full sort's top 25.
    assert torch.equal(indices, expected.indices[:, :25])


def test_an_excluded_document_is_never_returned_and_short_lists_are_padded(setup):
    model, corpus, queries = setup
    _, indices = rank_corpus(model, queries[:2], corpus, depth=100, exclude=[3, None], show_progress_bar=False)
    assert indices.shape == (2, 70)
    assert 3 not in indices[0, :69].tolist() and indices[0, 69] == -1
    assert sorted(indices[1].tolist()) == list(range(70))


def test_one_set_of_weights_encodes_the_corpus_once(setup, monkeypatch):
    model, corpus, queries = setup
    latest_encodings.pop(corpus, None)
    calls = []
    original = model.embed_token_ids
    monkeypatch.setattr(model, "embed_token_ids", lambda *a, **k: calls.append(1) or original(*a, **k))
    rows = list(range(len(corpus)))
    first = encode_corpus(model, corpus, rows, show_progress_bar=False)
    assert encode_corpus(model, corpus, rows, show_progress_bar=False) is first and len(calls) == 1
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # a training step changes the weights: the cache is stale
    try:
        encode_corpus(model, corpus, rows, show_progress_bar=False)
        assert len(calls) == 2
    finally:
        with torch.no_grad():
            next(model.parameters()).sub_(1e-3)
        latest_encodings.pop(corpus, None)


JUDGEMENTS = [{(3 * i) % 70: 1, (5 * i + 1) % 70: 2} for i in range(9)]


def _query_items(model) -> list[QueryItem]:
    texts = _texts(9, seed=2, length=8)
    return [QueryItem(ids, f"q{i}", judged) for i, (ids, judged) in enumerate(zip(model.tokenize(texts, True), JUDGEMENTS))]


def test_the_evaluator_reports_the_metrics_of_the_brute_force_ranking(setup):
    model, corpus, queries = setup
    judgements = JUDGEMENTS
    items = _query_items(model)
    collate = QueryCollator(model.encoder.tokenizer.pad_token_id, corpus)
    evaluator = CorpusRetrievalEvaluator()
    with torch.no_grad():
        evaluator.update(model, collate(items[:4]))
        evaluator.update(model, collate(items[4:]))
    metrics = evaluator.compute(model, "val")
    full = _brute_force(model, queries, corpus)
    order = sorted(range(9), key=lambda i: f"q{i}")
    expected = ranking_metrics(torch.sort(full, dim=1, descending=True, stable=True).indices[order, :100],
                               [judgements[i] for i in order])
    assert metrics == pytest.approx(expected, abs=1e-6)
    assert set(metrics) == {"ndcg@10", "mrr@10", "recall@10", "recall@100"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sharded_worker(rank, world, port, minilm_path, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = tiny_model(minilm_path)
        model.direction = "a2b"
        corpus = TokenizedCorpus([f"d{i}" for i in range(70)], model.tokenize(_texts(70, seed=1, length=30)))
        queries = model.encode(_texts(9, seed=2, length=8), is_query=True)
        scores, indices = rank_corpus(model, queries, corpus, depth=20, exclude=[5] * 9, show_progress_bar=False)
        encoded = latest_encodings[corpus].documents
        # The evaluator, each process holding its own share of the queries (with one repeated, as
        # Lightning's distributed sampler does to even out the shards).
        items = _query_items(model)
        collate = QueryCollator(model.encoder.tokenizer.pad_token_id, corpus)
        evaluator = CorpusRetrievalEvaluator()
        with torch.no_grad():
            evaluator.update(model, collate(items[:5] if rank == 0 else items[4:]))
        metrics = evaluator.compute(model, "val")
        torch.save({"scores": scores, "indices": indices, "encoded": encoded, "metrics": metrics}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_rank_their_shards_and_merge_to_the_single_process_ranking(setup, tmp_path, minilm_path):
    model, corpus, queries = setup
    scores, indices = rank_corpus(model, queries, corpus, depth=20, exclude=[5] * 9, show_progress_bar=False)
    # fork: the workers start from this process's imports (spawn would re-import torch and transformers)
    mp.start_processes(_sharded_worker, args=(2, _free_port(), minilm_path, str(tmp_path / "rank")), nprocs=2,
                       join=True, start_method="fork")
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank.{rank}", weights_only=True)
        assert result["encoded"] == 35  # each process encoded half of the corpus, not all of it
        assert torch.equal(result["indices"], indices)
        torch.testing.assert_close(result["scores"], scores, atol=1e-5, rtol=0)
    evaluator = CorpusRetrievalEvaluator()
    with torch.no_grad():
        evaluator.update(model, QueryCollator(model.encoder.tokenizer.pad_token_id, corpus)(_query_items(model)))
    single = evaluator.compute(model, "val")
    for rank in (0, 1):
        assert torch.load(tmp_path / f"rank.{rank}", weights_only=True)["metrics"] == pytest.approx(single, abs=1e-6)
