"""Retrieval benchmarks in BEIR's layout: a corpus, queries and graded relevance judgements.

A local folder holds a corpus, queries and the judgements of each split:

* ``corpus.<ext>``: one document a row, with an id (``_id``, ``id``, ``docid``, ...), an optional
  ``title`` and a text (``text``, ``contents``, ``body``, ...); ``queries.<ext>``: an id (``_id``,
  ``id``, ``qid``, ...) and a text (``text``, ``query``, ``question``). ``<ext>`` is any table
  format of ``formats.read_table``: ``.jsonl`` (BEIR's own, looked for first), ``.ndjson``,
  ``.json``, ``.csv``, ``.tsv``, ``.tab``, ``.parquet``, ``.pq``; column names match in any case.
* the judgements of a split, the first file found of ``QRELS_FILES``: BEIR's TSV (the header
  ``query-id corpus-id score``), the same rows without the header, or TREC qrels
  (``query-id iteration corpus-id relevance``, whitespace-separated, the iteration unused);
  the first line tells which.

With hub access, ``BeIR/<name>`` reads the corpus and queries from that dataset and the
judgements from ``BeIR/<name>-qrels``.

BEIR's conventions, kept here: a document's text is ``title + " " + text`` (the title left out
when empty); a judgement with score > 0 marks a relevant document and its score is the gain in
nDCG; queries without any relevant document in a split are not evaluated in it (counted). A
document with neither title nor text is kept, as an empty text, so that judgements naming it
still count (Cranfield has two, one judged relevant); ``BeirData.warnings`` says so.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

from lightning_modules.data.formats import (JSON_FORMATS, PARQUET_FORMATS, TEXT_FORMATS, RawTable, TableSpec,
                                            read_table, read_utf8)
from lightning_modules.errors import DataError

log = logging.getLogger(__name__)

# The suffixes of a corpus or queries file, in the order they are looked for (BEIR's .jsonl first).
TABLE_SUFFIXES = (*JSON_FORMATS, *TEXT_FORMATS, *PARQUET_FORMATS)
# Column names of each role, the most common first; matched case-insensitively.
CORPUS_COLUMNS = {"id": ("_id", "id", "docid", "doc_id", "doc-id", "corpus-id", "corpus_id", "pid", "docno"),
                  "title": ("title",),
                  "text": ("text", "contents", "content", "body", "passage", "document", "abstract")}
QUERY_COLUMNS = {"id": ("_id", "id", "qid", "query-id", "query_id", "queryid"),
                 "text": ("text", "query", "question")}
# Where a split's judgements are looked for, in this order.
QRELS_FILES = ("qrels/{split}.tsv", "qrels/{split}.txt", "qrels/{split}.qrels", "{split}.qrels")
BEIR_HEADER = ["query-id", "corpus-id", "score"]
LAYOUT = ("a retrieval folder holds corpus.jsonl, queries.jsonl (or .csv, .tsv, .parquet) and, for each split, "
          "qrels/<split>.tsv (BEIR's TSV, or TREC qrels in qrels/<split>.txt or <split>.qrels)")


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
    """A corpus (ids and texts, in file order), the queries, and the judgements of the splits read.

    ``warnings``: what was read but deserves a look next to the results (empty documents kept).
    """

    source: str
    corpus_ids: list[str]
    corpus_texts: list[str]
    queries: dict[str, str]
    judgements: dict[str, Judgements] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def is_beir_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a corpus file and a queries file of an accepted format."""
    return beir_folder_problem(path) is None


def beir_folder_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a retrieval folder (it is not a folder, or lacks a corpus or a queries
    file of an accepted format), or ``None`` when it is one."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return f"{folder}: not a folder"
    missing = [stem for stem in ("corpus", "queries") if _table_file(folder, stem) is None]
    if missing:
        looked = "; ".join(f"{stem}{', '.join(TABLE_SUFFIXES)}" for stem in missing)
        return f"{folder}: no {' and no '.join(missing)} file (looked for {looked}); {LAYOUT}"
    return None


def read_beir(source: str, splits: list[str]) -> BeirData:
    """Read a retrieval folder (see the module's docstring), or ``BeIR/<name>`` from the hub,
    with the judgements of ``splits``.

    Raises:
        DataError: a file is missing, empty or malformed (file and line), has no id or text
            column (the columns found), or no judgement of a split names a known query and document.
    """
    folder = Path(source).expanduser()
    if folder.is_dir():
        problem = beir_folder_problem(folder)
        if problem:
            raise DataError(problem)
    elif not _looks_like_hub_id(source):
        raise DataError(f"{source}: not a folder, nor a hub dataset id; {LAYOUT}")
    corpus = read_corpus(source)
    query_texts = read_queries(source)
    data = BeirData(source, corpus.ids, corpus.texts, query_texts)
    for split in splits:
        where, rows = (_read_qrels(_qrels_file(folder, split)) if folder.is_dir()
                       else _hub_qrels(_hub_table(TableSpec(f"{source}-qrels", None, split))))
        data.judgements[split] = _check_judgements(where, rows, set(corpus.ids), query_texts)
        log.info("%s", data.judgements[split].summary())
    if corpus.empty:
        data.warnings.append(_empty_documents_warning(corpus.source, corpus.empty, data.judgements))
        log.warning("%s", data.warnings[-1])
    return data


@dataclass
class Corpus:
    """Documents to rank, in file order: ``ids`` (unique) and ``texts`` (title and text joined, as
    BEIR does); ``source`` (the file read); ``empty``: the ids of documents with neither title nor
    text, kept as empty texts."""

    source: str
    ids: list[str]
    texts: list[str]
    empty: list[str] = field(default_factory=list)


def read_corpus(source: str) -> Corpus:
    """The documents of a retrieval folder's corpus file, of a corpus file itself (``.jsonl``,
    ``.csv``, ``.tsv``, ``.parquet``, ...: an id column and a text column, an optional title), or of
    ``BeIR/<name>`` from the hub.

    Raises:
        DataError: no such folder, file or hub set; a file that is empty or malformed; no id or text
            column; an id that appears twice (the file and line).
    """
    table = _source_table(source, "corpus", "document", "retrieval needs documents to rank")
    corpus = Corpus(table.source, [], [])
    seen: set[str] = set()
    for where, doc_id, text in _entries(table, CORPUS_COLUMNS, "document"):
        if doc_id in seen:
            raise DataError(f"{where}: corpus id {doc_id!r} appears twice; ids must be unique")
        seen.add(doc_id)
        if not text:
            corpus.empty.append(doc_id)
        corpus.ids.append(doc_id)
        corpus.texts.append(text)
    return corpus


def read_queries(source: str) -> dict[str, str]:
    """Query id -> text, in file order, from a retrieval folder's queries file, a queries file itself
    (as ``read_corpus``'s, or a TSV of ``id<TAB>text`` lines without a header, as MS MARCO's), or
    ``BeIR/<name>`` from the hub.

    Raises:
        DataError: as ``read_corpus``; a query without text.
    """
    path = Path(source).expanduser()
    headerless = _headerless_pairs(path) if path.is_file() and path.suffix.lower() in (".tsv", ".txt") else None
    if headerless:
        entries = [(f"{path}:{number}", *fields) for number, fields in headerless]
    else:
        entries = _entries(_source_table(source, "queries", "query", "there is nothing to search for"),
                           QUERY_COLUMNS, "query")
    queries = {}
    for where, query_id, text in entries:
        if not text:
            raise DataError(f"{where}: query {query_id!r} has no text")
        if query_id in queries:
            raise DataError(f"{where}: query id {query_id!r} appears twice; ids must be unique")
        queries[query_id] = text
    return queries


def _source_table(source: str, stem: str, what: str, why: str) -> RawTable:
    """The ``stem`` table (corpus or queries) of a folder, a file, or a hub set."""
    path = Path(source).expanduser()
    if path.is_dir():
        file = _table_file(path, stem)
        if file is None:
            raise DataError(f"{path}: no {stem} file (looked for {stem}{', '.join(TABLE_SUFFIXES)}); {LAYOUT}")
        return _read_file(file, what, why)
    if path.is_file():
        return _read_file(path, what, why)
    if _looks_like_hub_id(source):
        return _hub_table(TableSpec(source, stem, stem))
    raise DataError(f"{source}: not a folder, a file, nor a hub dataset id (working directory {Path.cwd()}); "
                    f"{LAYOUT}")


def _headerless_pairs(path: Path) -> list[tuple[int, list[str]]] | None:
    """``[(line number, [id, text])]`` when every non-blank line of ``path`` is ``id<TAB>text`` and the
    first is not a header naming known columns; else None (read it as a table with a header)."""
    lines = [(number, line.split("\t")) for number, line in enumerate(read_utf8(path).splitlines(), start=1)
             if line.strip()]
    if not lines or any(len(fields) != 2 for _, fields in lines):
        return None
    names = {name for names in QUERY_COLUMNS.values() for name in names}
    if {field.strip().lower() for field in lines[0][1]} & names:
        return None
    return [(number, [field.strip() for field in fields]) for number, fields in lines]


def _empty_documents_warning(source: str, empty: list[str], judgements: dict[str, Judgements]) -> str:
    relevant = {doc for report in judgements.values() for docs in report.by_query.values() for doc in docs}
    named = ", ".join(repr(doc) for doc in empty[:5]) + (", ..." if len(empty) > 5 else "")
    return (f"{source}: {len(empty)} documents have neither title nor text ({named}), "
            f"{len(relevant.intersection(empty))} of them relevant to a query of the splits read; kept as empty "
            "texts (just the special tokens) so that their judgements still count")


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


def _table_file(folder: Path, stem: str) -> Path | None:
    return next((folder / f"{stem}{suffix}" for suffix in TABLE_SUFFIXES if (folder / f"{stem}{suffix}").is_file()),
                None)


def _read_file(path: Path, what: str, why: str) -> RawTable:
    """The table of ``path``; a file with no non-blank line is an error saying it holds no ``what``."""
    # read_table would call it an empty file; this says which of the three files it is, and why that stops.
    if path.suffix.lower() not in PARQUET_FORMATS:
        with path.open("rb") as handle:
            if not any(line.strip() for line in handle):
                raise DataError(f"{path}: holds no {what} (the file is empty); {why}")
    return read_table(TableSpec(str(path)))


def _entries(table: RawTable, roles: dict[str, tuple[str, ...]], what: str) -> list[tuple[str, str, str]]:
    """``(where, id, text)`` for each row of ``table``, the text the row's title and text joined."""
    by_lower = {name.lower(): name for name in table.columns}
    found = {role: next((by_lower[n] for n in names if n in by_lower), None) for role, names in roles.items()}
    missing = [role for role in ("id", "text") if found[role] is None]
    if missing:
        split = ""
        if len(table.columns) == 1 and table.read_as:  # one column: most likely split at the wrong separator
            split = f" It was read as {table.read_as}: is that its separator?"
        raise DataError(f"{table.source}: no {' and no '.join(missing)} column for the {what} rows. Columns found: "
                        f"{table.columns}.{split} Name " + " and ".join(f"the {role} column one of {list(roles[role])}"
                                                                         for role in missing))
    texts = [found[role] for role in ("title", "text") if found.get(role)]
    entries = []
    for index, row in enumerate(table.rows):
        key = _cell(row.get(found["id"]))
        if not key:
            raise DataError(f"{table.where(index, found['id'])}: the {what} has no id")
        text = " ".join(part for part in (_cell(row.get(column)) for column in texts) if part)
        entries.append((table.where(index), key, text))
    return entries


def _cell(value) -> str:
    return "" if value is None else str(value).strip()


def _qrels_file(folder: Path, split: str) -> Path:
    for pattern in QRELS_FILES:
        if (folder / pattern.format(split=split)).is_file():
            return folder / pattern.format(split=split)
    found = sorted({p.name.rsplit(".", 1)[0] for pattern in QRELS_FILES
                    for p in folder.glob(pattern.format(split="*"))})
    raise DataError(f"{folder}: no judgements for the split {split!r}: looked for "
                    f"{', '.join(pattern.format(split=split) for pattern in QRELS_FILES)} "
                    f"(splits found: {found or 'none'})")


def _read_qrels(path: Path) -> tuple[str, list[tuple[str, str, int]]]:
    """``(path, [(query id, corpus id, grade)])``; the layout (BEIR's TSV with or without its
    header, or TREC qrels) is told from the first non-blank line."""
    lines = [(number, line) for number, line in enumerate(read_utf8(path).splitlines(), start=1) if line.strip()]
    if not lines:
        raise DataError(f"{path}: holds no judgement (the file is empty)")
    first = _tab_fields(lines[0][1])
    split, positions, expected = _tab_fields, (0, 1, 2), "3 tab-separated fields (query-id, corpus-id, score)"
    if [name.strip() for name in first[:3]] == BEIR_HEADER:
        lines = lines[1:]
    elif len(lines[0][1].split()) == 4:
        split, positions = str.split, (0, 2, 3)
        expected = "4 whitespace-separated fields (query-id, iteration, corpus-id, relevance) as in TREC qrels"
    elif len(first) != 3 or _number(first[2]) is None:
        raise DataError(f"{path}:{lines[0][0]}: expected the header query-id<TAB>corpus-id<TAB>score (BEIR), or a "
                        f"TREC qrels line 'query-id iteration corpus-id relevance'; got {lines[0][1]!r}")
    rows = []
    for number, line in lines:
        fields = split(line)
        if len(fields) <= max(positions):
            raise DataError(f"{path}:{number}: expected {expected}, got {len(fields)}: {fields}")
        query_id, doc_id, grade = (fields[i] for i in positions)
        rows.append((query_id.strip(), doc_id.strip(), _grade(grade, f"{path}:{number}")))
    return str(path), rows


def _tab_fields(line: str) -> list[str]:
    return next(csv.reader([line], delimiter="\t"))


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _grade(value, where: str) -> int:
    number = _number(value)
    if number is None:
        raise DataError(f"{where}: score {value!r} is not a number; qrels grades are integers (0 = not relevant)")
    if number != int(number):
        raise DataError(f"{where}: score {value!r} is not a whole number; qrels grades are integers")
    return int(number)


def _looks_like_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/", "~")) and not Path(source).exists()


def _hub_table(spec: TableSpec) -> RawTable:
    """One table of a hub set: ``BeIR/<name>`` (configs ``corpus`` and ``queries``) or ``BeIR/<name>-qrels``."""
    try:
        return read_table(spec)
    except DataError as error:  # offline, unknown dataset, missing split: read_table says which
        raise DataError(f"{error}; or give a local folder: {LAYOUT}") from error


def _hub_qrels(table: RawTable) -> tuple[str, list[tuple[str, str, int]]]:
    return table.source, [(_cell(row["query-id"]), _cell(row["corpus-id"]), _grade(row["score"], table.where(index)))
                          for index, row in enumerate(table.rows)]
