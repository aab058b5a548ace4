"""Reading BEIR folders: what is kept, what is counted, and the errors for bad input."""

from __future__ import annotations

import pytest

from lightning_modules.data.beir import read_beir
from lightning_modules.errors import DataError
from tests.helpers.beir import SCIFACT_DIR, write_beir

CORPUS = [{"_id": "d1", "title": "Title one", "text": "Body one."}, {"_id": "d2", "title": "", "text": "Body two."},
          {"_id": "d3", "title": "Only a title", "text": ""}]
QUERIES = [{"_id": "q1", "text": "first query"}, {"_id": "q2", "text": "second query"},
           {"_id": "q3", "text": "third query"}]


def _folder(tmp_path, qrels=None, corpus=CORPUS, queries=QUERIES):
    qrels = qrels if qrels is not None else {"test": [("q1", "d1", 2), ("q1", "d2", 1), ("q2", "d3", 1)]}
    return write_beir(tmp_path / "set", corpus, queries, qrels)


def test_documents_join_title_and_text_and_grades_are_kept(tmp_path):
    data = read_beir(str(_folder(tmp_path)), ["test"])
    assert data.corpus_ids == ["d1", "d2", "d3"]
    assert data.corpus_texts == ["Title one Body one.", "Body two.", "Only a title"]
    assert data.judgements["test"].by_query == {"q1": {"d1": 2, "d2": 1}, "q2": {"d3": 1}}


def test_unknown_ids_and_queries_without_relevant_documents_are_counted(tmp_path):
    qrels = {"test": [("q1", "d1", 1), ("q1", "nope", 1), ("ghost", "d1", 1), ("q2", "d2", 0), ("q3", "d3", 1)]}
    report = read_beir(str(_folder(tmp_path, qrels)), ["test"]).judgements["test"]
    assert (report.unknown_documents, report.unknown_queries, report.without_relevant) == (1, 1, 1)
    assert report.by_query == {"q1": {"d1": 1}, "q3": {"d3": 1}}
    summary = report.summary()
    assert "1 naming a corpus id not in the corpus" in summary and "1 queries have no relevant document" in summary


def test_qrels_that_match_nothing_are_an_error(tmp_path):
    with pytest.raises(DataError, match="none of its 2 judgements names both"):
        read_beir(str(_folder(tmp_path, {"test": [("x", "d1", 1), ("q1", "y", 1)]})), ["test"])


def test_a_malformed_json_line_names_file_and_line(tmp_path):
    folder = _folder(tmp_path)
    lines = (folder / "corpus.jsonl").read_text().splitlines()
    lines[1] = lines[1][:-1]  # drop the closing brace of the second document
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: not valid JSON"):
        read_beir(str(folder), ["test"])


def test_missing_fields_duplicates_and_an_empty_corpus_are_errors(tmp_path):
    with pytest.raises(DataError, match=r"queries\.jsonl:1: missing 'text'"):
        read_beir(str(_folder(tmp_path / "a", queries=[{"_id": "q1"}])), ["test"])
    with pytest.raises(DataError, match="corpus id 'd1' appears twice"):
        read_beir(str(_folder(tmp_path / "b", corpus=CORPUS + CORPUS[:1])), ["test"])
    with pytest.raises(DataError, match="the corpus is empty"):
        read_beir(str(_folder(tmp_path / "c", corpus=[])), ["test"])


def test_bad_qrels_rows_and_missing_splits_are_errors(tmp_path):
    with pytest.raises(DataError, match=r"test\.tsv:2: score 'high' is not a number"):
        read_beir(str(_folder(tmp_path / "a", {"test": [("q1", "d1", "high")]})), ["test"])
    with pytest.raises(DataError, match=r"dev\.tsv: not found.*available: \['test'\]"):
        read_beir(str(_folder(tmp_path / "b")), ["dev"])
    with pytest.raises(DataError, match="no judgement has a score above 0"):
        read_beir(str(_folder(tmp_path / "c", {"test": [("q1", "d1", 0)]})), ["test"])


def test_not_a_folder_nor_a_hub_id_is_an_error(tmp_path):
    with pytest.raises(DataError, match="not a folder, nor a hub dataset id"):
        read_beir(str(tmp_path / "missing" / "deeper"), ["test"])


def test_the_shared_scifact_reads_as_beir_describes_it():
    if not (SCIFACT_DIR / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {SCIFACT_DIR}")
    data = read_beir(str(SCIFACT_DIR), ["train", "test"])
    assert len(data.corpus_ids) == 5183
    assert (len(data.judgements["train"].by_query), len(data.judgements["test"].by_query)) == (809, 300)
    assert sum(len(d) for d in data.judgements["test"].by_query.values()) == 339


def test_a_hub_set_reads_corpus_queries_and_its_qrels_dataset(monkeypatch):
    import datasets

    tables = {("BeIR/tiny", "corpus"): CORPUS, ("BeIR/tiny", "queries"): QUERIES,
              ("BeIR/tiny-qrels", None): [{"query-id": "q1", "corpus-id": "d2", "score": 1}]}
    asked = []

    def load_dataset(name, config=None, split=None):
        asked.append((name, config, split))
        return tables[(name, config)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    data = read_beir("BeIR/tiny", ["test"])
    assert asked == [("BeIR/tiny", "corpus", "corpus"), ("BeIR/tiny", "queries", "queries"), ("BeIR/tiny-qrels", None, "test")]
    assert data.corpus_texts[0] == "Title one Body one." and data.judgements["test"].by_query == {"q1": {"d2": 1}}


def test_an_unreachable_hub_says_so_and_how_to_read_a_folder(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"BeIR/tiny: could not read it from the hub \(ConnectionError: no network\); give a local"):
        read_beir("BeIR/tiny", ["test"])
