"""Teacher scores (lightning_modules/data/distillation.py) and the distillation collator: what is read in
each format, every problem of a bad file in one error, and the candidates a batch samples."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_modules.data.batches import DistillationBatch, DistillationItem, TokenizedCorpus
from lightning_modules.data.collate import DistillationCollator
from lightning_modules.data.distillation import read_teacher_scores, write_teacher_scores
from lightning_modules.errors import DataError
from tests.helpers.beir import write_rows

QUERIES = {"q1", "q2", "q3"}
POSITION = {f"d{i}": i for i in range(6)}
GOOD = [{"query_id": "q1", "document_ids": ["d0", "d1", "d2"], "scores": [3.0, 1.0, 0.5]},
        {"query_id": "q2", "document_ids": ["d3", "d4", "d5"], "scores": [0.1, 0.9, 0.4]}]


def _read(path, n_ways=3):
    return read_teacher_scores(str(path), QUERIES, POSITION, n_ways, queries_source="queries.jsonl",
                               corpus_source="corpus.jsonl")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv", ".parquet"])
def test_each_format_reads_to_the_same_rows_of_corpus_indices(tmp_path, suffix):
    path = write_teacher_scores(tmp_path / f"scores{suffix}", [(r["query_id"], r["document_ids"], r["scores"])
                                                                  for r in GOOD])
    read = _read(path)
    assert [(r.query_id, r.documents, r.scores) for r in read.rows] == [("q1", [0, 1, 2], [3.0, 1.0, 0.5]),
                                                                        ("q2", [3, 4, 5], [0.1, 0.9, 0.4])]
    assert read.as_dict()["rows"] == 2 and read.candidates == 6 and read.as_dict()["problems"] == 0
    assert read.rows[0].where.startswith(str(path))


def test_csv_cells_may_hold_python_literal_lists_and_ids_may_be_numbers(tmp_path):
    # pandas writes a list column as its str(): single quotes. JSON Lines may give ids as numbers.
    write_rows(tmp_path / "scores.csv", [{"query_id": "q1", "document_ids": "['d0', 'd1', 'd2']",
                                          "scores": "[3.0, 1.0, 0.5]"}])
    assert _read(tmp_path / "scores.csv").rows[0].documents == [0, 1, 2]
    row = {"QUERY_ID": 7, "document_ids": [1, 2], "scores": [1, 2]}
    (tmp_path / "numbers.jsonl").write_text(json.dumps(row) + "\n")
    read = read_teacher_scores(str(tmp_path / "numbers.jsonl"), {"7"}, {"1": 0, "2": 1}, n_ways=2)
    assert (read.rows[0].query_id, read.rows[0].documents, read.rows[0].scores) == ("7", [0, 1], [1.0, 2.0])


def test_every_problem_of_every_row_is_reported_at_once_with_file_rows_and_counts(tmp_path):
    rows = [GOOD[0],
            {"query_id": "ghost", "document_ids": ["d0", "d1", "d2"], "scores": [1.0, 2.0, 3.0]},  # line 2
            {"query_id": "q2", "document_ids": ["d0", "d99", "d98"], "scores": [1.0, 2.0, 3.0]},  # line 3
            {"query_id": "q3", "document_ids": ["d0", "d1", "d2"], "scores": [1.0, 2.0]},  # line 4
            {"query_id": "q1", "document_ids": ["d3", "d4", "d5"], "scores": [1.0, 2.0, 3.0]},  # line 5: q1 again
            {"query_id": "q2", "document_ids": ["d0", "d1"], "scores": [1.0, 2.0]}]  # line 6: also q2 again
    path = tmp_path / "scores.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines.append('{"query_id": "q3", "document_ids": ["d0", "d1", "d2"], "scores": [1.0, NaN, Infinity]}')  # 7
    lines.append('{"query_id": "q3", "document_ids": "d0 d1", "scores": [1.0, "high"]}')  # line 8
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as caught:
        _read(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: 7 of its 8 rows cannot be used, and none is dropped silently")
    for expected in (
        f"{path}, line 2: query id 'ghost' is not in queries.jsonl",
        f"{path}, line 3: 2 document ids not in corpus.jsonl: 'd99', 'd98'",
        f"{path}, line 4: 3 document ids but 2 scores",
        f"{path}, line 5: query id 'q1' has a row already ({path}, line 1); one row a query",
        f"{path}, line 6: 2 candidates, fewer than n_ways=3",
        f"{path}, line 7: 2 scores are not finite (position 1: nan, position 2: inf)",
        f"{path}, line 8: document_ids is 'd0 d1', not a list; scores holds 'high', not a number",
    ):
        assert expected in message, expected
    # q3 has a row at line 4, so lines 7 and 8 are also duplicates: each kind counted once a row.
    assert ("Rows with each problem: unknown query id: 1 row; query id already in an earlier row: 4 rows; "
            "not a list of ids and a list of numbers: 1 row; len(document_ids) != len(scores): 1 row; "
            "unknown document ids: 1 row; NaN or infinite scores: 1 row; fewer candidates than n_ways: 1 row"
            ) in message
    assert "a smaller data.n_ways (now 3)" in message


def test_one_kind_of_problem_alone_names_its_rows(tmp_path):
    """Each check on its own: the message names the row and the count of that kind."""
    cases = {
        "unknown query id": ({"query_id": "q9"}, "line 2: query id 'q9' is not in queries.jsonl"),
        "unknown document ids": ({"document_ids": ["d3", "d4", "nope"]},
                                 "line 2: 1 document ids not in corpus.jsonl: 'nope'"),
        "len(document_ids) != len(scores)": ({"scores": [1.0, 2.0, 3.0, 4.0]}, "line 2: 3 document ids but 4 scores"),
        "NaN or infinite scores": ({"scores": [1.0, float("nan"), 3.0]},
                                   "line 2: 1 scores are not finite (position 1: nan)"),
        "fewer candidates than n_ways": ({"document_ids": ["d3"], "scores": [1.0]},
                                         "line 2: 1 candidates, fewer than n_ways=3"),
    }
    for kind, (change, detail) in cases.items():
        path = tmp_path / f"{kind[:8].replace(' ', '_')}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in (GOOD[0], {**GOOD[1], **change})))
        with pytest.raises(DataError) as caught:
            _read(path)
        assert f"{path}: 1 of its 2 rows cannot be used" in str(caught.value)
        assert f"{path}, {detail}" in str(caught.value)
        assert f"Rows with each problem: {kind}: 1 row" in str(caught.value)


def test_a_file_without_the_columns_or_not_there_is_an_error(tmp_path):
    write_rows(tmp_path / "scores.csv", [{"qid": "q1", "docs": "[]", "scores": "[]"}])
    with pytest.raises(DataError, match=r"no document_ids column\. Columns found: \['qid', 'docs', 'scores'\]"):
        _read(tmp_path / "scores.csv")
    with pytest.raises(DataError, match="no such scores file"):
        _read(tmp_path / "missing.jsonl")


def test_many_problems_show_the_first_rows_and_count_them_all(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text("".join(json.dumps({"query_id": f"x{i}", "document_ids": ["d0", "d1", "d2"], "scores": [1, 2, 3]})
                            + "\n" for i in range(25)))
    with pytest.raises(DataError) as caught:
        _read(path)
    message = str(caught.value)
    assert "25 of its 25 rows cannot be used" in message and "... and 15 more" in message
    assert "line 10: query id 'x9'" in message and "line 11:" not in message
    assert "unknown query id: 25 rows" in message


# ---- the collator ------------------------------------------------------------------------------


def _collator(n_ways: int) -> DistillationCollator:
    queries = [[101, 7, 102], [101, 8, 9, 102]]
    corpus = TokenizedCorpus([f"d{i}" for i in range(6)], [[101] + [20 + i] * (i + 1) + [102] for i in range(6)])
    return DistillationCollator(0, queries, corpus, n_ways)


def test_the_batch_holds_queries_then_each_querys_candidates_with_the_best_first():
    items = [DistillationItem(0, [0, 1, 2, 3], [0.5, 2.0, 1.0, 0.0]), DistillationItem(1, [4, 5, 1, 2], [9, 1, 3, 2])]
    torch.manual_seed(0)
    batch = _collator(3)(items)
    assert isinstance(batch, DistillationBatch) and batch.num_pairs == 2
    assert batch.input_ids.shape[0] == 2 + 2 * 3 and batch.attention_mask.shape == batch.input_ids.shape
    assert batch.teacher_scores.dtype == torch.float32 and batch.teacher_scores.shape == (2, 3)
    assert batch.input_ids[0, :3].tolist() == [101, 7, 102] and batch.input_ids[1, :4].tolist() == [101, 8, 9, 102]
    # Rows 2-4 are query 0's documents, 5-7 query 1's: each row's document matches its teacher score.
    for row, item in enumerate(items):
        documents = [int(batch.input_ids[2 + 3 * row + j, 1]) - 20 for j in range(3)]
        assert len(set(documents)) == 3 and set(documents) <= set(item.documents)
        assert documents[0] == item.documents[item.scores.index(max(item.scores))]  # the teacher's best first
        assert batch.teacher_scores[row].tolist() == [float(item.scores[item.documents.index(d)]) for d in documents]
        lengths = batch.attention_mask[2 + 3 * row: 5 + 3 * row].sum(dim=1).tolist()
        assert lengths == [d + 3 for d in documents]
    # Padded to the longest text of the batch (document i has i + 3 tokens).
    assert batch.input_ids.shape[1] == int(batch.attention_mask.sum(dim=1).max())


def test_the_other_candidates_are_drawn_anew_each_time_from_torchs_rng():
    item = DistillationItem(0, [0, 1, 2, 3, 4, 5], [5.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    collator = _collator(3)
    torch.manual_seed(1)
    draws = [tuple(collator.sample(item)) for _ in range(200)]
    assert all(d[0] == 0 for d in draws)  # the best always
    assert {i for d in draws for i in d[1:]} == {1, 2, 3, 4, 5} and len(set(draws)) > 10
    torch.manual_seed(1)
    assert [tuple(collator.sample(item)) for _ in range(200)] == draws  # a resumed run draws the same
    # Exactly n_ways candidates: all of them, the best first.
    assert sorted(_collator(6).sample(item)) == [0, 1, 2, 3, 4, 5] and _collator(6).sample(item)[0] == 0
    with pytest.raises(ValueError, match="fewer than n_ways=3"):
        collator.sample(DistillationItem(0, [0, 1], [1.0, 2.0]))
