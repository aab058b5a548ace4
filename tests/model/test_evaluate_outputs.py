"""What ``python -m train.evaluate`` writes beyond averages: per-query metrics, TREC run files
(scored here by an independent tool, pytrec_eval), names that never overwrite each other, and
one-paragraph errors for missing settings and folders of no known kind."""

from __future__ import annotations

import json
import random

import pytest

from lightning_modules.errors import DataError, SettingsError
from lightning_modules.model import export_model
from tests.helpers.beir import write_beir
from tests.helpers.cli import run_module
from tests.helpers.models import tiny_model
from train.run_files import run_tag, write_run
from train.tasks import task_names

pytrec_eval = pytest.importorskip("pytrec_eval")

WORDS = ("cell protein gene virus heart brain tumour drug dose trial blood liver kidney lung immune "
         "signal enzyme receptor neuron muscle bone skin infection vaccine").split()


def _tiny_beir(folder, seed: int, documents: int = 130, queries: int = 8):
    """A BEIR folder of random distinct texts, with graded judgements (1 and 2) and one query whose
    only judgement has grade 0 (not evaluated); more documents than the ranking depth (100)."""
    rng = random.Random(seed)
    corpus = [{"_id": f"d{i}", "title": "", "text": f"{i} " + " ".join(rng.choices(WORDS, k=8))}
              for i in range(documents)]
    query_rows = [{"_id": f"q{i}", "text": " ".join(rng.choices(WORDS, k=4))} for i in range(queries + 1)]
    qrels = [(f"q{i}", f"d{d}", grade) for i in range(queries)
             for d, grade in zip(rng.sample(range(documents), 3), (2, 1, 1))]
    qrels.append((f"q{queries}", "d0", 0))
    return write_beir(folder, corpus, query_rows, {"test": qrels})


def _read_run(path):
    """{qid: {docid: score}} of a TREC run file, checking its format on the way."""
    run, ranks = {}, {}
    for line in path.read_text(encoding="utf-8").splitlines():
        qid, q0, doc, rank, score, tag = line.split(" ")
        assert q0 == "Q0" and tag == "model"  # the model folder's name
        ranks.setdefault(qid, []).append(int(rank))
        run.setdefault(qid, {})[doc] = float(score)
    for qid, found in ranks.items():
        assert found == list(range(1, len(found) + 1)) and len(found) == 100  # ranks from 1, depth 100
        scores = list(run[qid].values())
        assert scores == sorted(scores, reverse=True)
    return run


@pytest.fixture(scope="module")
def model_folder(minilm_path, tmp_path_factory):
    return export_model(tiny_model(minilm_path), tmp_path_factory.mktemp("export") / "model")


def test_the_run_file_scored_by_pytrec_eval_gives_the_reported_metrics(tmp_path, model_folder):
    folder = _tiny_beir(tmp_path / "tiny", seed=0)
    out = tmp_path / "eval.json"
    done = run_module("train.evaluate", f"model={model_folder}", f"tasks=[{folder}]", f"out={out}",
                      f"out_run={tmp_path / 'runs'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{folder}: retrieval task (a retrieval folder: a corpus file and a queries file found)" in done.stderr
    result = json.loads(out.read_text())["retrieval"]["tiny"]
    assert result["run_file"] == str(tmp_path / "runs" / "tiny.trec") and "ranking" not in result
    run = _read_run(tmp_path / "runs" / "tiny.trec")
    assert sorted(run) == sorted(result["per_query"]) == [f"q{i}" for i in range(8)]  # q8: nothing relevant

    qrels = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, doc, grade = line.split("\t")
        qrels.setdefault(qid, {})[doc] = int(grade)
    measures = {"ndcg_cut_10": "ndcg@10", "recall_10": "recall@10", "recall_100": "recall@100"}
    theirs = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut", "recall"}).evaluate(run)
    assert set(theirs) == set(result["per_query"])
    for measure, ours in measures.items():
        for qid, values in theirs.items():
            assert result["per_query"][qid][ours] == pytest.approx(100 * values[measure], abs=0.01), (qid, ours)
        mean = sum(values[measure] for values in theirs.values()) / len(theirs)
        assert result[ours] == pytest.approx(100 * mean, abs=0.01)
    assert 0 < result["ndcg@10"] < 100 and result["queries"] == 8  # neither trivial nor empty
    # MRR@10 as trec_eval's reciprocal rank of the run cut at 10.
    cut = {qid: dict(list(docs.items())[:10]) for qid, docs in run.items()}
    reciprocal = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
    for qid, values in reciprocal.items():
        assert result["per_query"][qid]["mrr@10"] == pytest.approx(100 * values["recip_rank"], abs=0.01)


def test_two_tasks_of_the_same_name_keep_their_own_rows_and_run_files(tmp_path, model_folder):
    first, second = _tiny_beir(tmp_path / "a" / "scifact", seed=1), _tiny_beir(tmp_path / "b" / "scifact", seed=2)
    out = tmp_path / "eval.json"
    done = run_module("train.evaluate", f"model={model_folder}", f"tasks=[{first},{second}]", f"out={out}",
                      f"out_run={tmp_path / 'runs'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    retrieval = json.loads(out.read_text())["retrieval"]
    assert sorted(retrieval) == ["a/scifact", "b/scifact"]
    assert retrieval["a/scifact"]["source"] != retrieval["b/scifact"]["source"]
    assert retrieval["a/scifact"]["per_query"] != retrieval["b/scifact"]["per_query"]  # different folders
    for name in ("a/scifact", "b/scifact"):
        assert (tmp_path / "runs" / f"{name}.trec").is_file() and name in done.stdout


def test_task_names_tell_apart_what_shares_a_name_and_refuse_the_same_task_twice(tmp_path):
    for folder in ("x/data/stsb", "y/data/stsb", "z/stsb", "scifact", "BeIR/scifact"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "stsb.csv").write_text("sentence1,sentence2,score\na,b,1\n")
    stsb = [str(tmp_path / f) for f in ("x/data/stsb", "y/data/stsb", "z/stsb", "w/stsb.csv")]
    assert task_names([*stsb, "STS12"]) == ["x/data/stsb", "y/data/stsb", "z/stsb", "w/stsb", "STS12"]
    assert task_names([str(tmp_path / "scifact"), "BeIR/scifact"]) == [f"{tmp_path.name}/scifact", "BeIR/scifact"]
    assert task_names(["BeIR/scifact", str(tmp_path / "z" / "stsb")]) == ["scifact", "stsb"]
    # A path that ends another keeps its whole self; the other gets the longer name.
    local = str(tmp_path / "BeIR" / "scifact")
    assert task_names(["BeIR/scifact", local]) == ["BeIR/scifact", f"{tmp_path.name}/BeIR/scifact"]
    with pytest.raises(SettingsError, match="the same task given twice"):
        task_names([stsb[0], f"{tmp_path}/x/../x/data/stsb"])


@pytest.mark.parametrize("given", [[], ["tasks=[]"]])
def test_a_missing_tasks_setting_is_one_paragraph_with_an_example(tmp_path, model_folder, given):
    done = run_module("train.evaluate", f"model={model_folder}", *given, cwd=tmp_path)
    assert done.returncode == 2
    assert "error: missing setting: tasks= (" in done.stderr
    assert "For example: python -m train.evaluate model=" in done.stderr
    assert "Traceback" not in done.stderr and "MissingMandatoryValue" not in done.stderr
    both = run_module("train.evaluate", cwd=tmp_path)
    assert both.returncode == 2 and "missing settings: model= (" in both.stderr and "; tasks= (" in both.stderr


def test_a_folder_of_neither_kind_says_what_each_kind_holds(tmp_path, model_folder):
    (tmp_path / "empty").mkdir()
    done = run_module("train.evaluate", f"model={model_folder}", f"tasks=[{tmp_path / 'empty'}]", "out=null",
                      cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "STS task (a folder without a corpus and a queries file (corpus.jsonl, .csv, ...): its test.csv is read)" \
        in done.stderr
    assert "must hold test.csv (an STS task" in done.stderr
    assert "or be a retrieval folder: a retrieval folder holds corpus.jsonl, queries.jsonl" in done.stderr


def test_a_collection_with_an_empty_document_is_evaluated_and_the_count_warned(tmp_path, model_folder):
    folder = _tiny_beir(tmp_path / "cranfield_like", seed=1)
    corpus = (folder / "corpus.jsonl").read_text().splitlines()
    corpus[5] = json.dumps({"_id": "d5", "title": "", "text": ""})  # as Cranfield's documents 471 and 995
    (folder / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    out = tmp_path / "eval.json"
    done = run_module("train.evaluate", f"model={model_folder}", f"tasks=[{folder}]", f"out={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())["retrieval"]["cranfield_like"]
    assert result["documents"] == 130 and result["queries"] == 8
    [warning] = result["warnings"]
    assert "1 document" in warning and "'d5'" in warning
    assert warning.split(";")[0] in done.stderr  # and in the log


def test_run_files_refuse_ids_they_cannot_hold_and_out_run_must_be_a_folder(tmp_path, model_folder):
    with pytest.raises(DataError, match="'doc 1' cannot go into a TREC run file"):
        write_run(tmp_path / "x.trec", {"q1": [("doc 1", 1.0)]}, "tag")
    write_run(tmp_path / "x.trec", {"q1": [("d2", 0.5), ("d1", 0.25)]}, run_tag("my models/run 1"))
    assert (tmp_path / "x.trec").read_text() == "q1 Q0 d2 1 0.5 run_1\nq1 Q0 d1 2 0.25 run_1\n"
    assert run_tag(".") == "maxsim"
    done = run_module("train.evaluate", f"model={model_folder}", "tasks=[STS12]", f"out_run={tmp_path / 'x.trec'}",
                      cwd=tmp_path)
    assert done.returncode == 2 and "out_run=" in done.stderr and "is a file" in done.stderr


def test_a_folder_of_csv_tables_and_trec_qrels_is_taken_for_a_retrieval_task(tmp_path, model_folder):
    beir = _tiny_beir(tmp_path / "beir", seed=2)
    corpus = [json.loads(line) for line in (beir / "corpus.jsonl").read_text().splitlines()]
    queries = [json.loads(line) for line in (beir / "queries.jsonl").read_text().splitlines()]
    qrels = [tuple(line.split("\t")) for line in (beir / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    tables = write_beir(tmp_path / "tables", corpus, queries, {"test": qrels}, corpus_file="corpus.csv",
                        queries_file="queries.csv", qrels_file="qrels/{split}.txt", qrels_layout="trec")
    out = tmp_path / "eval.json"
    done = run_module("train.evaluate", f"model={model_folder}", f"tasks=[{beir},{tables}]", f"out={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{tables}: retrieval task (a retrieval folder" in done.stderr
    evaluated = json.loads(out.read_text())["retrieval"]
    assert {k: v for k, v in evaluated["tables"].items() if k != "source"} == \
        {k: v for k, v in evaluated["beir"].items() if k != "source"}
