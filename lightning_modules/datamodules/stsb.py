"""The STS Benchmark as a LightningDataModule.

Reads the three splits with ``lightning_modules.data.stsb.load_stsb_splits`` (a local
folder of CSVs, or the hub dataset ``sentence-transformers/stsb``). Texts are tokenised once in
``setup``; batches are padded to their own longest text, and training batches can
be grouped by length so that little padding is computed.
"""

from __future__ import annotations

import logging

from torch.utils.data import DataLoader

from lightning_modules.data.batches import PairItem
from lightning_modules.data.collate import PairCollator
from lightning_modules.data.loading import make_loader, training_loader
from lightning_modules.data.reading import ScoredPairs
from lightning_modules.data.stsb import load_stsb_splits, seeded_subset
from lightning_modules.datamodules.base import LateInteractionDataModule
from lightning_modules.evaluation import CorrelationEvaluator
from lightning_modules.tokenization import load_tokenizer, tokenize_texts

log = logging.getLogger(__name__)


class STSBDataModule(LateInteractionDataModule):
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
        # Graded pairs: Spearman (the primary metric) and Pearson.
        self.evaluator = CorrelationEvaluator()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.tokenizer_name_or_path)
        splits = load_stsb_splits(hp.data_dir, hp.hub_id, hp.score_min, hp.score_max)
        for name, pairs in splits.items():
            limit = hp.limit_train_pairs if name == "train" else hp.limit_eval_pairs
            pairs = seeded_subset(pairs, limit)
            self.datasets[name] = self._tokenize(pairs, name)
            if name == "train":
                self.training_sources = pairs.where

    def train_dataloader(self) -> DataLoader:
        data = self.datasets["train"]
        lengths = [max(len(item.a), len(item.b)) for item in data]
        hp = self.hparams
        collate = PairCollator(self.tokenizer.pad_token_id)
        return training_loader(data, lengths, hp.batch_size, collate, hp.num_workers, hp.group_by_length, self.trainer)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        data = self.datasets[split]
        # Correlations do not depend on order, so sort by length: least padding.
        data = sorted(data, key=lambda item: max(len(item.a), len(item.b)))
        collate = PairCollator(self.tokenizer.pad_token_id)
        return make_loader(data, self.hparams.eval_batch_size, collate, self.hparams.num_workers)

    def _tokenize(self, pairs: ScoredPairs, split: str) -> list[PairItem]:
        max_length = self.hparams.max_length
        ids_a, truncated_a = tokenize_texts(self.tokenizer, pairs.text_a, max_length)
        ids_b, truncated_b = tokenize_texts(self.tokenizer, pairs.text_b, max_length)
        if truncated_a + truncated_b:
            log.warning("%s: %d of %d texts were longer than max_length=%d tokens and were truncated",
                        split, truncated_a + truncated_b, 2 * len(pairs), max_length)
        return [PairItem(a, b, s) for a, b, s in zip(ids_a, ids_b, pairs.scores)]
