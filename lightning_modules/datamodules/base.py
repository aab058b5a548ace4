"""What the pipeline, the Lightning system and the callbacks may ask of a DataModule, typed.

Every DataModule here subclasses ``LateInteractionDataModule``; code outside ``datamodules/`` uses
what it declares and nothing else (no ``getattr``/``hasattr`` on a DataModule), so a new
DataModule knows what it must provide and a missing piece fails where it is defined.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from lightning_modules.data.batches import PairItem, TokenizedCorpus
from lightning_modules.data.loading import describe_items, query_loader
from lightning_modules.errors import DataError
from lightning_modules.evaluation import Evaluator
from lightning_modules.tokenization import marker_token_id


@dataclass
class MiningRequest:
    """Hard negatives to mine with the model being trained (the ``HardNegativeMining`` callback).

    Attributes:
        queries: token ids of each training query (its key is its position).
        corpus: the candidates, each query ranked against all of them.
        positives: for each query, the corpus indices of its positives: never mined.
        k: negatives kept per query.
        margin: a candidate scoring above the query's lowest positive minus ``margin`` is skipped,
            as more likely an unlabelled positive than a negative; None skips none (the
            documents that outrank a positive are the ones the model gets most wrong).
        batch_size: texts per encoder call.
    """

    queries: list[list[int]]
    corpus: TokenizedCorpus
    positives: list[set[int]]
    k: int
    margin: float | None
    batch_size: int


class LateInteractionDataModule(pl.LightningDataModule):
    """A DataModule that reads, checks and tokenises its data in ``setup`` and says how to evaluate it.

    Subclasses set in ``__init__`` or ``setup``:

    * ``evaluator``: the evaluator of the validation and test batches; its primary metric picks
      the best checkpoint (``optimized_metric: auto``);
    * ``datasets``: ``{split: items}`` (``lightning_modules.data.batches``);
    * ``training_sources``: where each training item comes from (file and line, or ids), for
      messages about a bad batch;

    and override what differs: ``has_test``, ``report_dict``, ``mining_request`` with
    ``add_hard_negatives``.
    """

    evaluator: Evaluator | None = None

    def __init__(self) -> None:
        super().__init__()
        self.datasets: dict[str, list] = {}
        self.training_sources: list[str] = []

    @property
    def has_test(self) -> bool:
        """Whether there is a test split to evaluate after training."""
        return True

    def report_dict(self) -> dict | None:
        """What was read, kept and dropped, for ``results.json`` (``data``); None: nothing to report."""
        return None

    def mining_request(self) -> MiningRequest | None:
        """Hard negatives to mine before training, or None (none wanted, or mined already)."""
        return None

    def add_hard_negatives(self, mined: list[list[int]]) -> None:
        """Take the mined corpus indices: one list per query of ``mining_request``, best first."""
        raise NotImplementedError(f"{type(self).__name__} asks for no mining")

    def describe_training_items(self, indices: list[int]) -> str:
        """Where the training items at ``indices`` (positions in ``datasets["train"]``) come from."""
        return describe_items(self.training_sources, indices)

    def validation_pairs(self, count: int) -> list[tuple[list[int], list[int], float]]:
        """The first ``count`` validation pairs as ``(ids_a, ids_b, gold)``, token ids exactly as
        validation scored them; empty when validation holds no pairs (it ranks queries)."""
        items = self.datasets.get("validation") or []
        return [(item.a, item.b, float(item.target)) for item in items[:count] if isinstance(item, PairItem)]

    def _marker_id(self, marker: str | None) -> int | None:
        """The vocabulary id of a query or document marker (``[unused0]``), or None: no marker, or
        symmetric roles (every text a document). For DataModules with ``roles`` and
        ``tokenizer_name_or_path`` settings and a loaded ``tokenizer``."""
        if marker is None or self.hparams.roles == "symmetric":
            return None
        return marker_token_id(self.tokenizer, marker, self.hparams.tokenizer_name_or_path)


class RankedQueriesDataModule(LateInteractionDataModule):
    """A DataModule whose validation and test rank queries (``datasets["validation"]`` and
    ``datasets["test"]``, ``QueryItem``s) against ``self.corpus``, a ``TokenizedCorpus``, in batches
    of ``eval_batch_size`` queries (``lightning_modules.data.loading.query_loader``)."""

    def val_dataloader(self) -> DataLoader:
        return self._query_loader("validation")

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.datasets:
            raise DataError("no test split: set data.test_split, or run with test=false")
        return self._query_loader("test")

    def _query_loader(self, split: str) -> DataLoader:
        return query_loader(self.datasets[split], self.tokenizer.pad_token_id, self.corpus, self.hparams.eval_batch_size)
