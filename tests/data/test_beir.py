"""Reading retrieval folders (BEIR's layout, TREC qrels, CSV/TSV/Parquet tables): what is kept,
what is counted, and the errors for bad input."""

from __future__ import annotations

import logging

import pytest

from lightning_modules.data.beir import beir_folder_problem, is_beir_folder, read_beir, read_corpus, read_queries
from lightning_modules.errors import DataError
from tests.helpers.beir import SCIFACT_DIR, write_beir

CORPUS = [{"_id": "d1", "title": "Title one", "text": "Body one."},
          {"_id": "d2", "title": "", "text": 'Body two, with a comma, a "quote"\tand a tab.'},
          {"_id": "d3", "title": "Only a title", "text": ""}]
QUERIES = [{"_id": "q1", "text": "first query"}, {"_id": "q2", "text": "second query"},
           {"_id": "q3", "text": "third query"}]


def _folder(tmp_path, qrels=None, corpus=CORPUS, queries=QUERIES):
    qrels = qrels if qrels is not None else {"test": [("q1", "d1", 2), ("q1", "d2", 1), ("q2", "d3", 1)]}
    return write_beir(tmp_path / "set", corpus, queries, qrels)


def test_documents_join_title_and_text_and_grades_are_kept(tmp_path):
    data = read_beir(str(_folder(tmp_path)), ["test"])
    assert data.corpus_ids == ["d1", "d2", "d3"]
    assert data.corpus_texts == ["Title one Body one.", 'Body two, with a comma, a "quote"\tand a tab.', "Only a title"]
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
    with pytest.raises(DataError, match=r"corpus\.jsonl, line 2: not valid JSON"):
        read_beir(str(folder), ["test"])


def test_missing_fields_duplicates_and_an_empty_corpus_are_errors(tmp_path):
    with pytest.raises(DataError, match=r"queries\.jsonl: no text column for the query rows\. "
                                       r"Columns found: \['_id'\]"):
        read_beir(str(_folder(tmp_path / "a", queries=[{"_id": "q1"}])), ["test"])
    with pytest.raises(DataError, match=r"queries\.jsonl, line 2, column '_id': the query has no id"):
        read_beir(str(_folder(tmp_path / "b", queries=[QUERIES[0], {"text": "no id"}])), ["test"])
    with pytest.raises(DataError, match=r"corpus\.jsonl, line 4: corpus id 'd1' appears twice"):
        read_beir(str(_folder(tmp_path / "c", corpus=CORPUS + CORPUS[:1])), ["test"])
    with pytest.raises(DataError, match=r"corpus\.jsonl: holds no document \(the file is empty\); retrieval needs"):
        read_beir(str(_folder(tmp_path / "d", corpus=[])), ["test"])


def test_bad_qrels_rows_and_missing_splits_are_errors(tmp_path):
    with pytest.raises(DataError, match=r"test\.tsv:2: score 'high' is not a number"):
        read_beir(str(_folder(tmp_path / "a", {"test": [("q1", "d1", "high")]})), ["test"])
    with pytest.raises(DataError, match=r"no judgements for the split 'dev': looked for qrels/dev\.tsv, "
                                       r"qrels/dev\.txt, qrels/dev\.qrels, dev\.qrels \(splits found: \['test'\]\)"):
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
        return datasets.Dataset.from_list(tables[(name, config)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    data = read_beir("BeIR/tiny", ["test"])
    assert asked == [("BeIR/tiny", "corpus", "corpus"), ("BeIR/tiny", "queries", "queries"), ("BeIR/tiny-qrels", None, "test")]
    assert data.corpus_texts[0] == "Title one Body one." and data.judgements["test"].by_query == {"q1": {"d2": 1}}
    assert data.judgements["test"].source == "hub dataset BeIR/tiny-qrels, split test"


def test_an_unreachable_hub_says_so_and_how_to_read_a_folder(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"BeIR/tiny: no such local file, and loading it as a hub dataset failed "
                                       r"\(ConnectionError: no network\); or give a local folder"):
        read_beir("BeIR/tiny", ["test"])


# ---- the shapes retrieval data is kept in -----------------------------------------------------------

# Judgements with a grade 2, a grade 0 (its query not evaluated) and an unknown document: the
# counts must survive every layout too.
JUDGED = [("q1", "d1", 2), ("q1", "d2", 1), ("q2", "d3", 1), ("q3", "d1", 0), ("q2", "ghost", 1)]


def _renamed(rows, names):
    return [{names.get(key, key): value for key, value in row.items()} for row in rows]


def _without_title(rows):
    return [{"id": r["_id"], "text": " ".join(p for p in (r["title"], r["text"]) if p)} for r in rows]


LAYOUTS = {
    "trec qrels/test.txt": {"qrels_file": "qrels/{split}.txt", "qrels_layout": "trec"},
    "trec qrels/test.tsv": {"qrels_layout": "trec"},
    "trec qrels/test.qrels": {"qrels_file": "qrels/{split}.qrels", "qrels_layout": "trec"},
    "trec test.qrels": {"qrels_file": "{split}.qrels", "qrels_layout": "trec"},
    "tsv without header": {"qrels_layout": "headerless"},
    "csv _id,title,text": {"corpus_file": "corpus.csv", "queries_file": "queries.csv"},
    "csv id,title,text / tsv qid,query": {"corpus_file": "corpus.csv", "queries_file": "queries.tsv",
                                          "corpus": _renamed(CORPUS, {"_id": "id"}),
                                          "queries": _renamed(QUERIES, {"_id": "qid", "text": "query"})},
    "tsv id,text": {"corpus_file": "corpus.tsv", "corpus": _without_title(CORPUS)},
    "parquet docid,Title,contents / query_id,question": {
        "corpus_file": "corpus.parquet", "queries_file": "queries.parquet", "qrels_layout": "trec",
        "corpus": _renamed(CORPUS, {"_id": "docid", "title": "Title", "text": "contents"}),
        "queries": _renamed(QUERIES, {"_id": "query_id", "text": "question"})},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_same_set_in_every_accepted_layout_reads_the_same(tmp_path, layout):
    options = dict(LAYOUTS[layout])
    corpus, queries = options.pop("corpus", CORPUS), options.pop("queries", QUERIES)
    expected = read_beir(str(write_beir(tmp_path / "beir", CORPUS, QUERIES, {"test": JUDGED})), ["test"])
    data = read_beir(str(write_beir(tmp_path / "other", corpus, queries, {"test": JUDGED}, **options)), ["test"])
    assert (data.corpus_ids, data.corpus_texts, data.queries) == (expected.corpus_ids, expected.corpus_texts,
                                                                  expected.queries)
    got, want = data.judgements["test"].as_dict(), expected.judgements["test"].as_dict()
    qrels_file = options.get("qrels_file", "qrels/{split}.tsv").format(split="test")
    assert got.pop("source") == str(tmp_path / "other" / qrels_file)
    want.pop("source")
    assert got == want and data.judgements["test"].by_query == expected.judgements["test"].by_query
    assert data.warnings == expected.warnings == []


def test_qrels_files_are_looked_for_in_the_documented_order(tmp_path):
    folder = _folder(tmp_path, {"test": [("q1", "d1", 1)]})
    (folder / "qrels" / "test.txt").write_text("q2 0 d2 1\n")
    (folder / "test.qrels").write_text("q3 0 d3 1\n")
    assert read_beir(str(folder), ["test"]).judgements["test"].by_query == {"q1": {"d1": 1}}
    (folder / "qrels" / "test.tsv").unlink()
    assert read_beir(str(folder), ["test"]).judgements["test"].by_query == {"q2": {"d2": 1}}
    (folder / "qrels" / "test.txt").unlink()
    assert read_beir(str(folder), ["test"]).judgements["test"].by_query == {"q3": {"d3": 1}}


def test_a_malformed_trec_line_names_file_line_and_what_was_expected(tmp_path):
    qrels = _folder(tmp_path, {}) / "qrels" / "test.txt"
    qrels.parent.mkdir()
    folder = qrels.parent.parent
    qrels.write_text("q1 0 d1 1\n\nq2 0 d3\n")
    with pytest.raises(DataError, match=r"test\.txt:3: expected 4 whitespace-separated fields \(query-id, iteration, "
                                       r"corpus-id, relevance\) as in TREC qrels, got 3: \['q2', '0', 'd3'\]"):
        read_beir(str(folder), ["test"])
    qrels.write_text("q1 0 d1 1\nq2 0 d3 high\n")
    with pytest.raises(DataError, match=r"test\.txt:2: score 'high' is not a number"):
        read_beir(str(folder), ["test"])
    qrels.write_text("q1 d1\n")
    with pytest.raises(DataError, match=r"test\.txt:1: expected the header query-id<TAB>corpus-id<TAB>score \(BEIR\), "
                                       r"or a TREC qrels line 'query-id iteration corpus-id relevance'; got 'q1 d1'"):
        read_beir(str(folder), ["test"])


def test_tables_without_an_id_or_text_column_name_the_file_and_its_columns(tmp_path):
    corpus = [{"key": "d1", "body_text": "x"}]
    with pytest.raises(DataError, match=r"corpus\.csv: no id and no text column for the document rows\. Columns found: "
                                       r"\['key', 'body_text'\]\. Name the id column one of \['_id', 'id'"):
        read_beir(str(write_beir(tmp_path / "a", corpus, QUERIES, {}, corpus_file="corpus.csv")), ["test"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "corpus.jsonl").write_text("")
    (tmp_path / "b" / "queries.csv").write_text("_id;text\nq1;first\n")  # a semicolon file named .csv reads too
    (tmp_path / "b" / "corpus.csv").write_text("id|text\nd1|x\n")  # .jsonl is looked for first: it is empty
    with pytest.raises(DataError, match=r"corpus\.jsonl: holds no document"):
        read_beir(str(tmp_path / "b"), ["test"])
    (tmp_path / "b" / "corpus.jsonl").unlink()
    with pytest.raises(DataError, match=r"corpus\.csv: no id and no text column .* Columns found: \['id\|text'\]\. "
                                       r"It was read as comma-separated \(detected.*is that its separator\?"):
        read_beir(str(tmp_path / "b"), ["test"])


def test_an_empty_document_is_kept_counted_and_warned_about_once(tmp_path, caplog):
    corpus = CORPUS + [{"_id": "471", "title": "", "text": "  "}, {"_id": "995", "title": None, "text": ""}]
    folder = _folder(tmp_path, {"test": [("q1", "d1", 1), ("q2", "471", 1), ("q3", "995", 0)]}, corpus=corpus)
    with caplog.at_level(logging.WARNING, logger="lightning_modules.data.beir"):
        data = read_beir(str(folder), ["test"])
    assert data.corpus_ids[-2:] == ["471", "995"] and data.corpus_texts[-2:] == ["", ""]
    assert data.judgements["test"].by_query == {"q1": {"d1": 1}, "q2": {"471": 1}}
    assert data.warnings == [f"{folder / 'corpus.jsonl'}: 2 documents have neither title nor text ('471', '995'), "
                             "1 of them relevant to a query of the splits read; kept as empty texts (just the special "
                             "tokens) so that their judgements still count"]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == data.warnings


def test_an_empty_queries_file_is_blamed_on_itself_not_on_the_qrels(tmp_path):
    with pytest.raises(DataError, match=r"queries\.jsonl: holds no query \(the file is empty\)") as raised:
        read_beir(str(_folder(tmp_path / "a", queries=[])), ["test"])
    assert "judgements" not in str(raised.value)
    folder = write_beir(tmp_path / "b", CORPUS, QUERIES, {"test": JUDGED}, queries_file="queries.csv")
    (folder / "queries.csv").write_text("\n\n")
    with pytest.raises(DataError, match=r"queries\.csv: holds no query \(the file is empty\)"):
        read_beir(str(folder), ["test"])


def test_a_retrieval_folder_is_told_from_others_and_says_why_not(tmp_path):
    assert is_beir_folder(_folder(tmp_path)) and beir_folder_problem(tmp_path / "set") is None
    assert is_beir_folder(write_beir(tmp_path / "csv", CORPUS, QUERIES, {}, corpus_file="corpus.parquet",
                                     queries_file="queries.tsv"))
    sts = tmp_path / "sts"
    sts.mkdir()
    (sts / "train.csv").write_text("sentence1,sentence2,score\na,b,1\n")
    assert not is_beir_folder(sts)
    assert beir_folder_problem(sts).startswith(f"{sts}: no corpus and no queries file (looked for corpus.jsonl, ")
    (sts / "corpus.csv").write_text("id,text\nd1,x\n")
    assert beir_folder_problem(sts).startswith(f"{sts}: no queries file (looked for queries.jsonl, ")
    assert beir_folder_problem(sts / "train.csv") == f"{sts / 'train.csv'}: not a folder"
    with pytest.raises(DataError, match="no queries file"):
        read_beir(str(sts), ["test"])


def test_a_corpus_or_queries_file_reads_alone_and_queries_may_be_headerless_tsv(tmp_path):
    folder = _folder(tmp_path)
    whole = read_beir(str(folder), ["test"])
    corpus = read_corpus(str(folder / "corpus.jsonl"))
    assert (corpus.ids, corpus.texts) == (whole.corpus_ids, whole.corpus_texts)
    assert read_corpus(str(folder)).ids == whole.corpus_ids and read_queries(str(folder)) == whole.queries
    (tmp_path / "queries.tsv").write_text("q1\tWhat is it?\nq2\tanother one\n")
    assert read_queries(str(tmp_path / "queries.tsv")) == {"q1": "What is it?", "q2": "another one"}
    (tmp_path / "named.tsv").write_text("qid\tquery\nq1\tWhat is it?\n")  # a header: read by its names
    assert read_queries(str(tmp_path / "named.tsv")) == {"q1": "What is it?"}
    (tmp_path / "blank.tsv").write_text("q1\t \n")
    with pytest.raises(DataError, match="blank.tsv:1: query 'q1' has no text"):
        read_queries(str(tmp_path / "blank.tsv"))
    with pytest.raises(DataError, match="not a folder, a file, nor a hub dataset id"):
        read_corpus(str(tmp_path / "missing" / "corpus"))
