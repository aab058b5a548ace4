"""``python -m train.index`` and ``python -m train.search`` as a user runs them: a run file that an
independent tool (pytrec_eval) scores to ``train.evaluate``'s figures, one query printed, a
killed build continued, and one-paragraph errors for what a user gets wrong."""

from __future__ import annotations

import json

import pytest

from lightning_modules.index import storage
from lightning_modules.model import export_model
from tests.helpers.cli import run_module
from tests.helpers.models import tiny_model
from tests.model.test_evaluate_outputs import _tiny_beir

pytrec_eval = pytest.importorskip("pytrec_eval")


@pytest.fixture(scope="module")
def model_folder(minilm_path, tmp_path_factory):
    return export_model(tiny_model(minilm_path), tmp_path_factory.mktemp("export") / "model")


@pytest.fixture(scope="module")
def beir(tmp_path_factory):
    return _tiny_beir(tmp_path_factory.mktemp("data") / "tiny", seed=3, documents=150, queries=10)


@pytest.fixture(scope="module")
def index_folder(model_folder, beir, tmp_path_factory):
    out = tmp_path_factory.mktemp("indexes") / "tiny"
    done = run_module("train.index", f"model={model_folder}", f"corpus={beir}", f"out={out}", "shard_size=40",
                      cwd=out.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{out}: 150 documents" in done.stdout and "4 shards" in done.stdout
    return out


def _qrels(folder):
    qrels = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, doc, grade = line.split("\t")
        qrels.setdefault(qid, {})[doc] = int(grade)
    return qrels


def _run(path):
    run = {}
    for line in path.read_text().splitlines():
        qid, _, doc, _, score, _ = line.split(" ")
        run.setdefault(qid, {})[doc] = float(score)
    return run


def test_search_run_file_reproduces_evaluate_by_an_independent_tool(index_folder, model_folder, beir, tmp_path):
    done = run_module("train.search", f"index={index_folder}", f"queries={beir}", "split=test", "k=100",
                      f"out={tmp_path / 'run.trec'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = run_module("train.evaluate", f"model={model_folder}", f"tasks=[{beir}]", f"out={tmp_path / 'e.json'}",
                           cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    reported = json.loads((tmp_path / "e.json").read_text())["retrieval"]["tiny"]
    run = _run(tmp_path / "run.trec")
    assert sorted(run) == sorted(reported["per_query"])  # the split's judged queries, as evaluate ranks them
    theirs = pytrec_eval.RelevanceEvaluator(_qrels(beir), {"ndcg_cut_10", "recall_100"}).evaluate(run)
    mean = sum(q["ndcg_cut_10"] for q in theirs.values()) / len(theirs)
    assert 100 * mean == pytest.approx(reported["ndcg@10"], abs=0.01)
    for qid, values in theirs.items():
        assert 100 * values["recall_100"] == pytest.approx(reported["per_query"][qid]["recall@100"], abs=0.01)


def test_one_query_prints_ids_scores_and_text(index_folder, beir, tmp_path):
    done = run_module("train.search", f"index={index_folder}", "q=heart muscle's cells", "k=3",
                      f"out={tmp_path / 'one.jsonl'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["rank", "id", "score", "text"] and len(lines) == 5  # and "Written to ..."
    record = json.loads((tmp_path / "one.jsonl").read_text())
    assert record["query"] == "heart muscle's cells" and [r["id"] for r in record["results"]] == [
        line.split()[1] for line in lines[1:4]]
    lines = lines[:4]
    corpus = {row["_id"]: row["text"] for row in map(json.loads, (beir / "corpus.jsonl").open())}
    for rank, line in enumerate(lines[1:], 1):
        number, doc, score, text = line.split(maxsplit=3)
        assert int(number) == rank and corpus[doc].startswith(text.removesuffix("...")) and -1 <= float(score) <= 1


def test_approximate_search_writes_jsonl_and_keeps_its_index(index_folder, beir, tmp_path):
    out = tmp_path / "run.jsonl"
    done = run_module("train.search", f"index={index_folder}", f"queries={beir / 'queries.jsonl'}",
                      "search.mode=approximate", "search.lists=16", "search.probe=16", "search.token_hits=100000",
                      "search.rerank=1000",
                      f"out={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 11 and records[0]["query_id"] == "q0" and len(records[0]["results"]) == 10
    exact = run_module("train.search", f"index={index_folder}", f"queries={beir / 'queries.jsonl'}", cwd=tmp_path)
    # Every list probed, every token taken, every candidate scored: exact search's ranking.
    exact_run = {}
    for line in exact.stdout.splitlines():
        qid, _, doc, rank, _, _ = line.split(" ")
        exact_run.setdefault(qid, []).append(doc)
    assert {r["query_id"]: [x["id"] for x in r["results"]] for r in records} == exact_run
    assert len(list((index_folder / "approximate").glob("ivf-16-*.faiss"))) == 1


def test_a_killed_index_build_is_continued_by_the_same_command(model_folder, beir, tmp_path, monkeypatch):
    real = storage.write_shard
    count = []

    def killed_after_two(*args, **kwargs):
        if len(count) == 2:
            raise KeyboardInterrupt
        count.append(1)
        return real(*args, **kwargs)

    arguments = (f"model={model_folder}", f"corpus={beir}", f"out={tmp_path / 'ix'}", "shard_size=40")
    monkeypatch.setattr(storage, "write_shard", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_module("train.index", *arguments, cwd=tmp_path)
    monkeypatch.setattr(storage, "write_shard", real)
    refused = run_module("train.search", f"index={tmp_path / 'ix'}", "q=heart", cwd=tmp_path)
    assert refused.returncode == 2 and "interrupted with 70 documents" in refused.stderr
    done = run_module("train.index", *arguments, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "this run: 70 documents encoded" in done.stdout and "80 already in the index" in done.stdout
    assert run_module("train.search", f"index={tmp_path / 'ix'}", "q=heart", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("arguments, message", [
    (("q=heart", "queries=x.jsonl"), "give one query"),
    (("index=nowhere", "q=heart"), "nowhere: no such folder"),
    (("q=heart",), "missing setting: index= is required"),
    (("q=heart", "search.mode=fuzzy"), "search mode 'fuzzy'"),
    (("q=heart", "search.probe=0"), "search.probe=0: must be at least 1"),
])
def test_search_mistakes_are_one_paragraph(index_folder, tmp_path, arguments, message):
    arguments = tuple(a if not a.startswith("index=") else f"index={tmp_path / 'nowhere'}" for a in arguments)
    if not any(a.startswith("index=") for a in arguments) and message != "missing setting: index= is required":
        arguments = (f"index={index_folder}", *arguments)
    done = run_module("train.search", *arguments, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_index_refuses_a_folder_of_other_files_and_another_model(model_folder, index_folder, beir, tmp_path,
                                                                 minilm_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    done = run_module("train.index", f"model={model_folder}", f"corpus={beir}", f"out={tmp_path / 'notes'}",
                      cwd=tmp_path)
    assert done.returncode == 2 and "holds files and no index" in done.stderr
    other = export_model(tiny_model(minilm_path, projection_dim=8), tmp_path / "other")
    done = run_module("train.search", f"index={index_folder}", f"model={other}", "q=heart", cwd=tmp_path)
    assert done.returncode == 2 and "built by another model" in done.stderr
