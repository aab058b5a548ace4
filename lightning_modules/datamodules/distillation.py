"""Score distillation as a LightningDataModule: a teacher's scores of each query's candidates.

``python -m train +experiment=distill data.queries=... data.corpus=... data.scores=... data.eval_path=...``:
read the queries (``queries.jsonl``: ``_id``, ``text``), the corpus (``corpus.jsonl``: ``_id``,
``title``, ``text``; a document is ``title + " " + text``, BEIR's convention) and the teacher's
scores (``lightning_modules.data.distillation``: one row a query, PyLate's layout), check every
row, and serve:

* training: ``DistillationBatch`` (each query with ``n_ways`` of its candidates and the teacher's
  scores of them: the teacher's best and a fresh random draw of the others each time);
* validation and test: ``QueryBatch`` of a BEIR folder's splits (``eval_path``), each query ranked
  by ``CorpusRetrievalEvaluator`` against that folder's whole corpus (nDCG@10, MRR@10, Recall@10,
  Recall@100), as ``BeirDataModule`` does.

Only the documents that some row names are tokenised for training (a scores file usually names a
small share of a large corpus), and items hold positions, not texts.
"""

from __future__ import annotations

import logging

from torch.utils.data import DataLoader

from lightning_modules.data.batches import DistillationItem, QueryItem, TokenizedCorpus
from lightning_modules.data.beir import BeirData, read_beir, read_corpus, read_queries
from lightning_modules.data.collate import DistillationCollator
from lightning_modules.data.distillation import TeacherScores, read_teacher_scores
from lightning_modules.data.loading import training_loader
from lightning_modules.datamodules.base import RankedQueriesDataModule
from lightning_modules.errors import DataError
from lightning_modules.evaluation import CorpusRetrievalEvaluator
from lightning_modules.tokenization import load_tokenizer, tokenize_texts

log = logging.getLogger(__name__)

ROLES = ("asymmetric", "symmetric")


class DistillationDataModule(RankedQueriesDataModule):
    """Queries, a corpus and a teacher's scores for training; a BEIR folder for evaluation.

    Args:
        queries: the queries file (``_id``, ``text``; any table ``read_queries`` reads), or a BEIR folder.
        corpus: the corpus file (``_id``, ``title``, ``text``; as ``read_corpus``), or a BEIR folder.
        scores: the teacher's scores (``.jsonl``, ``.csv``/``.tsv``, ``.parquet``; one row a query:
            ``query_id``, ``document_ids``, ``scores``). Any bad row is an error, never dropped.
        eval_path: a BEIR folder to validate and test on (``corpus.jsonl``, ``queries.jsonl``,
            ``qrels/<split>.tsv``): its queries are ranked against its own corpus. A training query
            judged there (same id, same text) is left out of training, and counted.
        tokenizer_name_or_path: the student's tokenizer.
        n_ways: candidates each query brings to a batch (every row must have at least this many).
        validation_split, test_split: the qrels files of ``eval_path``; ``test_split`` None: no test.
        roles, query_marker, document_marker, query_max_length, max_length: as ``BeirDataModule``'s.
        batch_size: queries per training batch (each with ``n_ways`` documents: the encoder reads
            ``batch_size * (1 + n_ways)`` texts a step); eval_batch_size: queries (and documents) per
            encoder call in evaluation.
        num_workers: loader workers for training batches.
    """

    def __init__(
        self,
        queries: str,
        corpus: str,
        scores: str,
        eval_path: str,
        tokenizer_name_or_path: str,
        n_ways: int = 8,
        validation_split: str = "dev",
        test_split: str | None = "test",
        roles: str = "asymmetric",
        query_marker: str | None = None,
        document_marker: str | None = None,
        query_max_length: int = 64,
        max_length: int = 256,
        batch_size: int = 8,
        eval_batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        missing = [f"data.{key}" for key, value in (("queries", queries), ("corpus", corpus), ("scores", scores),
                                                    ("eval_path", eval_path)) if not value]
        if missing:
            raise DataError(f"distillation needs {', '.join(missing)}: data.queries=queries.jsonl, "
                            "data.corpus=corpus.jsonl, data.scores=scores.jsonl (the teacher's: python -m "
                            "train.teacher_scores) and data.eval_path=BEIR_FOLDER (validation and test)")
        if not validation_split:
            raise DataError("data.validation_split: the qrels split of data.eval_path that picks the best checkpoint")
        if n_ways < 2:  # a softmax over one candidate is 1 whatever the scores: nothing to learn
            raise DataError(f"data.n_ways must be at least 2 (the teacher's best and one other candidate), got {n_ways}")
        if roles not in ROLES:
            raise DataError(f"data.roles must be one of {list(ROLES)}, got {roles!r}")
        self.tokenizer = None
        self.teacher: TeacherScores | None = None
        self.eval_data: BeirData | None = None
        self.train_corpus: TokenizedCorpus | None = None  # the documents the scores name, and no other
        self.corpus: TokenizedCorpus | None = None  # eval_path's, ranked in validation and test
        self.splits: dict[str, dict[str, dict[str, int]]] = {}  # evaluation split -> query id -> judgements
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.evaluator = CorpusRetrievalEvaluator()
        self._corpus_documents = 0
        self._held_out = 0

    @property
    def has_test(self) -> bool:
        return self.hparams.test_split is not None

    # ---- reading ---------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.tokenizer_name_or_path)
        self._markers = (self._marker_id(hp.query_marker), self._marker_id(hp.document_marker))
        query_texts = read_queries(hp.queries)
        corpus = read_corpus(hp.corpus)
        self._corpus_documents = len(corpus.ids)
        position = {doc_id: i for i, doc_id in enumerate(corpus.ids)}
        self.teacher = read_teacher_scores(hp.scores, query_texts, position, hp.n_ways, queries_source=str(hp.queries),
                                           corpus_source=corpus.source)
        self.notes.append(f"{self.teacher.source}: {len(self.teacher.rows)} queries with {self.teacher.candidates} "
                          f"scored candidates; {hp.n_ways} a query in each batch (data.n_ways)")
        splits = [s for s in (hp.validation_split, hp.test_split) if s is not None]
        self.eval_data = read_beir(hp.eval_path, list(dict.fromkeys(splits)))
        self.warnings.extend(self.eval_data.warnings)
        self.splits = {"validation": dict(self.eval_data.judgements[hp.validation_split].by_query)}
        if hp.test_split is not None:
            self.splits["test"] = dict(self.eval_data.judgements[hp.test_split].by_query)
        self._build_training_items(query_texts, corpus.ids, corpus.texts)
        document_ids = self._tokenize(self.eval_data.corpus_texts, hp.max_length, self._markers[1], "evaluation corpus")
        self.corpus = TokenizedCorpus(self.eval_data.corpus_ids, document_ids)
        for split in self.splits:
            self.datasets[split] = self._query_items(split)
        for line in self.notes:
            log.info("%s", line)

    def _build_training_items(self, query_texts: dict[str, str], corpus_ids: list[str],
                              corpus_texts: list[str]) -> None:
        """One item per row of the scores file whose query is not an evaluation query."""
        hp = self.hparams
        evaluated = {q for judged in self.splits.values() for q in judged}
        # The same id with the same text: a query the model will be measured on must not train it.
        held = [row for row in self.teacher.rows
                if row.query_id in evaluated and self.eval_data.queries.get(row.query_id) == query_texts[row.query_id]]
        if held:
            self._held_out = len(held)
            note = (f"{len(held)} scored queries are also judged in {hp.eval_path} ({', '.join(self.splits)}) and do "
                    f"not train: {', '.join(repr(r.query_id) for r in held[:5])}{', ...' if len(held) > 5 else ''}")
            self.warnings.append(note)
            log.warning("%s", note)
        held_ids = {row.query_id for row in held}
        rows = [row for row in self.teacher.rows if row.query_id not in held_ids]
        if not rows:
            raise DataError(f"{self.teacher.source}: every scored query is judged in {hp.eval_path}; nothing is left "
                            "to train on")
        # Tokenise only the documents some row names, in corpus order; items index this smaller corpus.
        used = sorted({d for row in rows for d in row.documents})
        compact = {d: i for i, d in enumerate(used)}
        documents = self._tokenize([corpus_texts[d] for d in used], hp.max_length, self._markers[1], "train documents")
        self.train_corpus = TokenizedCorpus([corpus_ids[d] for d in used], documents)
        query_ids = self._tokenize_queries([query_texts[row.query_id] for row in rows], "train")
        self._train_query_token_ids = query_ids
        self.datasets["train"] = [DistillationItem(k, [compact[d] for d in row.documents], list(row.scores))
                                  for k, row in enumerate(rows)]
        self.training_sources = [f"{row.where} (query {row.query_id!r})" for row in rows]
        self.notes.append(f"train: {len(rows)} queries; {len(used)} of the {len(corpus_ids)} corpus documents are "
                          "candidates (only those are tokenised)")

    def _tokenize(self, texts: list[str], max_length: int, marker: int | None, what: str) -> list[list[int]]:
        ids, truncated = tokenize_texts(self.tokenizer, texts, max_length, marker)
        if truncated:
            self.notes.append(f"{what}: {truncated} of {len(ids)} longer than {max_length} tokens were truncated")
        return ids

    def _tokenize_queries(self, texts: list[str], split: str) -> list[list[int]]:
        hp = self.hparams
        asymmetric = hp.roles == "asymmetric"
        return self._tokenize(texts, hp.query_max_length if asymmetric else hp.max_length, self._markers[0],
                              f"{split} queries")

    def _query_items(self, split: str) -> list[QueryItem]:
        position = self.corpus.position
        queries = sorted(self.splits[split])
        ids = self._tokenize_queries([self.eval_data.queries[q] for q in queries], split)
        self.notes.append(f"{split}: {len(queries)} queries of {self.hparams.eval_path}, ranked against all "
                          f"{len(self.corpus)} of its documents")
        return [QueryItem(token_ids, q, {position[d]: g for d, g in self.splits[split][q].items()})
                for q, token_ids in zip(queries, ids)]

    # ---- loaders -------------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        data = self.datasets["train"]
        collate = DistillationCollator(self.tokenizer.pad_token_id, self._train_query_token_ids, self.train_corpus,
                                       hp.n_ways)
        # Not grouped by length: a batch's documents, not its queries, make most of its padding.
        return training_loader(data, [len(self._train_query_token_ids[item.query]) for item in data], hp.batch_size,
                               collate, hp.num_workers, False, self.trainer)

    def report_dict(self) -> dict:
        """What was read, used and left out, for results.json."""
        teacher = self.teacher.as_dict() if self.teacher else {}
        return {
            "scores": teacher,
            "corpus": {"source": self.hparams.corpus, "documents": self._corpus_documents,
                       "candidates_tokenised": len(self.train_corpus) if self.train_corpus else 0},
            "train_queries": len(self.datasets.get("train", [])),
            "held_out_evaluation_queries": self._held_out,
            "evaluation": {"source": self.hparams.eval_path, "documents": len(self.corpus) if self.corpus else 0,
                           "queries": {split: len(queries) for split, queries in self.splits.items()},
                           "judgements": {split: report.as_dict()
                                          for split, report in (self.eval_data.judgements.items() if self.eval_data
                                                                else ())}},
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }
