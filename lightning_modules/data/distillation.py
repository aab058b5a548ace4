"""Teacher scores for distillation: each query's candidate documents with the teacher's score of each.

The scores file has one row a query, in PyLate's layout (``lightonai/ms-marco-en-bge``)::

    {"query_id": "q1", "document_ids": ["d7", "d2", ...], "scores": [11.2, 9.8, ...]}

as JSON Lines (``.jsonl``, ``.ndjson``, ``.json``), CSV/TSV (``.csv``, ``.tsv``, ``.tab``: the two
lists JSON-encoded in their cells, or as Python literals, as pandas writes them) or Parquet
(``.parquet``, ``.pq``: native lists, or encoded as in CSV). Column names match in any case;
``qid``/``query-id`` and ``doc_ids``/``corpus_ids`` are accepted too. Ids are compared as strings
(``7`` and ``"7"`` name the same document).

``read_teacher_scores`` checks every row against the queries and the corpus and resolves ids to
positions: a row keeps the query id and the corpus *indices* of its candidates, never a text, so a
large corpus is held once (tokenised in a shared ``TokenizedCorpus``), not copied into every row.
Every problem of every row is collected first, and one ``DataError`` reports them all: the file,
the first rows with what is wrong with each, and a count of each kind. A bad row is never dropped
silently, nor is a bad candidate dropped from its row.

``write_teacher_scores`` writes the same layout (``python -m train.teacher_scores``).
"""

from __future__ import annotations

import ast
import csv
import json
import math
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_modules.data.formats import JSON_FORMATS, PARQUET_FORMATS, TEXT_FORMATS, TableSpec, read_table
from lightning_modules.errors import DataError

# Column names of each role, the most common first; matched case-insensitively.
SCORE_COLUMNS = {"query_id": ("query_id", "qid", "query-id", "queryid"),
                 "document_ids": ("document_ids", "doc_ids", "docids", "corpus_ids", "corpus-ids", "passage_ids"),
                 "scores": ("scores", "teacher_scores", "labels")}
SUFFIXES = (*JSON_FORMATS, *TEXT_FORMATS, *PARQUET_FORMATS)
LAYOUT = ('one row a query: {"query_id": ..., "document_ids": [...], "scores": [...]} (PyLate\'s layout), as '
          ".jsonl, .csv/.tsv (lists JSON-encoded) or .parquet")
SHOWN_PROBLEMS = 10  # rows named in the message; the counts cover them all

# The kinds of problem a row can have, in the order the message counts them.
UNKNOWN_QUERY = "unknown query id"
UNKNOWN_DOCUMENTS = "unknown document ids"
DUPLICATE_QUERY = "query id already in an earlier row"
DUPLICATE_DOCUMENTS = "a document id twice in one row"
MALFORMED = "not a list of ids and a list of numbers"
LENGTHS = "len(document_ids) != len(scores)"
NON_FINITE = "NaN or infinite scores"
TOO_FEW = "fewer candidates than n_ways"
KINDS = (UNKNOWN_QUERY, DUPLICATE_QUERY, MALFORMED, LENGTHS, UNKNOWN_DOCUMENTS, DUPLICATE_DOCUMENTS, NON_FINITE,
         TOO_FEW)


@dataclass
class ScoredQuery:
    """One row: ``query_id``, its candidates as corpus indices (``documents``) and the teacher's
    ``scores`` (one each, finite); ``where`` the file and line, for messages."""

    where: str
    query_id: str
    documents: list[int]
    scores: list[float]


@dataclass
class TeacherScores:
    """The rows of a scores file, every one checked (``read_teacher_scores``)."""

    source: str
    rows: list[ScoredQuery] = field(default_factory=list)

    @property
    def candidates(self) -> int:
        return sum(len(row.documents) for row in self.rows)

    def as_dict(self) -> dict:
        counts = [len(row.documents) for row in self.rows]
        return {"source": self.source, "rows": len(self.rows), "candidates": sum(counts),
                "candidates_per_query": {"min": min(counts, default=0), "max": max(counts, default=0)},
                "problems": 0}  # any problem stops the reading: a report exists only for a clean file


def read_teacher_scores(path: str, queries: Collection[str], corpus_position: Mapping[str, int], n_ways: int,
                        queries_source: str = "the queries", corpus_source: str = "the corpus") -> TeacherScores:
    """The rows of the scores file ``path``, each checked, its document ids resolved to corpus indices.

    Args:
        queries: the known query ids.
        corpus_position: corpus id -> index (``TokenizedCorpus.position``).
        n_ways: candidates a query needs at least (each training batch samples that many).
        queries_source, corpus_source: what the ids are looked up in, for messages.

    Raises:
        DataError: the file is missing, unreadable or lacks a column; or any row has a problem
            (``KINDS``): one error for all of them, naming the file, the first ``SHOWN_PROBLEMS``
            rows with what is wrong, and how many rows have each kind of problem.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{file}: no such scores file (working directory {Path.cwd()}); {LAYOUT}")
    if file.suffix.lower() not in SUFFIXES:
        raise DataError(f"{file}: cannot read the format {file.suffix or '(no suffix)'!r} as scores; {LAYOUT}")
    table = read_table(TableSpec(str(file)))
    by_lower = {name.lower(): name for name in table.columns}
    column = {role: next((by_lower[n] for n in names if n in by_lower), None) for role, names in SCORE_COLUMNS.items()}
    missing = [role for role, name in column.items() if name is None]
    if missing:
        raise DataError(f"{table.source}: no {' and no '.join(missing)} column. Columns found: {table.columns}. "
                        + " ".join(f"Name the {role} column one of {list(SCORE_COLUMNS[role])}." for role in missing)
                        + f" Expected {LAYOUT}")
    queries = set(queries)
    scores = TeacherScores(table.source)
    problems: list[tuple[str, str, str]] = []  # (where, kind, detail)
    seen: dict[str, str] = {}
    for index, record in enumerate(table.rows):
        where = table.where(index)
        row = _check_row(record, column, queries, corpus_position, n_ways, seen, where,
                         (queries_source, corpus_source))
        if isinstance(row, ScoredQuery):
            scores.rows.append(row)
        else:
            problems.extend((where, kind, detail) for kind, detail in row)
    if problems:
        raise DataError(_problems_message(table.source, len(table.rows), problems, n_ways))
    return scores


def _check_row(record: dict[str, Any], column: dict[str, str], queries: set[str], position: Mapping[str, int],
               n_ways: int, seen: dict[str, str], where: str,
               sources: tuple[str, str]) -> ScoredQuery | list[tuple[str, str]]:
    """The row as a ``ScoredQuery``, or its problems as ``[(kind, detail)]``."""
    problems = []
    query_id = _cell(record.get(column["query_id"]))
    if query_id not in queries:
        problems.append((UNKNOWN_QUERY, f"query id {query_id!r} is not in {sources[0]}"))
    elif query_id in seen:
        earlier = seen[query_id]
        problems.append((DUPLICATE_QUERY, f"query id {query_id!r} has a row already ({earlier}); one row a query"))
    else:
        seen[query_id] = where
    document_ids = _as_list(record.get(column["document_ids"]))
    values = _as_list(record.get(column["scores"]))
    numbers = None if values is None else [_number(v) for v in values]
    if document_ids is None or numbers is None or None in numbers:
        what = []
        if document_ids is None:
            what.append(f"{column['document_ids']} is {_shown(record.get(column['document_ids']))}, not a list")
        if values is None:
            what.append(f"{column['scores']} is {_shown(record.get(column['scores']))}, not a list")
        elif None in numbers:
            bad = values[numbers.index(None)]
            what.append(f"{column['scores']} holds {_shown(bad)}, not a number")
        problems.append((MALFORMED, "; ".join(what)))
        return problems
    document_ids = [_cell(d) for d in document_ids]
    if len(document_ids) != len(numbers):
        problems.append((LENGTHS, f"{len(document_ids)} document ids but {len(numbers)} scores"))
    unknown = [d for d in document_ids if d not in position]
    if unknown:
        problems.append((UNKNOWN_DOCUMENTS, f"{len(unknown)} document ids not in {sources[1]}: {_listed(unknown)}"))
    repeated = [d for d, count in Counter(document_ids).items() if count > 1]
    if repeated:
        problems.append((DUPLICATE_DOCUMENTS, f"document ids listed more than once: {_listed(repeated)}"))
    bad = [(i, v) for i, v in enumerate(numbers) if not math.isfinite(v)]
    if bad:
        problems.append((NON_FINITE, f"{len(bad)} scores are not finite (" +
                         ", ".join(f"position {i}: {v}" for i, v in bad[:3]) + (", ..." if len(bad) > 3 else "") + ")"))
    if len(document_ids) < n_ways:
        problems.append((TOO_FEW, f"{len(document_ids)} candidates, fewer than n_ways={n_ways}"))
    if problems:
        return problems
    return ScoredQuery(where, query_id, [position[d] for d in document_ids], numbers)


def _problems_message(source: str, rows: int, problems: list[tuple[str, str, str]], n_ways: int) -> str:
    bad_rows = len({where for where, _, _ in problems})
    by_kind = Counter(kind for _, kind, _ in problems)  # a row has each kind of problem once at most
    shown = "\n".join(f"  {where}: {detail}" for where, _, detail in problems[:SHOWN_PROBLEMS])
    more = f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    tally = "; ".join(f"{kind}: {by_kind[kind]} row{'s' if by_kind[kind] != 1 else ''}" for kind in KINDS
                      if by_kind[kind])
    advice = []
    if by_kind[TOO_FEW]:
        advice.append(f"a smaller data.n_ways (now {n_ways}) fits rows with fewer candidates")
    if by_kind[UNKNOWN_QUERY] or by_kind[UNKNOWN_DOCUMENTS]:
        advice.append("are data.queries and data.corpus the files the scores were computed on?")
    return (f"{source}: {bad_rows} of its {rows} rows cannot be used, and none is dropped silently; fix them or "
            f"remove them from the file.\n{shown}{more}\nRows with each problem: {tally}"
            + (f"\n({'; '.join(advice)})" if advice else ""))


def _as_list(value) -> list | None:
    """A cell as a list: a native list (JSON Lines, Parquet), or a JSON or Python-literal list in a string
    (CSV, or Parquet written so); None when it is neither."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # an Arrow or NumPy array
        value = value.tolist()
        return value if isinstance(value, list) else None
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = json.loads(text)  # accepts NaN and Infinity, so that they are reported as such
        except json.JSONDecodeError:
            try:
                parsed = ast.literal_eval(text)  # pandas' str() of a list: single quotes
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return None
        return list(parsed) if isinstance(parsed, (list, tuple)) else None
    return None


def _number(value) -> float | None:
    if isinstance(value, bool):  # a bool is an int to Python, never a score
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _cell(value) -> str:
    return "" if value is None else str(value).strip()


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _listed(ids: list[str], shown: int = 5) -> str:
    return ", ".join(repr(i) for i in ids[:shown]) + (f", ... ({len(ids)} in all)" if len(ids) > shown else "")


def write_teacher_scores(path: str | Path, rows: list[tuple[str, list[str], list[float]]]) -> Path:
    """Write ``(query id, document ids, scores)`` rows in PyLate's layout, by the suffix of ``path``:
    JSON Lines (``.jsonl``, ``.ndjson``), CSV/TSV (the lists JSON-encoded) or Parquet (native lists)."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    records = [{"query_id": q, "document_ids": list(d), "scores": [float(s) for s in v]} for q, d, v in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".jsonl", ".ndjson"):
        with path.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    elif suffix in TEXT_FORMATS:
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter=TEXT_FORMATS[suffix])
            writer.writerow(["query_id", "document_ids", "scores"])
            writer.writerows([r["query_id"], json.dumps(r["document_ids"], ensure_ascii=False), json.dumps(r["scores"])]
                             for r in records)
    elif suffix in PARQUET_FORMATS:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        raise DataError(f"{path}: cannot write scores as {suffix or '(no suffix)'!r}; use .jsonl, .csv, .tsv or "
                        ".parquet")
    return path
