"""benchmarks/out_of_domain.py: the retrieval folder built from an STS CSV (exact queries, corpus and
judgements, read back by the project's BEIR reader, a query's own sentence never a hit), the base
model scored like the trained one, and the table's bound check. No real model runs: a tiny random
BERT checks the exclusion, fakes stand in for the evaluations of ``main``."""

from __future__ import annotations

import json
import logging
import types

import pytest
import torch

from benchmarks import out_of_domain
from benchmarks.out_of_domain import compare, format_table, score_like, sts_retrieval_folder, verdict
from lightning_modules.data.beir import read_beir
from lightning_modules.evaluation import evaluate_beir
from lightning_modules.evaluation.metrics import per_query_ranking_metrics
from lightning_modules.model import TextSettings
from tests.helpers.models import tiny_model

# 6 pairs: a sentence1 given twice (s0, once at exactly 4.0), one scored below 4 whose sentence1 (s1)
# is a relevant sentence2 above, one sentence (s5) that is a sentence2 and then a query, and an
# identical pair (spaces aside) at 5.0 that cannot be a hit.
CSV = """sentence1,sentence2,score
A man plays a guitar.,A man is playing a guitar.,4.6
A man plays a guitar.,A person plays an instrument.,4.0
A dog runs.,A cat sleeps.,0.5
A man is playing a guitar.,A woman slices onions.,1.0
A child smiles.,  A child smiles.,5.0
A woman slices onions.,A woman is cutting an onion.,4.2
"""
SENTENCES = ["A man plays a guitar.", "A man is playing a guitar.", "A person plays an instrument.", "A dog runs.",
             "A cat sleeps.", "A woman slices onions.", "A child smiles.", "A woman is cutting an onion."]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "test.csv").write_text(CSV, encoding="utf-8")
    counts = sts_retrieval_folder(tmp_path / "test.csv", tmp_path / "beir")
    return tmp_path / "beir", counts


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_folder_holds_exactly_the_queries_corpus_and_judgements(folder):
    path, counts = folder
    assert counts == {"pairs": 6, "pairs_at_min_score": 4, "identical_pairs_skipped": 1, "queries": 2,
                      "documents": 8, "judgements": 3}
    assert _jsonl(path / "corpus.jsonl") == [{"_id": f"s{i}", "title": "", "text": t} for i, t in enumerate(SENTENCES)]
    # A query has its sentence's id: the same as its own copy in the corpus.
    assert _jsonl(path / "queries.jsonl") == [{"_id": "s0", "text": SENTENCES[0]}, {"_id": "s5", "text": SENTENCES[5]}]
    assert (path / "qrels" / "test.tsv").read_text(encoding="utf-8") == (
        "query-id\tcorpus-id\tscore\ns0\ts1\t1\ns0\ts2\t1\ns5\ts7\t1\n")


def test_the_projects_reader_reads_it_back_without_warnings(folder, caplog):
    path, _ = folder
    with caplog.at_level(logging.WARNING):
        data = read_beir(str(path), ["test"])
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert data.warnings == []
    assert data.corpus_ids == [f"s{i}" for i in range(8)] and data.corpus_texts == SENTENCES
    assert data.queries == {"s0": SENTENCES[0], "s5": SENTENCES[5]}
    judged = data.judgements["test"]
    assert judged.by_query == {"s0": {"s1": 1, "s2": 1}, "s5": {"s7": 1}}
    assert (judged.unknown_documents, judged.unknown_queries, judged.without_relevant) == (0, 0, 0)


def test_a_querys_own_sentence_is_not_a_hit(folder):
    path, _ = folder
    judged = read_beir(str(path), ["test"]).judgements["test"].by_query
    position = {f"s{i}": i for i in range(8)}
    # Ranked first, the own copy counts as a miss: the relevant documents come second and third.
    own_first = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]])
    metrics = per_query_ranking_metrics(own_first, [{position[d]: g for d, g in judged["s0"].items()}])[0]
    assert metrics["mrr@10"] == pytest.approx(0.5) and metrics["ndcg@10"] < 1.0


def test_the_evaluator_never_ranks_a_querys_own_copy(folder, minilm_path):
    path, _ = folder
    model = tiny_model(minilm_path)
    # Unexcluded, a query's own copy scores highest (the same tokens, the same vectors): the one to drop.
    scores = model.similarity_matrix([SENTENCES[0], SENTENCES[5]], SENTENCES)
    assert scores.argmax(dim=1).tolist() == [0, 5]
    ranking = evaluate_beir(model, str(path), "test")["ranking"]
    assert set(ranking) == {"s0", "s5"}
    for query, ranked in ranking.items():
        assert query not in [doc for doc, _ in ranked] and len(ranked) == 7


def test_the_base_model_reads_and_scores_like_the_trained_one():
    trained = types.SimpleNamespace(
        text_settings=TextSettings(max_length=200, query_max_length=40, roles="asymmetric", query_marker="[unused0]"),
        scoring_options=lambda: {"direction": "a2b", "reduction": "sum", "temperature": None, "pooled_weight": 0.2})
    base = types.SimpleNamespace(text_settings=TextSettings(), direction="both", reduction="mean", temperature=None,
                                 pooled_weight=0.0)
    score_like(base, trained)
    assert base.text_settings == trained.text_settings and base.text_settings is not trained.text_settings
    assert (base.direction, base.reduction, base.temperature, base.pooled_weight) == ("a2b", "sum", None, 0.2)


def _result(ndcg: float, spearman: float) -> dict:
    return {"retrieval": {"ndcg@10": ndcg, "mrr@10": ndcg + 1, "recall@10": ndcg + 2, "queries": 3, "documents": 9},
            "sts": {"spearman": spearman, "pearson": spearman, "pairs": 6}}


@pytest.mark.parametrize(("delta", "within"), [(-2.1, False), (-1.9, True), (-2.0, True), (0.5, True)])
def test_the_worst_retrieval_delta_is_held_to_the_bound(delta, within):
    base = {"en": _result(60.0, 80.0), "de": _result(50.0, 70.0)}
    trained = {"en": _result(61.0, 70.0), "de": _result(round(50.0 + delta, 2), 71.0)}  # STS's -10 is not judged
    rows = compare(base, trained)
    assert [r["task"] for r in rows] == ["stsb-en retrieval", "stsb-de retrieval", "stsb-en STS", "stsb-de STS"]
    assert [r["delta"] for r in rows] == [1.0, delta, -10.0, 1.0]
    assert verdict(rows) == {"task": "stsb-de retrieval", "delta": min(delta, 1.0), "bound": -2.0,
                             "within_bound": within}
    table = format_table(rows)
    assert f"{delta:+.2f}" in table.splitlines()[3]
    last = table.splitlines()[-1]
    assert ("NOT within" in last) is not within and "stsb-de retrieval" in last


def test_main_builds_every_copy_and_writes_the_comparison(tmp_path, monkeypatch, capsys):
    for folder in ("stsb", "stsb-multi/de"):
        (tmp_path / "data" / folder).mkdir(parents=True)
        (tmp_path / "data" / folder / "test.csv").write_text(CSV, encoding="utf-8")
    monkeypatch.setattr(out_of_domain, "DATA", tmp_path / "data")
    trained = types.SimpleNamespace(name="trained", text_settings=TextSettings(), scoring_options=dict)
    monkeypatch.setattr(out_of_domain, "load_models", lambda model, base, precision: (
        trained, types.SimpleNamespace(name="base"), "32"))
    evaluated = []

    def fake_evaluate(model, folder, csv_path, split, batch_size):
        evaluated.append((model.name, folder.name, csv_path.parent.name))
        return _result(40.0 if model.name == "base" else 37.5, 80.0)

    monkeypatch.setattr(out_of_domain, "evaluate", fake_evaluate)
    out = tmp_path / "out.json"
    out_of_domain.main(["--model", "run/model", "--base", "base/model", "--work", str(tmp_path / "work"),
                        "--out", str(out)])
    assert evaluated == [("base", "stsb-en-test", "stsb"), ("base", "stsb-de-test", "de"),
                         ("trained", "stsb-en-test", "stsb"), ("trained", "stsb-de-test", "de")]
    result = json.loads(out.read_text())
    assert (result["model"], result["base"]) == ("run/model", "base/model")
    assert result["folders"]["de"]["queries"] == 2 and set(result["folders"]) == {"en", "de"}
    assert result["verdict"] == {"task": "stsb-en retrieval", "delta": -2.5, "bound": -2.0, "within_bound": False}
    assert "NOT within the bound -2.0" in capsys.readouterr().out
