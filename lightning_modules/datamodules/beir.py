"""A retrieval benchmark in BEIR's layout as a LightningDataModule.

``python -m train +experiment=scifact``: read a BEIR folder (or ``BeIR/<name>``), hold out a
seeded share of the training queries for validation when the set has no validation split, and
serve:

* training: ``ContrastiveBatch`` (each query with one relevant document, the other documents of
  the batch and mined hard negatives as negatives, the query's known relevant documents masked);
* validation and test: ``QueryBatch`` (the split's queries, each ranked by the evaluator against
  the whole corpus: nDCG@10, MRR@10, Recall@10, Recall@100).

Queries and documents have their own lengths and optional markers (``roles=asymmetric``).
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader

from lightning_modules.data.batches import QueryItem, TokenizedCorpus
from lightning_modules.data.beir import BeirData, Judgements, read_beir
from lightning_modules.data.bm25 import bm25_top_k
from lightning_modules.data.collate import ContrastiveCollator
from lightning_modules.data.contrastive import add_negatives, contrastive_items
from lightning_modules.data.loading import training_loader
from lightning_modules.datamodules.base import MiningRequest, RankedQueriesDataModule
from lightning_modules.errors import DataError
from lightning_modules.evaluation import CorpusRetrievalEvaluator
from lightning_modules.tokenization import load_tokenizer, tokenize_texts

log = logging.getLogger(__name__)

NEGATIVE_SOURCES = ("model", "bm25", "none")
ROLES = ("asymmetric", "symmetric")


class BeirDataModule(RankedQueriesDataModule):
    """Queries, a corpus and relevance judgements, checked and batched.

    Args:
        path: a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) or, with
            hub access, ``BeIR/<name>`` (judgements from ``BeIR/<name>-qrels``).
        tokenizer_name_or_path: the model's tokenizer.
        train_split, validation_split, test_split: the qrels files of each split; ``validation_split``
            ``None`` holds out ``validation_fraction`` of the training queries (seeded; a query and
            all its judgements go to one side), at least ``validation_min_queries`` (never more
            than a fifth of them); ``test_split`` ``None``: no test.
        roles: ``asymmetric`` (queries get ``query_max_length`` and ``query_marker``, documents
            ``max_length`` and ``document_marker``) or ``symmetric`` (every text as a document).
        query_marker, document_marker: a vocabulary token put after the first (``[unused0]``), or None.
        negatives_from: where hard negatives come from: ``model`` (mined by the model being
            trained, when fit starts, by the ``HardNegativeMining`` callback), ``bm25`` (BM25's top
            documents, mined while reading; needs ``bm25s``) or ``none`` (in-batch negatives only).
        mine_negatives: hard negatives kept per query (the most similar non-relevant documents);
            a candidate scoring above the query's lowest relevant document minus ``mine_margin``
            is skipped as a likely unjudged relevant document; ``mine_margin`` None skips none,
            so the documents that outrank a relevant one are mined too (model mining only).
        max_negatives_per_pair: hard negatives each training pair brings into a batch, drawn anew
            from its query's mined ones each time.
        batch_size: training queries per batch; eval_batch_size: queries (and documents) per
            encoder call in evaluation.
        group_by_length: batches of training pairs of similar document length (less padding).
        num_workers: loader workers for training batches (evaluation batches are made in this process).
        limit_train_queries: train on a seeded subset of this many training queries.
        limit_eval_queries: validate and test on seeded subsets of this many queries each.
        limit_corpus: rank against at most this many documents: every document judged for a kept
            query (of any split), then a seeded sample of the others. With ``limit_eval_queries``,
            a quick slice to try a change on; its figures are not the set's, and ``results.json``
            and the summary say so (``data.warnings``).
        seed: seeds the hold-out and the subsets.
    """

    def __init__(
        self,
        path: str,
        tokenizer_name_or_path: str,
        train_split: str = "train",
        validation_split: str | None = None,
        test_split: str | None = "test",
        validation_fraction: float = 0.15,
        validation_min_queries: int = 50,
        roles: str = "asymmetric",
        query_marker: str | None = None,
        document_marker: str | None = None,
        query_max_length: int = 64,
        max_length: int = 256,
        negatives_from: str = "model",
        mine_negatives: int = 20,
        mine_margin: float | None = None,
        max_negatives_per_pair: int = 3,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        group_by_length: bool = True,
        num_workers: int = 0,
        limit_train_queries: int | None = None,
        limit_eval_queries: int | None = None,
        limit_corpus: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not path:
            raise DataError("no BEIR data: data.path=FOLDER (corpus.jsonl, queries.jsonl, qrels/) or BeIR/<name>")
        if negatives_from not in NEGATIVE_SOURCES:
            raise DataError(f"data.negatives_from must be one of {list(NEGATIVE_SOURCES)}, got {negatives_from!r}")
        if roles not in ROLES:
            raise DataError(f"data.roles must be one of {list(ROLES)}, got {roles!r}")
        if not 0 < validation_fraction < 1:
            raise DataError(f"data.validation_fraction must be between 0 and 1, got {validation_fraction}")
        for key, limit in (("limit_train_queries", limit_train_queries), ("limit_eval_queries", limit_eval_queries),
                           ("limit_corpus", limit_corpus)):
            if limit is not None and limit < 1:
                raise DataError(f"data.{key} must be at least 1 (or null for all), got {limit}")
        self.tokenizer = None
        self.data: BeirData | None = None
        self.corpus: TokenizedCorpus | None = None
        self.splits: dict[str, dict[str, dict[str, int]]] = {}  # split -> query id -> {corpus id: grade}
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.evaluator = CorpusRetrievalEvaluator()
        self._train_queries: list[str] = []
        self._positives: dict[int, set[int]] = {}
        self._mined = False

    @property
    def has_test(self) -> bool:
        return self.hparams.test_split is not None

    # ---- reading ---------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.tokenizer_name_or_path)
        markers = (self._marker_id(hp.query_marker), self._marker_id(hp.document_marker))
        splits = [s for s in (hp.train_split, hp.validation_split, hp.test_split) if s is not None]
        self.data = read_beir(hp.path, list(dict.fromkeys(splits)))
        self.warnings.extend(self.data.warnings)  # empty documents kept: results.json and the summary say so
        judged = {split: report.by_query for split, report in self.data.judgements.items()}
        self.splits["train"] = dict(judged[hp.train_split])
        if hp.validation_split is not None:
            self.splits["validation"] = dict(judged[hp.validation_split])
        else:
            self._hold_out()
        if hp.test_split is not None:
            self.splits["test"] = dict(judged[hp.test_split])
        self._drop_shared_queries()
        if hp.limit_train_queries is not None and hp.limit_train_queries < len(self.splits["train"]):
            self.splits["train"] = seeded_queries(self.splits["train"], hp.limit_train_queries, hp.seed + 1)
            self.notes.append(f"limit_train_queries: trained on a seeded subset of {hp.limit_train_queries} queries")
        self._slice_for_iteration()
        document_ids, truncated = tokenize_texts(self.tokenizer, self.data.corpus_texts, hp.max_length, markers[1])
        self.notes.append(f"{truncated} of {len(document_ids)} documents longer than {hp.max_length} tokens were "
                          "truncated (data.max_length)")
        self.corpus = TokenizedCorpus(self.data.corpus_ids, document_ids)
        self._query_marker = markers[0]
        self._build_training_items()
        for split in ("validation", "test"):
            if split in self.splits:
                self.datasets[split] = self._query_items(split)
        for line in self.notes:
            log.info("%s", line)

    def _hold_out(self) -> None:
        """A seeded share of the training queries (with all their judgements) for validation."""
        hp = self.hparams
        queries = sorted(self.splits["train"])
        wanted = max(round(hp.validation_fraction * len(queries)), min(hp.validation_min_queries, len(queries) // 5))
        if wanted < 1 or wanted >= len(queries):
            raise DataError(f"{self.data.judgements[hp.train_split].source}: {len(queries)} training queries are too "
                            "few to hold some out for validation; give data.validation_split")
        order = torch.randperm(len(queries), generator=torch.Generator().manual_seed(hp.seed)).tolist()
        held = {queries[i] for i in order[:wanted]}
        self.splits["validation"] = {q: self.splits["train"][q] for q in sorted(held)}
        self.splits["train"] = {q: d for q, d in self.splits["train"].items() if q not in held}
        self.notes.append(f"validation: a seeded hold-out of {wanted} of the {len(queries)} {hp.train_split} queries "
                          f"(data.validation_fraction={hp.validation_fraction})")
        if wanted < hp.validation_min_queries:
            warning = (f"only {wanted} validation queries: validation nDCG@10 and the choice of the best checkpoint "
                       "are noisy on so few; give data.validation_split")
            log.warning("%s", warning)
            self.warnings.append(warning)

    def _slice_for_iteration(self) -> None:
        """``limit_eval_queries`` and ``limit_corpus``: fewer evaluation queries, a smaller corpus."""
        hp = self.hparams
        cut = []
        for offset, split in ((3, "validation"), (4, "test")):
            queries = self.splits.get(split, {})
            if hp.limit_eval_queries is not None and hp.limit_eval_queries < len(queries):
                self.splits[split] = seeded_queries(queries, hp.limit_eval_queries, hp.seed + offset)
                cut.append(f"{hp.limit_eval_queries} of {len(queries)} {split} queries")
        documents = len(self.data.corpus_ids)
        if hp.limit_corpus is not None and hp.limit_corpus < documents:
            judged = {doc for split in self.splits.values() for judgements in split.values() for doc in judgements}
            others = [i for i, doc in enumerate(self.data.corpus_ids) if doc not in judged]
            room = max(hp.limit_corpus - (documents - len(others)), 0)
            order = torch.randperm(len(others), generator=torch.Generator().manual_seed(hp.seed + 5)).tolist()
            sampled = {others[i] for i in order[:room]}
            keep = [i for i, doc in enumerate(self.data.corpus_ids) if doc in judged or i in sampled]  # file order
            self.data.corpus_ids = [self.data.corpus_ids[i] for i in keep]
            self.data.corpus_texts = [self.data.corpus_texts[i] for i in keep]
            cut.append(f"{len(keep)} of {documents} documents ({len(keep) - len(sampled)} judged for the kept "
                       f"queries, {len(sampled)} seeded others)")
        if cut:
            warning = (f"a slice of {hp.path} for trying a change (data.limit_eval_queries, data.limit_corpus): "
                       f"{', '.join(cut)}; these figures are not the full set's, and are not comparable with them")
            log.warning("%s", warning)
            self.warnings.append(warning)

    def _drop_shared_queries(self) -> None:
        """A query judged in test (or validation) must not train, nor may validation hold test queries."""
        for held in ("validation", "test"):
            for split in ("train", "validation") if held == "test" else ("train",):
                if split == held or held not in self.splits:
                    continue
                shared = set(self.splits[split]) & set(self.splits[held])
                if shared:
                    self.splits[split] = {q: d for q, d in self.splits[split].items() if q not in shared}
                    self.notes.append(f"{split}: dropped {len(shared)} queries that are also judged in {held}")
        for split in ("train", "validation"):
            if not self.splits[split]:
                raise DataError(f"{self.hparams.path}: no {split} query is left (see the notes above)")

    def _tokenize_queries(self, split: str, query_ids: list[str]) -> list[list[int]]:
        hp = self.hparams
        asymmetric = hp.roles == "asymmetric"
        max_length = hp.query_max_length if asymmetric else hp.max_length
        ids, truncated = tokenize_texts(self.tokenizer, [self.data.queries[q] for q in query_ids], max_length,
                                        self._query_marker)
        if truncated:
            self.notes.append(f"{split}: {truncated} of {len(ids)} queries longer than {max_length} tokens were truncated")
        return ids

    # ---- items -----------------------------------------------------------------------------------

    def _build_training_items(self) -> None:
        """One item per (training query, relevant document); hard negatives added by mining."""
        position = self.corpus.position
        self._train_queries = sorted(self.splits["train"])
        self._train_query_token_ids = self._tokenize_queries("train", self._train_queries)
        pairs = [(key, document) for key, query in enumerate(self._train_queries)
                 for document in sorted(position[d] for d in self.splits["train"][query])]
        items, self._positives = contrastive_items(pairs, self._train_query_token_ids, self.corpus)
        self.datasets["train"] = items
        self.training_sources = [f"query {self._train_queries[q]!r} with document {self.corpus.ids[d]!r}"
                                 for q, d in pairs]
        self.notes.append(f"train: {len(items)} (query, relevant document) pairs over {len(self._train_queries)} queries")
        if self.hparams.negatives_from == "bm25" and self.hparams.mine_negatives:
            texts = [self.data.queries[q] for q in self._train_queries]
            ranked, _ = bm25_top_k(self.data.corpus_texts, texts,
                                   self.hparams.mine_negatives + max(len(p) for p in self._positives.values()))
            mined = [[i for i in row if i not in self._positives[key]][: self.hparams.mine_negatives]
                     for key, row in enumerate(ranked)]
            self.add_hard_negatives(mined, source="BM25")

    def _query_items(self, split: str) -> list[QueryItem]:
        position = self.corpus.position
        queries = sorted(self.splits[split])
        ids = self._tokenize_queries(split, queries)
        self.notes.append(f"{split}: {len(queries)} queries, ranked against all {len(self.corpus)} documents")
        return [QueryItem(token_ids, q, {position[d]: g for d, g in self.splits[split][q].items()})
                for q, token_ids in zip(queries, ids)]

    # ---- loaders -------------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        if self._wants_model_mining() and not self._mined:
            raise DataError("data.negatives_from=model but no HardNegativeMining callback mined: keep "
                            "callbacks=default, or set data.negatives_from=bm25 or none")
        data = self.datasets["train"]
        collate = ContrastiveCollator(self.tokenizer.pad_token_id, self._positives, hp.max_negatives_per_pair)
        return training_loader(data, [len(item.b) for item in data], hp.batch_size, collate, hp.num_workers,
                               hp.group_by_length, self.trainer)

    # ---- mining (the HardNegativeMining callback, with the model being trained) ------------------

    def _wants_model_mining(self) -> bool:
        return self.hparams.negatives_from == "model" and self.hparams.mine_negatives > 0

    def mining_request(self) -> MiningRequest | None:
        """The training queries against the whole corpus, or None (no model mining, or mined already)."""
        if not self._wants_model_mining() or self._mined:
            return None
        return MiningRequest(self._train_query_token_ids, self.corpus,
                             [self._positives[key] for key in range(len(self._train_queries))],
                             self.hparams.mine_negatives, self.hparams.mine_margin, self.hparams.eval_batch_size)

    def add_hard_negatives(self, mined: list[list[int]], source: str = "the model") -> None:
        """Make the corpus indices ``mined`` (one list per training query) its pairs' hard negatives."""
        add_negatives(self.datasets["train"], mined, self._positives, self.corpus)
        counts = [len(m) for m in mined]
        note = (f"hard negatives from {source}: {sum(counts)} over {len(mined)} queries "
                f"({sum(c == 0 for c in counts)} queries got none)")
        self.notes.append(note)
        log.info("%s", note)
        self._mined = True

    def report_dict(self) -> dict:
        """What was read, held out and dropped, for results.json."""
        reports: dict[str, Judgements] = self.data.judgements if self.data else {}
        return {
            "source": self.hparams.path,
            "documents": len(self.corpus) if self.corpus else 0,
            "queries": {split: len(queries) for split, queries in self.splits.items()},
            "judgements": {split: report.as_dict() for split, report in reports.items()},
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }


def seeded_queries(queries: dict[str, dict[str, int]], count: int, seed: int) -> dict[str, dict[str, int]]:
    """A seeded subset of ``count`` of ``queries`` (query id -> judgements), in id order."""
    ids = sorted(queries)
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))
    return {ids[i]: queries[ids[i]] for i in sorted(order[:count].tolist())}
