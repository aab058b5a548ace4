"""Reading scored pairs strictly, batching them, and the STS-B DataModule."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
import torch

from lightning_modules.data import DataError, PairCollator, ScoredPairsBatch, read_scored_pairs_csv
from lightning_modules.data.batches import PairItem
from lightning_modules.datamodules import STSBDataModule

HEADER = "sentence1,sentence2,score\n"


def _write(tmp_path: Path, body: str | bytes, name: str = "pairs.csv") -> Path:
    path = tmp_path / name
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body, encoding="utf-8")
    return path


# --- read_scored_pairs_csv ---------------------------------------------------------------------


def test_good_file_is_read_and_scaled_to_unit_range(tmp_path):
    path = _write(
        tmp_path,
        HEADER + "A cat sits.,A cat is sitting.,5\n"
        '"Hello, world",Hi there,2.5\n'
        "Nothing alike.,Completely different.,0.0\n"
        "Some pair.,Another pair., 1.25 \n",
    )
    pairs = read_scored_pairs_csv(path)
    assert len(pairs) == 4
    assert pairs.text_a == ["A cat sits.", "Hello, world", "Nothing alike.", "Some pair."]
    assert pairs.text_b == ["A cat is sitting.", "Hi there", "Completely different.", "Another pair."]
    assert pairs.scores == pytest.approx([1.0, 0.5, 0.0, 0.25])


def test_custom_score_range_and_column_order(tmp_path):
    path = _write(tmp_path, "score,sentence2,sentence1\n1,b one,a one\n3,b two,a two\n")
    pairs = read_scored_pairs_csv(path, score_min=1.0, score_max=3.0)
    assert pairs.text_a == ["a one", "a two"]
    assert pairs.scores == pytest.approx([0.0, 1.0])


def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="not found") as info:
        read_scored_pairs_csv(path)
    assert str(path) in str(info.value)


def test_missing_column_lists_columns_found(tmp_path):
    path = _write(tmp_path, "sentence1,text_b,label\na,b,1\n")
    with pytest.raises(DataError) as info:
        read_scored_pairs_csv(path)
    message = str(info.value)
    assert str(path) in message
    assert "sentence2" in message and "score" in message  # what is missing
    assert "text_b" in message and "label" in message  # what was found


ROW_ERRORS = {
    # name: (data rows, line of the bad row, column, words in the message)
    "empty score": ("a,b,1\nc,d,\n", 3, "score", "empty score"),
    "blank score": ("a,b,   \n", 2, "score", "empty score"),
    "non-numeric score": ("a,b,1\nc,d,2\ne,f,high\n", 4, "score", "'high' is not a number"),
    "score above range": ("a,b,5.5\n", 2, "score", "outside"),
    "score below range": ("a,b,-0.1\n", 2, "score", "outside"),
    "NaN score": ("a,b,nan\n", 2, "score", "outside"),
    "empty first text": ("a,b,1\n,d,2\n", 3, "sentence1", "empty text"),
    "blank second text": ("a,  ,1\n", 2, "sentence2", "empty text"),
    "short row": ("a,b,1\nc,d\n", 3, "score", "empty score"),
}


@pytest.mark.parametrize("case", list(ROW_ERRORS), ids=list(ROW_ERRORS))
def test_bad_row_names_file_line_and_column(tmp_path, case):
    rows, line, column, words = ROW_ERRORS[case]
    path = _write(tmp_path, HEADER + rows)
    with pytest.raises(DataError) as info:
        read_scored_pairs_csv(path)
    message = str(info.value)
    assert str(path) in message
    assert f"line {line}" in message, message
    assert f"'{column}'" in message, message
    assert words in message, message


def test_header_only_file_is_an_error(tmp_path):
    path = _write(tmp_path, HEADER)
    with pytest.raises(DataError, match="no rows") as info:
        read_scored_pairs_csv(path)
    assert str(path) in str(info.value)


def test_zero_byte_file_is_an_error(tmp_path):
    path = _write(tmp_path, "")
    with pytest.raises(DataError) as info:
        read_scored_pairs_csv(path)
    assert str(path) in str(info.value)


def test_non_utf8_bytes(tmp_path):
    path = _write(tmp_path, HEADER.encode() + b"fine,also fine,1\ncaf\xe9 latin-1,b,2\n")
    with pytest.raises(DataError, match="UTF-8") as info:
        read_scored_pairs_csv(path)
    assert str(path) in str(info.value)


def test_non_utf8_error_names_the_line_in_a_large_file(tmp_path):
    good = b"a cat sat on the mat,a dog sat on the log,1.0\n" * 1000  # > 8 KiB before the bad byte
    path = _write(tmp_path, HEADER.encode() + good + b"caf\xe9,b,2\n")
    with pytest.raises(DataError) as info:
        read_scored_pairs_csv(path)
    assert "line 1002" in str(info.value), str(info.value)


def test_empty_score_range_is_refused(tmp_path):
    path = _write(tmp_path, HEADER + "a,b,1\n")
    with pytest.raises(DataError, match="score_max > score_min"):
        read_scored_pairs_csv(path, score_min=5.0, score_max=5.0)


# --- PairCollator ------------------------------------------------------------------------------


def test_pair_collator_pads_a_then_b_to_the_longest_text():
    items = [
        PairItem([101, 7, 8, 102], [101, 9, 102], 0.5),
        PairItem([101, 102], [101, 3, 4, 5, 6, 102], 1.0),
    ]
    batch = PairCollator(pad_token_id=0)(items)
    expected_ids = torch.tensor(
        [
            [101, 7, 8, 102, 0, 0],
            [101, 102, 0, 0, 0, 0],
            [101, 9, 102, 0, 0, 0],
            [101, 3, 4, 5, 6, 102],
        ]
    )
    expected_mask = torch.tensor(
        [
            [1, 1, 1, 1, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 1],
        ]
    )
    assert isinstance(batch, ScoredPairsBatch) and batch.num_pairs == 2
    assert torch.equal(batch.input_ids, expected_ids)
    assert torch.equal(batch.attention_mask, expected_mask)
    assert batch.input_ids.dtype == torch.long
    assert batch.scores.dtype == torch.float32
    assert torch.equal(batch.scores, torch.tensor([0.5, 1.0]))


def test_pair_collator_uses_the_given_pad_id():
    batch = PairCollator(pad_token_id=-3)([PairItem([1], [2, 2], 0.0)])
    assert torch.equal(batch.input_ids, torch.tensor([[1, -3], [2, 2]]))
    assert torch.equal(batch.attention_mask, torch.tensor([[1, 0], [1, 1]]))


# --- STSBDataModule ----------------------------------------------------------------------------


def test_missing_data_folder_without_hub_says_where_to_point(tmp_path, minilm_path):
    folder = tmp_path / "no_such_stsb"
    datamodule = STSBDataModule(str(folder), minilm_path, hub_id=None)
    with pytest.raises(DataError) as info:
        datamodule.setup("fit")
    message = str(info.value)
    assert str(folder.resolve()) in message
    assert "data.data_dir" in message
    assert "DATA_DIR" in message


def test_folder_without_validation_csv(tmp_path, minilm_path):
    for split in ("train", "test"):
        _write(tmp_path, HEADER + "a,b,1\n", f"{split}.csv")
    datamodule = STSBDataModule(str(tmp_path), minilm_path, hub_id=None)
    with pytest.raises(DataError, match="validation.csv") as info:
        datamodule.setup("fit")
    assert str(tmp_path.resolve()) in str(info.value)


def test_bad_row_in_a_split_stops_setup(tmp_path, minilm_path):
    for split in ("train", "validation", "test"):
        _write(tmp_path, HEADER + "a,b,1\n", f"{split}.csv")
    _write(tmp_path, HEADER + "a,b,1\nc,d,9\n", "test.csv")
    datamodule = STSBDataModule(str(tmp_path), minilm_path, hub_id=None)
    with pytest.raises(DataError, match=r"test\.csv, line 3, column 'score'"):
        datamodule.setup("fit")


@pytest.fixture(scope="module")
def stsb_full(stsb_dir, minilm_path):
    """Every STS-B pair, tokenised once for the module (no model involved)."""
    datamodule = STSBDataModule(str(stsb_dir), minilm_path, hub_id=None, batch_size=16, eval_batch_size=100)
    datamodule.setup("fit")
    return datamodule


def _csv_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_train_batches_on_real_data(stsb_dir, minilm_path):
    datamodule = STSBDataModule(str(stsb_dir), minilm_path, hub_id=None, batch_size=16, limit_train_pairs=50)
    datamodule.setup("fit")
    assert len(datamodule.datasets["train"]) == 50
    batches = list(datamodule.train_dataloader())
    assert [b.scores.shape[0] for b in batches] == [16, 16, 16, 2]
    pad_id = datamodule.tokenizer.pad_token_id
    for batch in batches:
        ids, mask, scores = batch.input_ids, batch.attention_mask, batch.scores
        n = scores.shape[0]
        assert ids.dim() == 2 and ids.shape[0] == 2 * n
        assert mask.shape == ids.shape
        assert scores.shape == (n,) and scores.dtype == torch.float32
        assert ((scores >= 0) & (scores <= 1)).all()
        # Dynamic padding: the batch is exactly as long as its longest text.
        assert int(mask.sum(dim=1).max()) == ids.shape[1]
        assert (ids[mask == 0] == pad_id).all()
        assert (ids[:, 0] == datamodule.tokenizer.cls_token_id).all()


def test_train_subset_is_seeded(stsb_dir, minilm_path):
    def subset():
        datamodule = STSBDataModule(str(stsb_dir), minilm_path, hub_id=None, limit_train_pairs=20, limit_eval_pairs=10)
        datamodule.setup("fit")
        return datamodule.datasets

    first, second = subset(), subset()
    assert first["train"] == second["train"]
    assert len(first["validation"]) == len(first["test"]) == 10


def _mean_padding_fraction(loader) -> float:
    fractions = [1.0 - b.attention_mask.float().mean().item() for b in loader]
    return sum(fractions) / len(fractions)


def test_group_by_length_reduces_padding(stsb_full, stsb_dir, minilm_path):
    assert len(stsb_full.datasets["train"]) == len(_csv_rows(stsb_dir / "train.csv"))
    torch.manual_seed(0)
    grouped = _mean_padding_fraction(stsb_full.train_dataloader())
    ungrouped_module = STSBDataModule(str(stsb_dir), minilm_path, hub_id=None, batch_size=16, group_by_length=False)
    ungrouped_module.tokenizer, ungrouped_module.datasets = stsb_full.tokenizer, stsb_full.datasets  # no re-tokenising
    torch.manual_seed(0)
    ungrouped = _mean_padding_fraction(ungrouped_module.train_dataloader())
    assert grouped < ungrouped, (grouped, ungrouped)
    assert grouped < 0.8 * ungrouped, (grouped, ungrouped)  # a clear gain, not noise


def test_train_epoch_covers_every_pair_once(stsb_full):
    torch.manual_seed(0)
    seen = sum(b.scores.shape[0] for b in stsb_full.train_dataloader())
    assert seen == len(stsb_full.datasets["train"])


def _unpad(batch) -> list[tuple]:
    n = batch.scores.shape[0]
    lengths = batch.attention_mask.sum(dim=1).tolist()
    texts = [tuple(row[:length].tolist()) for row, length in zip(batch.input_ids, lengths)]
    return [(texts[i], texts[n + i], round(float(batch.scores[i]), 6)) for i in range(n)]


@pytest.mark.parametrize("split", ["validation", "test"])
def test_eval_loaders_cover_every_pair_exactly_once(stsb_full, stsb_dir, split):
    loader = stsb_full.val_dataloader() if split == "validation" else stsb_full.test_dataloader()
    seen = [pair for batch in loader for pair in _unpad(batch)]
    dataset = stsb_full.datasets[split]
    expected = [(tuple(item.a), tuple(item.b), round(item.target, 6)) for item in dataset]
    assert Counter(seen) == Counter(expected)
    # Independent of the library: the CSV itself, read with the csv module and tokenised directly.
    rows = _csv_rows(stsb_dir / f"{split}.csv")
    assert len(seen) == len(rows)
    tokenizer = stsb_full.tokenizer
    reference = Counter(
        (
            tuple(tokenizer(row["sentence1"], truncation=True, max_length=128)["input_ids"]),
            tuple(tokenizer(row["sentence2"], truncation=True, max_length=128)["input_ids"]),
            round(float(row["score"]) / 5.0, 6),
        )
        for row in rows
    )
    assert Counter(seen) == reference
