"""Retrieval benchmarks in BEIR's layout: a corpus, queries and graded relevance judgements.

A local folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
(``_id``, ``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``, with a
header row). With hub access, ``BeIR/<name>`` reads the corpus and queries from that dataset
and the judgements from ``BeIR/<name>-qrels``.

BEIR's conventions, kept here: a document's text is ``title + " " + text`` (the title left out
when empty); a judgement with score > 0 marks a relevant document and its score is the gain in
nDCG; queries without any relevant document in a split are not evaluated in it (counted).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from lightning_modules.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Judgements:
    """One split's relevance judgements, checked against the corpus and the queries.

    ``by_query``: query id -> {corpus id: grade > 0}, only queries with at least one relevant
    document. The counts say what was left out, and why.
    """

    source: str
    by_query: dict[str, dict[str, int]]
    rows: int = 0
    unknown_documents: int = 0
    unknown_queries: int = 0
    without_relevant: int = 0  # queries judged in the split whose every judgement has grade 0

    def summary(self) -> str:
        skipped = []
        if self.unknown_documents:
            skipped.append(f"{self.unknown_documents} naming a corpus id not in the corpus")
        if self.unknown_queries:
            skipped.append(f"{self.unknown_queries} naming a query id not in the queries")
        text = (f"{self.source}: {self.rows} judgements, {len(self.by_query)} queries with a relevant document, "
                f"{sum(len(d) for d in self.by_query.values())} relevant pairs")
        if skipped:
            text += "; skipped " + " and ".join(skipped)
        if self.without_relevant:
            text += f"; {self.without_relevant} queries have no relevant document (score > 0) and are not evaluated"
        return text

    def as_dict(self) -> dict:
        return {"source": self.source, "judgements": self.rows, "queries": len(self.by_query),
                "relevant_pairs": sum(len(d) for d in self.by_query.values()),
                "unknown_documents": self.unknown_documents, "unknown_queries": self.unknown_queries,
                "queries_without_relevant": self.without_relevant}


@dataclass
class BeirData:
    """A corpus (ids and texts, in file order), the queries, and the judgements of the splits read."""

    source: str
    corpus_ids: list[str]
    corpus_texts: list[str]
    queries: dict[str, str]
    judgements: dict[str, Judgements] = field(default_factory=dict)


def read_beir(source: str, splits: list[str]) -> BeirData:
    """Read a BEIR-layout folder, or ``BeIR/<name>`` from the hub, with the judgements of ``splits``.

    Raises:
        DataError: a file is missing or malformed (file and line), the corpus is empty, or
            no judgement of a split names a known query and document.
    """
    folder = Path(source).expanduser()
    if folder.is_dir():
        corpus = _read_jsonl(folder / "corpus.jsonl", ("_id", "text"))
        queries = _read_jsonl(folder / "queries.jsonl", ("_id", "text"))
        qrels = {split: _read_qrels_tsv(folder / "qrels" / f"{split}.tsv") for split in splits}
    elif _looks_like_hub_id(source):
        corpus, queries, qrels = _read_hub(source, splits)
    else:
        raise DataError(f"{source}: not a folder, nor a hub dataset id; a BEIR folder holds corpus.jsonl, "
                        "queries.jsonl and qrels/<split>.tsv")
    if not corpus:
        raise DataError(f"{source}: the corpus is empty; retrieval needs documents to rank")
    corpus_ids, corpus_texts = [], []
    seen: set[str] = set()
    for where, row in corpus:
        doc_id = str(row["_id"])
        if doc_id in seen:
            raise DataError(f"{where}: corpus id {doc_id!r} appears twice; ids must be unique")
        seen.add(doc_id)
        text = " ".join(part for part in (str(row.get("title") or "").strip(), str(row["text"] or "").strip()) if part)
        if not text:
            raise DataError(f"{where}: document {doc_id!r} has neither title nor text")
        corpus_ids.append(doc_id)
        corpus_texts.append(text)
    query_texts = {}
    for where, row in queries:
        text = str(row["text"] or "").strip()
        if not text:
            raise DataError(f"{where}: query {row['_id']!r} has no text")
        query_texts[str(row["_id"])] = text
    data = BeirData(source, corpus_ids, corpus_texts, query_texts)
    for split, (where, rows) in qrels.items():
        data.judgements[split] = _check_judgements(where, rows, seen, query_texts)
        log.info("%s", data.judgements[split].summary())
    return data


def _check_judgements(where: str, rows: list[tuple[str, str, int]], corpus_ids: set[str],
                      queries: dict[str, str]) -> Judgements:
    judged: dict[str, dict[str, int]] = {}
    report = Judgements(where, {}, rows=len(rows))
    for query_id, doc_id, grade in rows:
        if doc_id not in corpus_ids:
            report.unknown_documents += 1
        elif query_id not in queries:
            report.unknown_queries += 1
        else:
            judged.setdefault(query_id, {})[doc_id] = grade
    if not judged:
        raise DataError(f"{where}: none of its {len(rows)} judgements names both a known query and a known corpus "
                        f"document ({report.unknown_queries} unknown query ids, {report.unknown_documents} unknown "
                        "corpus ids); are the qrels from the same dataset as the corpus and queries?")
    report.by_query = {q: {d: g for d, g in docs.items() if g > 0} for q, docs in judged.items()}
    report.by_query = {q: docs for q, docs in report.by_query.items() if docs}
    report.without_relevant = len(judged) - len(report.by_query)
    if not report.by_query:
        raise DataError(f"{where}: no judgement has a score above 0; nothing is relevant to evaluate against")
    return report


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[tuple[str, dict]]:
    """``(file:line, row)`` for each non-blank line of a JSON Lines file."""
    if not path.is_file():
        raise DataError(f"{path}: not found; a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from error
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object with {', '.join(required)}, got {type(row).__name__}")
            missing = [key for key in required if key not in row]
            if missing:
                raise DataError(f"{where}: missing {', '.join(repr(k) for k in missing)} (has {sorted(row)})")
            rows.append((where, row))
    return rows


def _read_qrels_tsv(path: Path) -> tuple[str, list[tuple[str, str, int]]]:
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.tsv")) if path.parent.is_dir() else []
        raise DataError(f"{path}: not found; the judgements of this split (available: {available or 'none'})")
    rows = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["query-id", "corpus-id", "score"]:
            raise DataError(f"{path}:1: expected the header query-id<TAB>corpus-id<TAB>score, got {header}")
        for number, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise DataError(f"{path}:{number}: expected 3 tab-separated fields (query-id, corpus-id, score), "
                                f"got {len(row)}: {row}")
            rows.append((row[0].strip(), row[1].strip(), _grade(row[2], f"{path}:{number}")))
    return str(path), rows


def _grade(value, where: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: score {value!r} is not a number; qrels grades are integers (0 = not relevant)") from None
    if number != int(number):
        raise DataError(f"{where}: score {value!r} is not a whole number; qrels grades are integers")
    return int(number)


def _looks_like_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/", "~")) and not Path(source).exists()


def _read_hub(name: str, splits: list[str]):
    """``BeIR/<name>`` (configs ``corpus`` and ``queries``) and ``BeIR/<name>-qrels`` (one split each)."""
    import datasets  # lazily: reading a local folder needs no hub machinery

    try:
        corpus = datasets.load_dataset(name, "corpus", split="corpus")
        queries = datasets.load_dataset(name, "queries", split="queries")
        qrels = {split: datasets.load_dataset(f"{name}-qrels", split=split) for split in splits}
    except Exception as error:  # offline, unknown dataset, missing split: say which
        raise DataError(f"{name}: could not read it from the hub ({type(error).__name__}: {error}); give a local "
                        "BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) instead") from error
    rows = {
        split: (f"{name}-qrels[{split}]", [(str(r["query-id"]), str(r["corpus-id"]),
                                             _grade(r["score"], f"{name}-qrels[{split}] row {i}"))
                                            for i, r in enumerate(table)])
        for split, table in qrels.items()
    }
    return ([(f"{name}[corpus] row {i}", r) for i, r in enumerate(corpus)],
            [(f"{name}[queries] row {i}", r) for i, r in enumerate(queries)], rows)
