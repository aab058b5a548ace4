"""Reading the user's pair files: every format, column detection, row checks, splits."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_modules.data.columns import resolve_columns
from lightning_modules.errors import DataError
from lightning_modules.data.formats import TableSpec, detect_delimiter, parse_delimiter, read_table
from lightning_modules.data.pairs import build_examples, choose_supervision
from lightning_modules.data.splitting import drop_leaked_pairs, holdout_split, holdout_target
from tests.helpers.tables import write_rows

ROWS = [
    {"sentence1": "A cat sits.", "sentence2": "A cat is sitting.", "score": 4.5},
    {"sentence1": "A dog runs.", "sentence2": "The sky is blue.", "score": 0.2},
    {"sentence1": "Héllo, wörld", "sentence2": "Hi, world", "score": 3.0},
]


def read(path, split="train"):
    return read_table(TableSpec.parse(str(path), split))


def examples_of(path, supervision="auto", columns=None, score_range=None, symmetric=True):
    table = read(path)
    mapping = resolve_columns(table.source, table.columns, columns)
    chosen = choose_supervision(mapping, supervision, table.source)
    return build_examples(table, mapping, chosen, "train", symmetric, score_range)


# ---- formats ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_every_format_reads_the_same_rows(tmp_path, suffix):
    table = read(write_rows(tmp_path / f"pairs{suffix}", ROWS))
    assert table.columns == ["sentence1", "sentence2", "score"]
    assert [row["sentence1"] for row in table.rows] == [row["sentence1"] for row in ROWS]
    assert [float(row["score"]) for row in table.rows] == [row["score"] for row in ROWS]
    examples, report = examples_of(tmp_path / f"pairs{suffix}")
    assert examples.supervision == "graded"
    assert examples.text_b == [row["sentence2"] for row in ROWS]
    assert report.kept == 3 and not report.dropped


def test_csv_rows_are_located_by_line_and_a_quoted_newline_is_one_field(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('sentence1,sentence2,score\n"two\nlines",b,1\nc,d,2\n', encoding="utf-8")
    table = read(path)
    assert table.rows[0]["sentence1"] == "two\nlines"
    assert table.where(1, "score") == f"{path}, line 4, column 'score'"


def test_a_row_with_too_many_fields_names_its_line(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("sentence1,sentence2,score\na,b,1\nc, with comma,d,2\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs\.csv, line 3: 4 fields, but the header has 3"):
        read(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty file"), (b"sentence1,sentence2,score\n", "no rows"), (b"  \n", "empty file")],
)
def test_empty_files_are_refused(tmp_path, content, message):
    path = tmp_path / "pairs.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read(path)


def test_bytes_that_are_not_utf8_name_the_line(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes("sentence1,sentence2,score\na,b,1\n".encode() + "caf\xe9,d,2\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"line 3: not valid UTF-8"):
        read(path)


def test_missing_path_unknown_format_and_folder_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read(tmp_path / "nope.csv")
    odd = tmp_path / "pairs.xlsx"
    odd.write_bytes(b"PK")
    with pytest.raises(DataError, match=r"cannot read the format '\.xlsx'; supported: \.csv"):
        read(odd)
    with pytest.raises(DataError, match="is a folder"):
        read(tmp_path)


def test_a_hub_id_that_cannot_be_loaded_says_so(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"no such local file, and loading it as a hub dataset failed.*no network"):
        read_table(TableSpec.parse({"path": "someone/pairs", "name": "triplet", "split": "dev"}, "train"))


def test_a_hub_dataset_is_read_with_its_config_and_split(monkeypatch):
    import datasets

    calls = []

    def fake_load(path, name, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    table = read_table(TableSpec.parse({"path": "someone/pairs", "name": "pair-score"}, "validation"))
    assert calls == [("someone/pairs", "pair-score", "validation")]
    assert len(table) == 3 and table.where(0) == "hub dataset someone/pairs (pair-score), split validation, row 1"


def test_bad_json_names_the_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"query": "a", "positive": "b"}\n{"query": "c", \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: not valid JSON"):
        read(path)


def test_a_corrupt_parquet_file_is_a_clear_error(tmp_path):
    path = tmp_path / "pairs.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="not readable as Parquet"):
        read(path)


# ---- columns ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["sentence1", "sentence2", "score"], ("sentence1", "sentence2", "score", None, [])),
        (["Query", "Positive", "Negative"], ("Query", "Positive", None, None, ["Negative"])),
        (["anchor", "positive", "negative_1", "negative_2"], ("anchor", "positive", None, None,
                                                              ["negative_1", "negative_2"])),
        (["question", "answer"], ("question", "answer", None, None, [])),
        # Retrieval data: a question and its passage (or context, document), a negative passage.
        (["id", "Question", "Passage"], ("Question", "Passage", None, None, [])),
        (["question", "context", "negative"], ("question", "context", None, None, ["negative"])),
        (["query", "context"], ("query", "context", None, None, [])),
        (["question", "document"], ("question", "document", None, None, [])),
        (["id", "text1", "text2", "label"], ("text1", "text2", None, "label", [])),
        (["query", "positive", "hard_negatives"], ("query", "positive", None, None, ["hard_negatives"])),
    ],
)
def test_common_column_names_are_detected(columns, expected):
    mapping = resolve_columns("f.csv", columns)
    assert (mapping.text_a, mapping.text_b, mapping.score, mapping.label, mapping.negatives) == expected


def test_explicit_mapping_wins_and_the_rest_is_detected():
    mapping = resolve_columns("f.csv", ["q", "doc", "score", "label"], {"text_a": "q", "text_b": "doc", "label": "label"})
    assert (mapping.text_a, mapping.text_b, mapping.label, mapping.score) == ("q", "doc", "label", None)
    assert mapping.detected == []


def test_a_missing_mapped_column_lists_the_columns_and_the_detected_mapping():
    with pytest.raises(DataError) as error:
        resolve_columns("f.csv", ["sentence1", "sentence2", "score"], {"score": "similarity"})
    message = str(error.value)
    assert "['similarity']" in message and "data.columns.score" in message
    assert "Columns found: ['sentence1', 'sentence2', 'score']" in message
    assert "text_a='sentence1'" in message


def test_no_text_columns_is_a_clear_error():
    with pytest.raises(DataError, match=r"no pair of text columns found. Columns found: \['a', 'b'\]"):
        resolve_columns("f.csv", ["a", "b"])


# ---- supervision and row checks -----------------------------------------------------------


def test_supervision_is_detected_from_the_columns(tmp_path):
    rows = [{"query": "q1", "positive": "p1", "negative": "n1"}, {"query": "q2", "positive": "p2", "negative": ""}]
    examples, report = examples_of(write_rows(tmp_path / "t.jsonl", rows))
    assert examples.supervision == "contrastive"
    assert examples.negatives == [["n1"], []]
    assert examples.targets == [1.0, 1.0]
    assert any("1 empty hard-negative cells skipped" in note for note in report.notes)
    labelled = [{"text1": "a", "text2": "b", "label": 1}, {"text1": "c", "text2": "d", "label": 0}]
    examples, _ = examples_of(write_rows(tmp_path / "b.csv", labelled))
    assert examples.supervision == "binary" and examples.targets == [1.0, 0.0]


def test_a_list_column_of_negatives_is_read(tmp_path):
    rows = [{"anchor": "a", "positive": "p", "negatives": ["n1", "n2", ""]}]
    examples, _ = examples_of(write_rows(tmp_path / "t.parquet", rows))
    assert examples.negatives == [["n1", "n2"]]


def test_graded_supervision_reads_a_label_column_as_scores(tmp_path):
    rows = [{"sentence1": "a", "sentence2": "b", "label": 4.2}, {"sentence1": "c", "sentence2": "d", "label": 1.0}]
    examples, _ = examples_of(write_rows(tmp_path / "glue.csv", rows), supervision="graded")
    assert examples.supervision == "graded" and examples.targets == [4.2, 1.0]


def test_contrastive_supervision_refuses_a_label_column(tmp_path):
    rows = [{"text1": "a", "text2": "b", "label": 1}]
    with pytest.raises(DataError, match="supervision=contrastive takes positive pairs only"):
        examples_of(write_rows(tmp_path / "b.csv", rows), supervision="contrastive")


def test_empty_texts_are_dropped_and_counted_with_the_first_place(tmp_path):
    rows = [*ROWS, {"sentence1": "   ", "sentence2": "x", "score": 1}, {"sentence1": "y", "sentence2": "", "score": 1}]
    path = write_rows(tmp_path / "pairs.csv", rows)
    examples, report = examples_of(path)
    assert len(examples) == 3
    assert report.dropped == {"empty or whitespace-only text": 2}
    assert report.first_dropped["empty or whitespace-only text"] == f"{path}, line 5, column 'sentence1'"
    assert "5 rows read" in report.summary() and "3 kept" in report.summary()


@pytest.mark.parametrize(("bad", "message"), [("", "empty score"), ("high", "'high' is not a number"),
                                              ("nan", "'nan' is not a finite number")])
def test_a_bad_score_stops_with_file_line_and_column(tmp_path, bad, message):
    path = write_rows(tmp_path / "pairs.csv", [*ROWS, {"sentence1": "a", "sentence2": "b", "score": bad}])
    with pytest.raises(DataError, match=rf"pairs\.csv, line 5, column 'score': {message}"):
        examples_of(path)


def test_a_null_score_in_jsonl_stops_with_its_line(tmp_path):
    path = write_rows(tmp_path / "pairs.jsonl", [*ROWS, {"sentence1": "a", "sentence2": "b", "score": None}])
    with pytest.raises(DataError, match=r"pairs\.jsonl, line 4, column 'score': empty score"):
        examples_of(path)


def test_a_score_outside_the_declared_range_is_an_error(tmp_path):
    path = write_rows(tmp_path / "pairs.csv", ROWS)
    with pytest.raises(DataError, match=r"line 2, column 'score': 4.5 is outside the declared range \[0.0, 4.0\]"):
        examples_of(path, score_range=(0.0, 4.0))


@pytest.mark.parametrize("bad", ["2", "-1", "yes", "0.5"])
def test_labels_outside_0_1_stop_with_a_hint(tmp_path, bad):
    rows = [{"text1": "a", "text2": "b", "label": "1"}, {"text1": "c", "text2": "d", "label": bad}]
    with pytest.raises(DataError, match=rf"line 3, column 'label': label '{bad}' is not 0 or 1.*supervision=graded"):
        examples_of(write_rows(tmp_path / "b.csv", rows))


def test_duplicate_pairs_are_dropped_counted_and_conflicts_noted(tmp_path):
    rows = [
        {"text1": "a", "text2": "b", "label": 1},
        {"text1": "a", "text2": "b", "label": 1},  # exact duplicate
        {"text1": "b", "text2": "a", "label": 0},  # the same pair reversed, another label
    ]
    path = write_rows(tmp_path / "b.csv", rows)
    examples, report = examples_of(path)
    assert len(examples) == 1 and report.dropped == {"duplicate pair": 2}
    assert report.first_dropped["duplicate pair"] == f"{path}, line 3"
    assert any(note.startswith("1 of the duplicate pairs had a different") for note in report.notes)
    # Query -> document: (b, a) is another pair.
    examples, report = examples_of(path, symmetric=False)
    assert len(examples) == 2 and report.dropped == {"duplicate pair": 1}


def test_a_text_cell_that_is_not_text_is_an_error(tmp_path):
    path = write_rows(tmp_path / "pairs.jsonl", [{"query": "a", "positive": 42}])
    with pytest.raises(DataError, match=r"line 1, column 'positive': expected text, found int 42"):
        examples_of(path)


def test_a_file_with_no_usable_row_is_an_error(tmp_path):
    path = write_rows(tmp_path / "pairs.csv", [{"sentence1": " ", "sentence2": "b", "score": 1}])
    with pytest.raises(DataError, match="none of the 1 rows is usable"):
        examples_of(path)


# ---- splits -------------------------------------------------------------------------------


def _many_pairs(tmp_path, n=200):
    # 50 text_a, 4 pairs each.
    rows = [{"query": f"q{i % 50}", "positive": f"p{i}"} for i in range(n)]
    return examples_of(write_rows(tmp_path / "many.jsonl", rows))[0]


def test_holdout_is_seeded_capped_and_shares_no_text_a(tmp_path):
    examples = _many_pairs(tmp_path)
    train, validation = holdout_split(examples, 0.1, None, seed=3)
    assert len(validation) == 20 and len(train) == 180
    assert not {examples.text_a[i] for i in train} & {examples.text_a[i] for i in validation}
    assert holdout_split(examples, 0.1, None, seed=3) == (train, validation)
    assert holdout_split(examples, 0.1, None, seed=4) != (train, validation)
    _, capped = holdout_split(examples, 0.5, 8, seed=3)
    assert len(capped) == 8


def test_holdout_moves_a_reversed_pair_back_to_training(tmp_path):
    rows = [{"query": "x", "positive": "y"}, {"query": "y", "positive": "x"}] + [
        {"query": f"q{i}", "positive": f"p{i}"} for i in range(20)]
    examples = examples_of(write_rows(tmp_path / "r.jsonl", rows), symmetric=False)[0]
    for seed in range(10):
        train, validation = holdout_split(examples, 0.5, None, seed=seed, symmetric=True)
        in_train = {frozenset((examples.text_a[i], examples.text_b[i])) for i in train}
        assert not any(frozenset((examples.text_a[i], examples.text_b[i])) in in_train for i in validation)


def test_pairs_also_in_validation_are_dropped_from_training_and_counted(tmp_path):
    train, report = examples_of(write_rows(tmp_path / "train.csv", ROWS))
    held, _ = examples_of(write_rows(tmp_path / "val.csv", [{**ROWS[1], "sentence1": ROWS[1]["sentence2"],
                                                              "sentence2": ROWS[1]["sentence1"]}]))
    kept = drop_leaked_pairs(train, report, held, "validation", symmetric=True)
    assert len(kept) == 2 and ROWS[1]["sentence1"] not in kept.text_a
    assert report.dropped == {"pair also in validation": 1} and report.kept == 2
    assert report.first_dropped["pair also in validation"] == f"{tmp_path / 'train.csv'}, line 3"


def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"query": "first\u2028second\x85third", "positive": "p"}\n{"query": "q", "positive": "r"}\n',
                    encoding="utf-8")
    table = read(path)
    assert len(table) == 2 and table.rows[0]["query"] == "first\u2028second\x85third"


def test_holdout_never_takes_a_group_larger_than_its_target(tmp_path):
    rows = [{"query": "big", "positive": f"p{i}"} for i in range(100)] + [{"query": "small", "positive": "x"}]
    examples = examples_of(write_rows(tmp_path / "g.jsonl", rows))[0]
    for seed in range(6):
        train, validation = holdout_split(examples, 0.05, 10, seed=seed)
        assert len(validation) == 1 and len(train) == 100
    # Every group larger than the target: the smallest one, never the big one.
    two_big = examples_of(write_rows(tmp_path / "b.jsonl", rows[:60] + [{"query": "b2", "positive": f"y{i}"}
                                                                        for i in range(50)]))[0]
    for seed in range(4):
        assert len(holdout_split(two_big, 0.05, None, seed=seed)[1]) == 50
    with pytest.raises(ValueError, match="validation_max_pairs must be at least 1"):
        holdout_split(examples, 0.05, 0, seed=0)


# ---- delimiters: what spreadsheets write -------------------------------------------------------


EXCEL_SEMICOLONS = "\ufeffsentence1;sentence2;score\r\nA man, a plan;A canal;4.5\r\n\"Two; in quotes\";b;1\r\n"


def test_a_semicolon_csv_with_a_byte_order_mark_is_detected(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(EXCEL_SEMICOLONS.encode("utf-8"))
    table = read(path)
    assert table.columns == ["sentence1", "sentence2", "score"]  # the BOM is not part of a name
    assert table.rows[0] == {"sentence1": "A man, a plan", "sentence2": "A canal", "score": "4.5"}
    assert table.rows[1]["sentence1"] == "Two; in quotes" and table.delimiter == ";"
    assert "semicolon-separated (detected" in table.read_as
    examples, report = examples_of(path)
    assert examples.text_a == ["A man, a plan", "Two; in quotes"] and report.kept == 2


@pytest.mark.parametrize("text, preferred, expected", [
    ("a,b,score\nx;y,z,1\n", ",", ","),  # the suffix's own wins while it splits every row alike
    ("a;b;score\nx, y;z;1\n", ",", ";"),
    ("a\tb\tscore\nx,y\tz\t1\n", ",", "\t"),  # a tab-separated .csv
    ("a;b\nx;y\n", "\t", ";"),  # a .tsv written with semicolons
    ("only\none\n", ",", ","),  # no candidate splits it: the suffix's, whose errors say so
])
def test_delimiter_detection_prefers_the_suffix_and_needs_consistent_rows(text, preferred, expected):
    assert detect_delimiter(text, preferred) == expected


def test_a_decimal_comma_says_to_use_a_point(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_text("sentence1;sentence2;score\na;b;4,3\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2, column 'score': '4,3' is not a number; write it with a decimal "
                                        r"point: 4\.3"):
        examples_of(path)


def test_a_forced_delimiter_is_used_and_named_in_errors(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("sentence1;sentence2;score\na, b;c;1\n", encoding="utf-8")
    assert read_table(TableSpec(str(path)), delimiter="semicolon").rows[0]["sentence1"] == "a, b"
    with pytest.raises(DataError, match=r"line 2: 2 fields, but the header has 1 .*read as comma-separated "
                                        r"\(data.delimiter\)"):
        read_table(TableSpec(str(path)), delimiter=",")
    # One column only: the column error says how the file was split.
    one = tmp_path / "one.csv"
    one.write_text("sentence1;sentence2\nab;c\n", encoding="utf-8")
    table = read_table(TableSpec(str(one)), delimiter=",")
    with pytest.raises(DataError, match=r"The file was read as comma-separated \(data.delimiter\): is that its "
                                        r"separator\?"):
        resolve_columns(table.source, table.columns, read_as=table.read_as)
    assert [parse_delimiter(v) for v in (None, "auto", ";", "semicolon", "tab", "\\t", ",")] == [
        None, None, ";", ";", "\t", "\t", ","]
    with pytest.raises(DataError, match="data.delimiter='|': expected comma, semicolon or tab"):
        parse_delimiter("|")


# ---- the hold-out's floor ----------------------------------------------------------------------


@pytest.mark.parametrize("n, fraction, min_pairs, max_pairs, expected", [
    (60, 0.05, 100, 1000, 12),  # raised to the floor, but never more than a fifth of the file
    (1000, 0.05, 100, 1000, 100),  # 50 by the fraction, raised to 100
    (10000, 0.05, 100, 1000, 500),  # the fraction, above the floor
    (100000, 0.05, 100, 1000, 1000),  # capped
    (60, 0.05, 100, 5, 5),  # an explicit cap below the floor wins
    (3, 0.05, 100, None, 1),  # at least one pair
    (40, 0.25, 100, 1000, 10),  # a fraction asked for above the share is the user's to choose
])
def test_holdout_target_has_a_floor_and_caps(n, fraction, min_pairs, max_pairs, expected):
    assert holdout_target(n, fraction, min_pairs, max_pairs) == expected
