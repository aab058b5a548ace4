"""The STS Benchmark as a LightningDataModule.

Reads ``{train,validation,test}.csv`` (``sentence1,sentence2,score``, score 0-5)
from a local folder or, when there is none, the hub dataset
``sentence-transformers/stsb`` (score already 0-1). Texts are tokenised once in
``setup``; batches are padded to their own longest text, and training batches can
be grouped by length so that little padding is computed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lightning_modules.data.collate import PairCollator
from lightning_modules.data.errors import DataError
from lightning_modules.data.loading import make_loader, training_sampler
from lightning_modules.data.reading import ScoredPairs, read_scored_pairs_csv
from lightning_modules.data.tokenize import tokenize_texts
from lightning_modules.encoder import load_tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


class STSBDataModule(pl.LightningDataModule):
    """STS-B pairs with gold scores scaled to [0, 1].

    Args:
        data_dir: folder with ``train.csv``, ``validation.csv`` and ``test.csv``.
        tokenizer_name_or_path: the model's tokenizer (folder or hub id).
        hub_id: hub dataset to use when ``data_dir`` does not exist (``None``: never).
        score_min, score_max: the declared range of the CSV scores.
        batch_size: training pairs per batch.
        eval_batch_size: pairs per batch for validation and test.
        max_length: tokens per text; longer texts are truncated (and counted).
        group_by_length: build training batches of similar lengths (less padding).
        num_workers: DataLoader worker processes.
        limit_train_pairs, limit_eval_pairs: keep a seeded random subset of this size
            (quick runs and tests); ``None`` keeps everything.
    """

    def __init__(
        self,
        data_dir: str,
        tokenizer_name_or_path: str,
        hub_id: str | None = "sentence-transformers/stsb",
        score_min: float = 0.0,
        score_max: float = 5.0,
        batch_size: int = 16,
        eval_batch_size: int = 128,
        max_length: int = 128,
        group_by_length: bool = True,
        num_workers: int = 0,
        limit_train_pairs: int | None = None,
        limit_eval_pairs: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = None
        self.datasets: dict[str, list[dict]] = {}

    @property
    def monitor_metric(self) -> str:
        """The validation metric that picks the best checkpoint."""
        return "val/spearman"

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.tokenizer_name_or_path)
        splits = load_stsb_splits(hp.data_dir, hp.hub_id, hp.score_min, hp.score_max)
        for name, pairs in splits.items():
            limit = hp.limit_train_pairs if name == "train" else hp.limit_eval_pairs
            self.datasets[name] = self._tokenize(seeded_subset(pairs, limit), name)

    def train_dataloader(self) -> DataLoader:
        data = self.datasets["train"]
        lengths = [max(len(item["a"]), len(item["b"])) for item in data]
        sampler = training_sampler(lengths, self.hparams.batch_size, self.hparams.group_by_length, self.trainer)
        return self._loader(data, self.hparams.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        data = self.datasets[split]
        # Correlations do not depend on order, so sort by length: least padding.
        data = sorted(data, key=lambda item: max(len(item["a"]), len(item["b"])))
        return self._loader(data, self.hparams.eval_batch_size)

    def _loader(self, data, batch_size, sampler=None) -> DataLoader:
        collate = PairCollator(self.tokenizer.pad_token_id)
        return make_loader(data, batch_size, collate, self.hparams.num_workers, sampler)

    def _tokenize(self, pairs: ScoredPairs, split: str) -> list[dict]:
        max_length = self.hparams.max_length
        ids_a, truncated_a = tokenize_texts(self.tokenizer, pairs.text_a, max_length)
        ids_b, truncated_b = tokenize_texts(self.tokenizer, pairs.text_b, max_length)
        if truncated_a + truncated_b:
            log.warning("%s: %d of %d texts were longer than max_length=%d tokens and were truncated",
                        split, truncated_a + truncated_b, 2 * len(pairs), max_length)
        return [{"a": a, "b": b, "score": s} for a, b, s in zip(ids_a, ids_b, pairs.scores)]

def load_stsb_splits(
    data_dir: str | Path, hub_id: str | None, score_min: float = 0.0, score_max: float = 5.0
) -> dict[str, ScoredPairs]:
    """Read the three splits from ``data_dir``, or from the hub when the folder is absent."""
    folder = Path(data_dir).expanduser()
    if folder.is_dir():
        missing = [s for s in SPLITS if not (folder / f"{s}.csv").is_file()]
        if missing:
            raise DataError(
                f"STS-B folder {folder.resolve()} lacks {', '.join(s + '.csv' for s in missing)}; "
                f"it must hold {', '.join(s + '.csv' for s in SPLITS)} with columns sentence1,sentence2,score."
            )
        splits = {s: read_scored_pairs_csv(folder / f"{s}.csv", score_min, score_max) for s in SPLITS}
        log.info("STS-B from %s: %s", folder.resolve(), {s: len(p) for s, p in splits.items()})
        return splits
    if hub_id is None:
        raise DataError(_missing_folder_message(folder, "no hub dataset is configured (data.hub_id=null)"))
    try:
        return _load_hub_splits(hub_id)
    except Exception as error:  # noqa: BLE001 - any hub failure gets the same advice
        reason = f"the hub dataset {hub_id!r} could not be loaded either ({error.__class__.__name__}: {error})"
        raise DataError(_missing_folder_message(folder, reason)) from error


def _load_hub_splits(hub_id: str) -> dict[str, ScoredPairs]:
    import datasets  # lazily: only the hub path needs it

    splits = {}
    for split in SPLITS:
        table = datasets.load_dataset(hub_id, split=split)
        splits[split] = ScoredPairs(list(table["sentence1"]), list(table["sentence2"]), [float(s) for s in table["score"]])
        bad = [i for i, s in enumerate(splits[split].scores) if not 0.0 <= s <= 1.0]
        if bad:
            raise DataError(f"hub dataset {hub_id!r}, split {split}, row {bad[0]}: score outside [0, 1]")
    log.info("STS-B from the hub dataset %s: %s", hub_id, {s: len(p) for s, p in splits.items()})
    return splits


def _missing_folder_message(folder: Path, reason: str) -> str:
    return (
        f"No STS-B data folder at {folder.resolve()}, and {reason}. Put train.csv, validation.csv and test.csv "
        "(columns sentence1,sentence2,score) in a folder and point to it with data.data_dir=/path/to/stsb, "
        "or set DATA_DIR to the folder that contains stsb/."
    )


def seeded_subset(pairs: ScoredPairs, limit: int | None) -> ScoredPairs:
    """The same ``limit`` pairs every time (a fixed-seed permutation); all of them when ``limit`` is None."""
    if limit is None or limit >= len(pairs):
        return pairs
    generator = torch.Generator().manual_seed(0)
    return pairs.subset(torch.randperm(len(pairs), generator=generator)[:limit].tolist())
