"""``+experiment=scifact`` end to end with the tiny model on a slice of SciFact, and
``python -m train.evaluate`` on a BEIR folder reproducing the run's test figures."""

from __future__ import annotations

import json

import pytest

from lightning_modules.precision import resolve_precision
from tests.helpers.beir import SCIFACT_DIR, scifact_subset, write_beir
from tests.helpers.cli import run_module
from train.pipeline import run

METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100")


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory):
    if not (SCIFACT_DIR / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {SCIFACT_DIR}")
    return scifact_subset(tmp_path_factory.mktemp("scifact") / "slice", train_queries=60, test_queries=30, distractors=60)


@pytest.mark.training
def test_scifact_experiment_trains_tests_and_exports_a_model_that_evaluate_reproduces(compose_cfg, scifact_slice, tmp_path):
    cfg = compose_cfg(["+experiment=scifact", "model=tiny", f"data.path={scifact_slice}", "data.validation_min_queries=10",
                       "data.mine_negatives=5", "~logger", "++trainer.enable_progress_bar=false",
                       "++trainer.enable_model_summary=false"], tmp_path / "run")
    results = run(cfg)
    assert results["monitor"] == "val/ndcg@10"
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    for split in ("val", "test"):
        for name in METRICS:
            assert 0 <= written[f"{split}/{name}"] <= 100 and f"{split}/{name}" in written["zero_shot"]
    assert written["data"]["queries"] == {"train": 50, "validation": 10, "test": 30}
    assert any("hard negatives from the model" in note for note in written["data"]["notes"])

    # The export, measured by the evaluation tool on the same folder, gives the run's test figures.
    out = tmp_path / "evaluation.json"
    done = run_module("train.evaluate", f"model={tmp_path / 'run' / 'model'}", f"tasks=[{scifact_slice}]",
                      f"out={out}", f"hydra.run.dir={tmp_path / 'evaluate'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    evaluated = json.loads(out.read_text())["retrieval"]["slice"]
    assert evaluated["queries"] == 30 and evaluated["documents"] == written["data"]["documents"]
    for name in METRICS:
        assert evaluated[name] == pytest.approx(written[f"test/{name}"], abs=0.01)
    assert "ndcg@10" in done.stdout and "slice" in done.stdout


def test_evaluate_names_the_bad_line_of_a_beir_folder(scifact_slice, tmp_path, minilm_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("corpus.jsonl", "queries.jsonl"):
        (broken / name).write_text((scifact_slice / name).read_text())
    (broken / "qrels").mkdir()
    (broken / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\t2\n")
    done = run_module("train.evaluate", f"model={minilm_path}", f"tasks=[{broken}]", "out=null",
                      f"hydra.run.dir={tmp_path / 'evaluate'}", cwd=tmp_path)
    assert done.returncode == 2
    assert "test.tsv:2: expected 3 tab-separated fields" in done.stderr


@pytest.mark.training
def test_a_second_run_takes_its_zero_shot_corpus_work_from_the_cache(compose_cfg, tmp_path):
    if not (SCIFACT_DIR / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {SCIFACT_DIR}")
    folder = scifact_subset(tmp_path / "slice", train_queries=30, test_queries=10, distractors=20)
    overrides = ["+experiment=scifact", "model=tiny", f"data.path={folder}", "data.validation_min_queries=10",
                 "data.mine_negatives=3", "~logger", "++trainer.enable_progress_bar=false",
                 "++trainer.enable_model_summary=false", "export=false", f"paths.cache_dir={tmp_path / 'cache'}"]
    first = run(compose_cfg(overrides, tmp_path / "first"))
    assert first["precision"] == resolve_precision("auto", "cpu").as_dict()  # what this machine has
    # Zero-shot and trained: two encodings; mining, then validation and test twice each rank queries.
    assert first["corpus_passes"]["passes_encoded"] == 2 and first["corpus_passes"]["passes_from_cache"] == 0
    # The same run again: its weights are the same at every step (a seeded CPU run), so every
    # encoding and ranking comes from the cache, and so do the same figures.
    again = run(compose_cfg(overrides, tmp_path / "again"))
    assert again["corpus_passes"] == {"passes_encoded": 0, "passes_from_cache": 2, "queries_scored": 0,
                                      "queries_from_cache": first["corpus_passes"]["queries_scored"]}
    assert again["zero_shot"] == first["zero_shot"]
    for name in METRICS:
        assert again[f"test/{name}"] == first[f"test/{name}"]
    # Another learning rate: the zero-shot line (mining, validation, test) still comes from the
    # cache; the trained weights are new, so they encode and rank again.
    changed = run(compose_cfg([*overrides, "model.lr=1e-3"], tmp_path / "changed"))
    work = changed["corpus_passes"]
    assert work["passes_encoded"] == 1 and work["passes_from_cache"] == 1
    assert work["queries_from_cache"] + work["queries_scored"] == first["corpus_passes"]["queries_scored"]
    assert 0 < work["queries_scored"] < first["corpus_passes"]["queries_scored"]
    assert changed["zero_shot"] == first["zero_shot"] and changed["test/ndcg@10"] != first["test/ndcg@10"]
    written = json.loads((tmp_path / "changed" / "results.json").read_text())
    assert written["corpus_passes"] == work and written["precision"] == changed["precision"]


def _read_beir_rows(folder):
    """The rows of a BEIR folder's corpus and queries, and the (query, document, grade) rows of its qrels."""
    rows = {name: [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines() if line.strip()]
            for name in ("corpus", "queries")}
    qrels = {}
    for path in sorted((folder / "qrels").glob("*.tsv")):
        lines = path.read_text().splitlines()[1:]
        qrels[path.stem] = [(q, d, int(g)) for q, d, g in (line.split("\t") for line in lines)]
    return rows["corpus"], rows["queries"], qrels


@pytest.mark.training
def test_the_same_data_in_other_shapes_trains_to_the_same_figures(compose_cfg, tmp_path):
    if not (SCIFACT_DIR / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {SCIFACT_DIR}")
    corpus, queries, qrels = _read_beir_rows(
        scifact_subset(tmp_path / "beir", train_queries=30, test_queries=10, distractors=20))
    folders = {
        "beir": tmp_path / "beir",
        # TREC qrels (qrels/<split>.txt), and a CSV corpus and TSV queries with other column names beside them.
        "trec": write_beir(tmp_path / "trec", corpus, queries, qrels, qrels_file="qrels/{split}.txt", qrels_layout="trec"),
        "tables": write_beir(tmp_path / "tables", [{"id": r["_id"], "title": r["title"], "text": r["text"]} for r in corpus],
                             [{"qid": r["_id"], "query": r["text"]} for r in queries], qrels,
                             corpus_file="corpus.csv", queries_file="queries.tsv", qrels_file="{split}.qrels",
                             qrels_layout="trec"),
    }
    results = {}
    for name, folder in folders.items():
        # The data path is the one setting a user gives (data=beir brings the retrieval recipe); the
        # rest makes the run small and fast.
        cfg = compose_cfg(["data=beir", f"data.path={folder}", "model=tiny", "data.validation_min_queries=10",
                           "data.mine_negatives=3", "encoding_cache.enabled=false", "export=false", "~logger",
                           "++trainer.enable_progress_bar=false"], tmp_path / f"run_{name}")
        assert cfg.task_name == name
        results[name] = run(cfg)
    figures = {name: ({k: v for k, v in r.items() if k.startswith(("val/", "test/"))}, r["zero_shot"])
               for name, r in results.items()}
    assert figures["beir"][0]["test/ndcg@10"] >= 0 and len(figures["beir"][0]) == 8
    assert figures["trec"] == figures["beir"] and figures["tables"] == figures["beir"]
