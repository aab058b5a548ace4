"""The user's own text pairs as a LightningDataModule.

``python -m train +experiment=pairs data.train=pairs.csv``: read a file (CSV, TSV,
JSON Lines, Parquet) or a hub dataset, find the columns, check every row, hold
out a validation split when none is given, and serve batches for the supervision
the data carries (see ``lightning_modules.data.pairs``):

========== ================================================= ====================================
supervision training                                          evaluation
========== ================================================= ====================================
graded     CoSENT (and regression) on scores scaled to [0, 1] Spearman, Pearson
binary     InfoNCE on the positives, label-0 pairs as hard    ROC-AUC, best F1, accuracy at the
           negatives (``binary_objective=contrastive``), or   best threshold
           CoSENT on the labels (``ranking``); ``auto``
           picks by how many label-0 pairs can serve
contrastive InfoNCE, in-batch and hard negatives               MRR@10, nDCG@10, Recall@1/10/100 of
                                                              each text_a ranked against all text_b
========== ================================================= ====================================
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader

from lightning_modules.data.batches import ContrastiveItem, PairItem, QueryItem, TokenizedCorpus
from lightning_modules.data.collate import ContrastiveCollator, PairCollator, QueryCollator
from lightning_modules.data.columns import resolve_columns
from lightning_modules.data.contrastive import add_negatives, contrastive_items
from lightning_modules.data.formats import TableSpec, parse_delimiter, read_table
from lightning_modules.data.loading import make_loader, training_loader
from lightning_modules.data.pairs import (
    PairExamples,
    ReadReport,
    build_examples,
    choose_supervision,
    normalise_scores,
)
from lightning_modules.data.splitting import MAX_HOLDOUT_SHARE, drop_leaked_pairs, holdout_split
from lightning_modules.datamodules.base import LateInteractionDataModule, MiningRequest
from lightning_modules.errors import DataError
from lightning_modules.evaluation import ClassificationEvaluator, CorrelationEvaluator, PairRetrievalEvaluator
from lightning_modules.tokenization import load_tokenizer, tokenize_texts

log = logging.getLogger(__name__)

# How each supervision is evaluated; the evaluator's primary metric picks the best checkpoint.
EVALUATOR = {"graded": CorrelationEvaluator, "binary": ClassificationEvaluator, "contrastive": PairRetrievalEvaluator}
ROLES = ("symmetric", "asymmetric")
BINARY_OBJECTIVES = ("auto", "contrastive", "ranking")
EVAL_CORPORA = ("split", "all")


class PairsDataModule(LateInteractionDataModule):
    """Text pairs from the user's files, checked and batched.

    Args:
        train: the training data: a file path, a hub dataset id, or ``{path, name, split}``.
        tokenizer_name_or_path: the model's tokenizer.
        validation, test: the same, optional. Without ``validation`` a seeded
            ``validation_fraction`` of the training pairs is held out, whole ``text_a``
            groups at a time: at least ``validation_min_pairs`` (but never more than
            ``MAX_HOLDOUT_SHARE``, 20%, of the file), at most ``validation_max_pairs``.
            A validation split smaller than ``validation_min_pairs`` gives a warning, in
            the log, in results.json (``data.warnings``) and under the final summary.
        delimiter: the field separator of ``.csv``/``.tsv`` files: ``,``, ``;``, a tab
            (or ``comma``, ``semicolon``, ``tab``); ``None`` detects it from the file.
        columns: ``{text_a, text_b, score, label, negatives}`` column names; ``None``
            entries are detected from common names.
        supervision: ``auto`` (from the columns), ``graded``, ``binary`` or ``contrastive``.
        score_range: ``[low, high]`` of graded scores (values outside are errors);
            ``None`` takes the range observed in the training file.
        roles: ``symmetric`` (both texts encoded alike) or ``asymmetric`` (``text_a``
            is a query: ``query_marker`` and ``query_max_length`` apply to it,
            ``document_marker`` and ``max_length`` to the other texts).
        query_marker, document_marker: a token of the vocabulary put after the first
            token (for BERT vocabularies ``[unused0]`` and ``[unused1]``), or ``None``.
        binary_objective: how binary pairs train: ``contrastive`` (InfoNCE; a label-0
            pair is a hard negative of the positives with the same ``text_a``),
            ``ranking`` (CoSENT on the labels: every pair counts), or ``auto``:
            contrastive when at least half of the label-0 pairs share their ``text_a``
            with a positive (retrieval-style data), else ranking (pair-classification
            data, where contrastive training would leave the label-0 pairs unused).
        max_negatives_per_pair: hard negatives a pair brings into a batch (drawn anew each time).
        eval_corpus: what contrastive validation and test rank each ``text_a`` against: ``split``,
            the split's own distinct ``text_b`` and negatives; ``all``, those of every split,
            training included (a retrieval corpus: every passage the data knows).
        mine_negatives: mine this many hard negatives per ``text_a`` with the model
            before training (0: off); candidates scoring above the lowest positive
            minus ``mine_margin`` are skipped as likely false negatives. The
            ``HardNegativeMining`` callback (in ``callbacks=default``) does the mining
            with the model being trained (``mining_request``, ``add_hard_negatives``).
        batch_size, eval_batch_size, max_length, group_by_length, num_workers: as for STS-B.
        limit_train_pairs: keep a seeded random subset of the training pairs.
        seed: seeds the hold-out split and the subset.
    """

    def __init__(
        self,
        train: str | dict,
        tokenizer_name_or_path: str,
        validation: str | dict | None = None,
        test: str | dict | None = None,
        columns: dict | None = None,
        supervision: str = "auto",
        score_range: list[float] | None = None,
        roles: str = "symmetric",
        query_marker: str | None = None,
        document_marker: str | None = None,
        query_max_length: int = 32,
        binary_objective: str = "auto",
        max_negatives_per_pair: int = 4,
        eval_corpus: str = "split",
        mine_negatives: int = 0,
        mine_margin: float = 0.05,
        validation_fraction: float = 0.05,
        validation_min_pairs: int = 100,
        validation_max_pairs: int | None = 1000,
        delimiter: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        max_length: int = 128,
        group_by_length: bool = True,
        num_workers: int = 0,
        limit_train_pairs: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not train:
            raise DataError("no training data: python -m train +experiment=pairs data.train=FILE (or a hub dataset id)")
        if roles not in ROLES:
            raise DataError(f"data.roles must be one of {list(ROLES)}, got {roles!r}")
        if eval_corpus not in EVAL_CORPORA:
            raise DataError(f"data.eval_corpus must be one of {list(EVAL_CORPORA)}, got {eval_corpus!r}")
        if binary_objective not in BINARY_OBJECTIVES:
            raise DataError(f"data.binary_objective must be one of {list(BINARY_OBJECTIVES)}, got {binary_objective!r}")
        parse_delimiter(delimiter)  # a bad value fails now, not after the model has loaded
        if score_range is not None and not (len(score_range) == 2 and score_range[0] < score_range[1]):
            raise DataError(f"data.score_range must be [low, high] with low < high, got {score_range}")
        self.tokenizer = None
        self.supervision: str | None = None
        self.reports: dict[str, ReadReport] = {}
        self.warnings: list[str] = []  # what makes the run's figures less trustworthy, for results.json
        self.examples: dict[str, PairExamples] = {}
        self.corpora: dict[str, TokenizedCorpus] = {}  # contrastive: each split's distinct text_b and negatives
        self._positives: dict[int, set[int]] = {}
        self._mined = False

    @property
    def symmetric(self) -> bool:
        return self.hparams.roles == "symmetric"

    @property
    def has_test(self) -> bool:
        return self.hparams.test is not None

    # ---- reading and checking ------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.tokenizer_name_or_path)
        self._markers = (self._marker_id(hp.query_marker), self._marker_id(hp.document_marker))
        train = self._read("train", hp.train)
        if self.supervision == "graded":  # the observed range is that of the whole training file
            self._observed_range = (min(train.targets), max(train.targets))
        if hp.validation is not None:
            self._read("validation", hp.validation)
        else:
            self._hold_out(train)
        if hp.test is not None:
            self._read("test", hp.test)
        for held in ("validation", "test"):
            if held in self.examples:
                self.examples["train"] = drop_leaked_pairs(
                    self.examples["train"], self.reports["train"], self.examples[held], held, self.symmetric
                )
        if "test" in self.examples:  # nor may validation (which picks the checkpoint) hold test pairs
            self.examples["validation"] = drop_leaked_pairs(
                self.examples["validation"], self.reports["validation"], self.examples["test"], "test", self.symmetric
            )
        for split in ("train", "validation"):
            if not len(self.examples[split]):
                raise DataError(f"{self.reports[split].source}: no {split} pair is left:\n  {self.reports[split].summary()}")
        self._warn_if_validation_is_small()
        if self.supervision == "graded":
            self._normalise_scores()
        if self.supervision == "binary":
            self._check_both_labels()
        if hp.limit_train_pairs is not None and hp.limit_train_pairs < len(self.examples["train"]):
            keep = torch.randperm(len(self.examples["train"]), generator=torch.Generator().manual_seed(hp.seed))
            self.examples["train"] = self.examples["train"].subset(sorted(keep[: hp.limit_train_pairs].tolist()))
            self.reports["train"].notes.append(f"limit_train_pairs: trained on a seeded subset of {hp.limit_train_pairs}")
        self._build_datasets()
        self.evaluator = EVALUATOR[self.supervision]()
        if hp.mine_negatives and not isinstance(self.datasets["train"][0], ContrastiveItem):
            raise DataError("data.mine_negatives needs contrastive training (binary or contrastive supervision, "
                            "binary_objective=contrastive)")
        for report in self.reports.values():
            log.log(logging.WARNING if report.dropped else logging.INFO, "%s", report.summary())

    def _read(self, split: str, spec) -> PairExamples:
        table = read_table(TableSpec.parse(spec, default_split=split), delimiter=self.hparams.delimiter)
        mapping = resolve_columns(table.source, table.columns, self.hparams.columns, read_as=table.read_as)
        requested = self.supervision or self.hparams.supervision  # later splits follow the training file
        supervision = choose_supervision(mapping, requested, table.source)
        self.supervision = supervision
        log.info("%s: columns %s; supervision: %s", table.source, mapping.describe(), supervision)
        declared = tuple(self.hparams.score_range) if self.hparams.score_range is not None else None
        examples, report = build_examples(table, mapping, supervision, split, self.symmetric, declared)
        self.examples[split], self.reports[split] = examples, report
        return examples

    def _hold_out(self, train: PairExamples) -> None:
        hp = self.hparams
        try:
            train_idx, val_idx = holdout_split(train, hp.validation_fraction, hp.validation_max_pairs, hp.seed,
                                               self.symmetric, min_pairs=hp.validation_min_pairs)
        except ValueError as error:
            raise DataError(f"{self.reports['train'].source}: {error}; give data.validation=FILE") from error
        self.examples["train"], self.examples["validation"] = train.subset(train_idx), train.subset(val_idx)
        self.reports["train"].held_out = len(val_idx)
        self.reports["validation"] = ReadReport(
            "validation", f"a seeded hold-out of {self.reports['train'].source}", rows_read=len(val_idx)
        )

    def _warn_if_validation_is_small(self) -> None:
        """Metrics of a few pairs swing wildly (Spearman of 3 pairs is one of four values), and
        they pick the best checkpoint: say so wherever the figures are read."""
        hp, n = self.hparams, len(self.examples["validation"])
        if n >= hp.validation_min_pairs:
            return
        if hp.validation is None:
            total = n + len(self.examples["train"])
            why = (f"only {n} validation pairs held out of {total} (data.validation_min_pairs="
                   f"{hp.validation_min_pairs}; a hold-out takes at most {MAX_HOLDOUT_SHARE:.0%} of the file)")
            fix = "give a separate validation file with data.validation=FILE"
        else:
            why = f"only {n} validation pairs in {self.reports['validation'].source}"
            fix = f"give a validation file of at least {hp.validation_min_pairs} pairs"
        warning = (f"{why}: validation metrics and the choice of the best checkpoint are noisy on so few pairs; "
                   f"{fix}")
        log.warning("%s", warning)
        self.reports["validation"].notes.append(warning)
        self.warnings.append(warning)

    def _check_both_labels(self) -> None:
        """ROC-AUC and a decision threshold need pairs of both labels in each evaluated split."""
        for split in ("validation", "test"):
            if split in self.examples and len(set(self.examples[split].targets)) < 2:
                only = int(self.examples[split].targets[0])
                hint = "raise data.validation_fraction or give data.validation=FILE" if (
                    split == "validation" and self.hparams.validation is None) else "add pairs of the other label"
                raise DataError(
                    f"{self.reports[split].source}: every {split} pair is labelled {only}; ROC-AUC and a decision "
                    f"threshold need both labels ({hint})"
                )

    def _normalise_scores(self) -> None:
        if self.hparams.score_range is not None:
            low, high = self.hparams.score_range
        else:
            low, high = self._observed_range
            if low == high:
                raise DataError(f"{self.reports['train'].source}: every score is {low}: nothing to learn from")
            self.reports["train"].notes.append(f"scores scaled from the observed range [{low}, {high}] to [0, 1]")
        for examples in self.examples.values():
            normalise_scores(examples, low, high)


    # ---- tokenising into items -----------------------------------------------------------

    def _build_datasets(self) -> None:
        train = self.examples["train"]
        if self.supervision == "graded" or (self.supervision == "binary" and self._binary_objective(train) == "ranking"):
            self.datasets["train"] = self._pair_items("train", train)
            self.training_sources = list(train.where)
        else:
            self.datasets["train"] = self._contrastive_items(train)
        for split in ("validation", "test"):
            if split not in self.examples:
                continue
            if self.supervision == "contrastive":
                self.datasets[split] = self._query_items(split, self.examples[split])
            else:
                self.datasets[split] = self._pair_items(split, self.examples[split])

    def _binary_objective(self, train: PairExamples) -> str:
        chosen = self.hparams.binary_objective
        if chosen == "auto":
            anchors = {a.strip() for a, t in zip(train.text_a, train.targets) if t == 1.0}
            negatives = [a.strip() in anchors for a, t in zip(train.text_a, train.targets) if t == 0.0]
            usable = sum(negatives) / len(negatives) if negatives else 1.0
            chosen = "contrastive" if usable >= 0.5 else "ranking"
            self.reports["train"].notes.append(
                f"binary_objective=auto chose {chosen}: {usable:.0%} of the label-0 pairs share their text_a with a "
                "positive and could serve as its hard negative"
            )
        return chosen

    def _tokenize(self, split: str, texts: list[str], side: str) -> list[list[int]]:
        """Token ids of ``texts`` on the ``query`` or ``document`` side (the same unless asymmetric)."""
        hp = self.hparams
        query = side == "query" and not self.symmetric
        max_length = hp.query_max_length if query else hp.max_length
        ids, truncated = tokenize_texts(self.tokenizer, texts, max_length, self._markers[0 if query else 1])
        if truncated:
            note = f"{truncated} of {len(texts)} {side} texts longer than {max_length} tokens were truncated"
            log.warning("%s: %s", split, note)
            self.reports[split].notes.append(note)
        return ids

    def _pair_items(self, split: str, examples: PairExamples) -> list[PairItem]:
        ids_a = self._tokenize(split, examples.text_a, "query")
        ids_b = self._tokenize(split, examples.text_b, "document")
        return [PairItem(a, b, t) for a, b, t in zip(ids_a, ids_b, examples.targets)]

    def _contrastive_items(self, examples: PairExamples) -> list[ContrastiveItem]:
        """Positive pairs with their hard negatives; in binary data, the label-0 pairs give the negatives."""
        report = self.reports["train"]
        negatives_of: dict[str, list[str]] = {}
        positive_rows = []
        for i, (a, b, target) in enumerate(zip(examples.text_a, examples.text_b, examples.targets)):
            negatives_of.setdefault(a.strip(), []).extend(examples.negatives[i])
            if target == 1.0:
                positive_rows.append(i)
            else:
                negatives_of[a.strip()].append(b)
        if self.supervision == "binary":
            anchors = {examples.text_a[i].strip() for i in positive_rows}
            unused = sum(1 for i, t in enumerate(examples.targets) if t == 0.0 and examples.text_a[i].strip() not in anchors)
            used = len(examples) - len(positive_rows) - unused
            report.notes.append(
                f"binary_objective=contrastive: {len(positive_rows)} positive pairs train, {used} label-0 pairs serve "
                f"as their hard negatives, {unused} label-0 pairs have no positive with the same text_a and are unused"
            )
            if not positive_rows:
                raise DataError(f"{report.source}: no pair is labelled 1; contrastive training needs positives")
        queries = sorted({examples.text_a[i].strip(): examples.text_a[i] for i in positive_rows}.items())
        query_key = {stripped: key for key, (stripped, _) in enumerate(queries)}
        documents = {}
        for i in positive_rows:
            documents.setdefault(examples.text_b[i].strip(), examples.text_b[i])
        for a, _ in queries:
            for text in negatives_of.get(a, []):
                documents.setdefault(text.strip(), text)
        document_key = {stripped: key for key, stripped in enumerate(documents)}
        self._train_query_ids = self._tokenize("train", [text for _, text in queries], "query")
        self._train_corpus = _corpus(self._tokenize("train", list(documents.values()), "document"))
        pairs = [(query_key[examples.text_a[i].strip()], document_key[examples.text_b[i].strip()]) for i in positive_rows]
        negatives = [[document_key[t.strip()] for t in negatives_of.get(a, [])] for a, _ in queries]
        items, self._positives = contrastive_items(pairs, self._train_query_ids, self._train_corpus, negatives)
        self.training_sources = [examples.where[i] for i in positive_rows] if examples.where else []
        return items

    def _query_items(self, split: str, examples: PairExamples) -> list[QueryItem]:
        """Each distinct text_a as a query, ranked against ``corpora[split]`` (see ``eval_corpus``);
        a query's relevant documents are its text_b."""
        queries: dict[str, str] = {}
        for a in examples.text_a:
            queries.setdefault(a.strip(), a)
        query_ids = self._tokenize(split, list(queries.values()), "query")
        shared = self.hparams.eval_corpus == "all"
        sources = [self.examples[s] for s in ("train", "validation", "test") if s in self.examples] if shared else [examples]
        corpus: dict[str, str] = {}  # stripped text -> text, in order of appearance
        for source in sources:
            for b, negatives in zip(source.text_b, source.negatives):
                for text in [b, *negatives]:
                    corpus.setdefault(text.strip(), text)
        corpus_key = {stripped: key for key, stripped in enumerate(corpus)}
        relevant: dict[str, dict[int, int]] = {}
        for a, b in zip(examples.text_a, examples.text_b):
            relevant.setdefault(a.strip(), {})[corpus_key[b.strip()]] = 1
        if not (shared and self.corpora):  # one corpus for validation and test alike: encoded once per set of weights
            self.corpora[split] = _corpus(self._tokenize(split, list(corpus.values()), "document"))
        else:
            self.corpora[split] = next(iter(self.corpora.values()))
        # Query ids apart from the corpus's ("d<index>"): no document is ever excluded as the query's own.
        return [QueryItem(ids, f"q{key}", relevant[stripped])
                for key, (stripped, ids) in enumerate(zip(queries, query_ids))]

    # ---- loaders ---------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        if hp.mine_negatives and not self._mined:
            raise DataError("data.mine_negatives is set but no HardNegativeMining callback mined: keep "
                            "callbacks=default, or add lightning_modules.callbacks.HardNegativeMining to the callbacks")
        data = self.datasets["train"]
        lengths = [max(len(item.a), len(item.b)) for item in data]
        if isinstance(data[0], ContrastiveItem):
            collate = ContrastiveCollator(self.tokenizer.pad_token_id, self._positives, hp.max_negatives_per_pair)
        else:
            collate = PairCollator(self.tokenizer.pad_token_id)
        return training_loader(data, lengths, hp.batch_size, collate, hp.num_workers, hp.group_by_length, self.trainer)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.datasets:
            raise DataError("no test data: give data.test=FILE, or run with test=false")
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        data = self.datasets[split]
        pad = self.tokenizer.pad_token_id
        if self.supervision == "contrastive":
            # In this process: a worker would send the whole corpus back with each batch.
            data = sorted(data, key=lambda item: len(item.ids))
            return make_loader(data, self.hparams.eval_batch_size, QueryCollator(pad, self.corpora[split]), 0)
        data = sorted(data, key=lambda item: max(len(item.a), len(item.b)))
        collate = PairCollator(pad, labelled=self.supervision == "binary")
        return make_loader(data, self.hparams.eval_batch_size, collate, self.hparams.num_workers)

    # ---- mining (done by the HardNegativeMining callback, with the model being trained) ---------

    def mining_request(self) -> MiningRequest | None:
        """The distinct training ``text_a`` against the training ``text_b`` and negatives, or None
        when ``mine_negatives`` is off or mining is done."""
        hp = self.hparams
        if not hp.mine_negatives or self._mined:
            return None
        return MiningRequest(self._train_query_ids, self._train_corpus,
                             [self._positives.get(key, set()) for key in range(len(self._train_query_ids))],
                             hp.mine_negatives, hp.mine_margin, hp.eval_batch_size)

    def add_hard_negatives(self, mined: list[list[int]]) -> None:
        """Add the mined corpus indices (one list per query of ``mining_request``) to the hard
        negatives of the training pairs."""
        items = self.datasets["train"]
        added = add_negatives(items, mined, self._positives, self._train_corpus)
        self.reports["train"].notes.append(f"mining added {added} hard negatives over {len(items)} pairs")
        log.info("Mining added %d hard negatives over %d pairs", added, len(items))
        self._mined = True

    def report_dict(self) -> dict:
        """What was read, kept and dropped in each split, for results.json."""
        return {"supervision": self.supervision, "warnings": list(self.warnings),
                **{split: r.as_dict() for split, r in self.reports.items()}}


def _corpus(token_ids: list[list[int]]) -> TokenizedCorpus:
    """Documents known by their position: ids ``d0``, ``d1``, ..."""
    return TokenizedCorpus([f"d{i}" for i in range(len(token_ids))], token_ids)
