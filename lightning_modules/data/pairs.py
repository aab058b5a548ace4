"""From a raw table to checked text pairs, with a count of everything not kept.

Supervision types:

* ``graded``: a score in any range per pair (normalised later to [0, 1]);
* ``binary``: a 0/1 label per pair;
* ``contrastive``: positive pairs only, optionally with hard negatives for ``text_a``.

Rules, applied row by row: a score that is empty, NaN or not a number, or a label
that is not 0/1, stops with an error naming the file, row and column (the data is
wrong, and guessing would train on garbage). An empty or whitespace-only text, or a
pair seen before, is dropped and counted (continuing is safe); the summary says
how many and where the first one was.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from lightning_modules.data.columns import ColumnMapping
from lightning_modules.errors import DataError
from lightning_modules.data.formats import RawTable, decimal_comma_hint

log = logging.getLogger(__name__)

SUPERVISIONS = ("auto", "graded", "binary", "contrastive")
TRUE_LABELS = {"1", "1.0", "true"}
FALSE_LABELS = {"0", "0.0", "false"}


@dataclass
class PairExamples:
    """Aligned lists: one entry per kept pair.

    ``targets``: the raw score (graded), 0/1 (binary) or 1.0 (contrastive).
    ``negatives``: hard negatives of ``text_a`` (may be empty lists).
    ``where``: the pair's place in its file, for later messages.
    """

    supervision: str
    text_a: list[str] = field(default_factory=list)
    text_b: list[str] = field(default_factory=list)
    targets: list[float] = field(default_factory=list)
    negatives: list[list[str]] = field(default_factory=list)
    where: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices) -> PairExamples:
        pick = lambda values: [values[i] for i in indices]  # noqa: E731
        return PairExamples(
            self.supervision, pick(self.text_a), pick(self.text_b), pick(self.targets), pick(self.negatives),
            pick(self.where),
        )


@dataclass
class ReadReport:
    """What happened to the rows of one split: read, kept, and each reason a row was not kept."""

    split: str
    source: str
    rows_read: int = 0
    held_out: int = 0  # kept, but moved to the validation split
    dropped: dict[str, int] = field(default_factory=dict)
    first_dropped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: str, where: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        self.first_dropped.setdefault(reason, where)

    @property
    def kept(self) -> int:
        return self.rows_read - self.held_out - sum(self.dropped.values())

    def summary(self) -> str:
        line = f"{self.split}: {self.rows_read} rows read from {self.source}, {self.kept} kept"
        if self.held_out:
            line += f"; {self.held_out} held out for validation"
        for reason, count in self.dropped.items():
            line += f"; {count} dropped: {reason} (first: {self.first_dropped[reason]})"
        return "\n  ".join([line, *self.notes])

    def as_dict(self) -> dict:
        return {
            "source": self.source, "rows_read": self.rows_read, "kept": self.kept, "held_out": self.held_out,
            "dropped": dict(self.dropped), "first_dropped": dict(self.first_dropped), "notes": list(self.notes),
        }


def choose_supervision(mapping: ColumnMapping, requested: str, source: str) -> str:
    """The supervision type, from ``requested`` or (``auto``) the columns; may re-map score/label.

    ``graded`` with only a label column reads that column as scores (GLUE's STS-B
    calls its scores ``label``); ``binary`` with only a score column reads 0/1 from it.
    """
    if requested not in SUPERVISIONS:
        raise DataError(f"data.supervision must be one of {list(SUPERVISIONS)}, got {requested!r}")
    if requested == "auto":
        return "graded" if mapping.score else "binary" if mapping.label else "contrastive"
    if requested == "graded":
        if not mapping.score and mapping.label:
            mapping.score, mapping.label = mapping.label, None
        if not mapping.score:
            raise DataError(f"{source}: supervision=graded needs a score column; map it with data.columns.score=...")
    if requested == "binary":
        if not mapping.label and mapping.score:
            mapping.label, mapping.score = mapping.score, None
        if not mapping.label:
            raise DataError(f"{source}: supervision=binary needs a label column; map it with data.columns.label=...")
    if requested == "contrastive" and (mapping.score or mapping.label):
        column = mapping.score or mapping.label
        raise DataError(
            f"{source}: supervision=contrastive takes positive pairs only, but column {column!r} holds "
            "scores or labels; use supervision=binary (pairs labelled 0 become hard negatives) or graded"
        )
    return requested


def build_examples(
    table: RawTable,
    mapping: ColumnMapping,
    supervision: str,
    split: str,
    symmetric: bool = True,
    score_range: tuple[float, float] | None = None,
    keep_duplicates: bool = False,
) -> tuple[PairExamples, ReadReport]:
    """Check every row of ``table`` and keep the usable pairs.

    ``symmetric``: ``(a, b)`` and ``(b, a)`` are the same pair (for duplicate checks).
    ``score_range``: the declared range of graded scores; a score outside it is an error.
    ``keep_duplicates``: keep repeated pairs (a benchmark is defined with them).

    Raises:
        DataError: a score or label that is missing or invalid, a text cell that is
            not text; the message names the file, row and column.
    """
    examples = PairExamples(supervision)
    report = ReadReport(split, table.source, rows_read=len(table))
    seen: dict[tuple, float] = {}
    conflicting = 0
    empty_negatives = 0
    for index, row in enumerate(table.rows):
        texts = [_text(row.get(mapping.text_a), table, index, mapping.text_a),
                 _text(row.get(mapping.text_b), table, index, mapping.text_b)]
        empty = [column for column, text in zip((mapping.text_a, mapping.text_b), texts) if not text.strip()]
        if empty:
            report.drop("empty or whitespace-only text", table.where(index, empty[0]))
            continue
        if supervision == "graded":
            target = _score(row.get(mapping.score), table, index, mapping.score, score_range)
        elif supervision == "binary":
            target = _label(row.get(mapping.label), table, index, mapping.label)
        else:
            target = 1.0
        key = pair_key(texts[0], texts[1], symmetric)
        if key in seen and not keep_duplicates:
            conflicting += seen[key] != target
            report.drop("duplicate pair", table.where(index))
            continue
        seen[key] = target
        negatives, empty_count = _negatives(row, mapping.negatives, table, index)
        empty_negatives += empty_count
        examples.text_a.append(texts[0])
        examples.text_b.append(texts[1])
        examples.targets.append(target)
        examples.negatives.append(negatives if supervision != "graded" else [])
        examples.where.append(table.where(index))
    if conflicting:
        report.notes.append(
            f"{conflicting} of the duplicate pairs had a different score or label than their first occurrence, "
            "which was kept"
        )
    if empty_negatives:
        report.notes.append(f"{empty_negatives} empty hard-negative cells skipped")
    if mapping.negatives and supervision == "graded":
        report.notes.append(f"negative column(s) {mapping.negatives} ignored: graded supervision does not use them")
    if not len(examples):
        raise DataError(f"{table.source}: none of the {len(table)} rows is usable:\n  {report.summary()}")
    return examples, report


def pair_key(a: str, b: str, symmetric: bool) -> tuple:
    """Identity of a pair: texts compared after stripping; order ignored when ``symmetric``."""
    a, b = a.strip(), b.strip()
    return tuple(sorted((a, b))) if symmetric else (a, b)


def normalise_scores(examples: PairExamples, low: float, high: float) -> None:
    """Map graded scores from ``[low, high]`` to ``[0, 1]`` in place."""
    examples.targets = [(score - low) / (high - low) for score in examples.targets]


def _text(value, table: RawTable, index: int, column: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{table.where(index, column)}: expected text, found {type(value).__name__} {value!r}")
    return value


def _score(value, table: RawTable, index: int, column: str, score_range) -> float:
    where = table.where(index, column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: empty score")
    if isinstance(value, bool):
        raise DataError(f"{where}: {value!r} is a boolean, not a score")
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {value!r} is not a number{decimal_comma_hint(value)}") from None
    if not math.isfinite(score):
        raise DataError(f"{where}: {value!r} is not a finite number")
    if score_range is not None and not score_range[0] <= score <= score_range[1]:
        raise DataError(f"{where}: {score} is outside the declared range {list(score_range)} (data.score_range)")
    return score


def _label(value, table: RawTable, index: int, column: str) -> float:
    text = str(value).strip().lower()
    if isinstance(value, bool) or text in TRUE_LABELS | FALSE_LABELS:
        return 1.0 if text in TRUE_LABELS else 0.0
    raise DataError(
        f"{table.where(index, column)}: label {value!r} is not 0 or 1. If this column holds graded scores, "
        "set data.supervision=graded"
    )


def _negatives(row: dict, columns: list[str], table: RawTable, index: int) -> tuple[list[str], int]:
    negatives, empty = [], 0
    for column in columns:
        value = row.get(column)
        values = value if isinstance(value, list) else [value]
        for item in values:
            text = _text(item, table, index, column)
            if text.strip():
                negatives.append(text)
            else:
                empty += 1
    return negatives, empty
