"""``benchmarks.storage`` on a tiny random model and corpus: the bytes it reports are the files'
(float16's vector payload exactly half float32's), its metrics are those of a brute-force float64
ranking with BEIR's own-id exclusion, and a second run reuses the finished indexes."""

from __future__ import annotations

import json
import random

import pytest
import torch

from benchmarks import storage as bench
from lightning_modules.data.beir import read_beir
from lightning_modules.encoder import TokenEmbeddings
from lightning_modules.evaluation.metrics import ranking_metrics
from lightning_modules.index import index as index_module
from lightning_modules.model import export_model
from tests.helpers.beir import write_beir
from tests.helpers.models import tiny_model
from train.runtime import load_for_inference

WORDS = ["cell", "protein", "gene", "virus", "heart", "brain", "tumour", "drug", "dose", "trial", "blood", "liver",
         "kidney", "lung", "immune", "bone"]
DOCUMENTS = 30  # under the depth of 100: every document is ranked, so a missed exclusion shows in Recall@100


def _tiny_beir(folder):
    """Random documents and queries; query ``d3`` has document d3's text and id and is judged
    relevant to it (and to d4): BEIR's rule leaves d3 out of its ranking, so its Recall@100 is 0.5."""
    rng = random.Random(7)
    corpus = [{"_id": f"d{i}", "title": "", "text": " ".join(rng.choices(WORDS, k=rng.randint(4, 12)))}
              for i in range(DOCUMENTS)]
    queries = [{"_id": f"q{i}", "text": " ".join(rng.choices(WORDS, k=3))} for i in range(5)]
    queries.append({"_id": "d3", "text": corpus[3]["text"]})
    qrels = [(f"q{i}", f"d{d}", grade) for i in range(5) for d, grade in zip(rng.sample(range(DOCUMENTS), 2), (2, 1))]
    qrels += [("d3", "d3", 1), ("d3", "d4", 1)]
    return write_beir(folder, corpus, queries, {"test": qrels})


@pytest.fixture(scope="module")
def setup(minilm_path, tmp_path_factory):
    """Two exported models (a 16-d projection, the raw 32-d), the data, and one benchmark run."""
    root = tmp_path_factory.mktemp("storage")
    models = {"proj16": export_model(tiny_model(minilm_path, projection_dim=16), root / "proj16"),
              "raw32": export_model(tiny_model(minilm_path, projection_dim=None), root / "raw32")}
    data = _tiny_beir(root / "beir")
    argv = [*(f"--model={name}={path}" for name, path in models.items()), f"--data={data}", "--precision=32-true",
            f"--work={root / 'work'}"]
    bench.main([*argv, f"--out={root / 'first.json'}"])
    return {"models": models, "data": data, "argv": argv, "root": root,
            "result": json.loads((root / "first.json").read_text())}


def _row(result, model, dtype):
    return next(r for r in result["rows"] if r["model"] == model and r["dtype"] == dtype)


def test_float16_vectors_take_exactly_half_of_float32s_bytes(setup):
    result = setup["result"]
    assert [(r["model"], r["dtype"]) for r in result["rows"]] == [
        ("proj16", "float32"), ("proj16", "float16"), ("raw32", "float32"), ("raw32", "float16")]
    for model, dim in (("proj16", 16), ("raw32", 32)):
        full, half = _row(result, model, "float32"), _row(result, model, "float16")
        assert full["dim"] == half["dim"] == dim and full["tokens"] == half["tokens"] > DOCUMENTS
        assert full["vector_bytes"] == full["tokens"] * dim * 4 == 2 * half["vector_bytes"]
        for row in (full, half):
            folder = setup["root"] / "work" / f"{model}-{row['dtype']}"
            assert row["documents"] == DOCUMENTS
            assert row["vector_bytes_per_document"] == pytest.approx(row["vector_bytes"] / DOCUMENTS, abs=0.05)
            assert row["folder_bytes"] == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            assert row["vector_bytes"] < row["folder_bytes"]  # the texts, ids and manifest come on top
            assert row["tokens_per_document"] == pytest.approx(row["tokens"] / DOCUMENTS, abs=0.005)


def _brute_force_ranked(model, data, query_ids, exclude_own_id):
    """Every query scored against every document by the model's own pairwise MaxSim in float64,
    sorted; ``-1`` where the query's own id was excluded."""
    documents = [v.double() for v in model.encode(data.corpus_texts, is_query=False)]
    queries = [v.double() for v in model.encode([data.queries[q] for q in query_ids], is_query=True)]
    stacked = TokenEmbeddings.stack(documents)
    ranked = torch.full((len(queries), bench.DEPTH), -1, dtype=torch.long)
    for row, (query_id, query) in enumerate(zip(query_ids, queries)):
        scores = model.score_pairs(TokenEmbeddings.stack([query] * len(documents)), stacked)
        assert scores.dtype == torch.float64
        order = [i for i in torch.argsort(scores, descending=True, stable=True).tolist()
                 if not (exclude_own_id and data.corpus_ids[i] == query_id)]
        ranked[row, : len(order)] = torch.tensor(order)
    return ranked


def test_metrics_are_a_brute_force_float64_rankings_with_the_own_id_excluded(setup):
    data = read_beir(str(setup["data"]), ["test"])
    query_ids = sorted(data.judgements["test"].by_query)
    position = {doc: i for i, doc in enumerate(data.corpus_ids)}
    judgements = [{position[d]: g for d, g in data.judgements["test"].by_query[q].items()} for q in query_ids]
    for name, folder in setup["models"].items():
        model, _ = load_for_inference(str(folder), "32-true")
        expected = ranking_metrics(_brute_force_ranked(model, data, query_ids, True), judgements)
        unexcluded = ranking_metrics(_brute_force_ranked(model, data, query_ids, False), judgements)
        assert unexcluded["recall@100"] > expected["recall@100"]  # the exclusion is visible in the figures
        row = _row(setup["result"], name, "float32")
        assert row["queries"] == len(query_ids) == 6
        for metric in ("ndcg@10", "mrr@10", "recall@100"):
            assert row[metric] == pytest.approx(100 * expected[metric], abs=1e-3), (name, metric)


def test_a_second_run_reuses_the_finished_indexes(setup, monkeypatch):
    def no_encoding(*args, **kwargs):
        raise AssertionError("a finished index was encoded again")

    assert all(row["encoded_now"] == DOCUMENTS for row in setup["result"]["rows"])
    monkeypatch.setattr(index_module, "encode_documents", no_encoding)
    bench.main([*setup["argv"], f"--out={setup['root'] / 'second.json'}"])
    second = json.loads((setup["root"] / "second.json").read_text())
    assert all(row["encoded_now"] == 0 for row in second["rows"])
    drop = ("encoded_now",)
    assert ([{k: v for k, v in r.items() if k not in drop} for r in second["rows"]]
            == [{k: v for k, v in r.items() if k not in drop} for r in setup["result"]["rows"]])


def test_an_index_encoded_at_another_precision_is_refused(setup, monkeypatch):
    def no_encoding(*args, **kwargs):
        raise AssertionError("the refused index was written to")

    monkeypatch.setattr(index_module, "encode_documents", no_encoding)
    folder = setup["root"] / "work" / "proj16-float32"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    argv = [a for a in setup["argv"] if not a.startswith("--precision")]
    with pytest.raises(SystemExit, match="precision '32' there, 'bf16' here"):
        bench.main([*argv, "--precision=bf16-mixed", f"--out={setup['root'] / 'third.json'}"])
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
