"""Reading scored text pairs (``sentence1,sentence2,score``) from CSV, strictly.

Nothing is dropped silently: a row that cannot be used stops the run with an error
that names the file, the line, the column and what was expected.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from lightning_modules.errors import DataError
from lightning_modules.data.formats import decimal_comma_hint, read_utf8

COLUMNS = ("sentence1", "sentence2", "score")


@dataclass
class ScoredPairs:
    """Aligned lists of text pairs and their gold scores, scaled to [0, 1]; ``where``: each pair's
    place in its source (file and line), for messages about it later."""

    text_a: list[str]
    text_b: list[str]
    scores: list[float]
    where: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores)

    def subset(self, indices) -> ScoredPairs:
        return ScoredPairs(
            [self.text_a[i] for i in indices], [self.text_b[i] for i in indices], [self.scores[i] for i in indices],
            [self.where[i] for i in indices] if self.where else [],
        )


def read_scored_pairs_csv(path: str | Path, score_min: float = 0.0, score_max: float = 5.0) -> ScoredPairs:
    """Read a CSV with columns ``sentence1,sentence2,score`` and scale scores to [0, 1].

    Raises:
        DataError: missing file or columns, bytes that are not UTF-8, an empty text,
            a score that is empty, not a number or outside ``[score_min, score_max]``,
            or a file with no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if not score_max > score_min:
        raise DataError(f"score range must have score_max > score_min, got [{score_min}, {score_max}]")
    pairs = ScoredPairs([], [], [])
    text = read_utf8(path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {missing}; expected {list(COLUMNS)}, found {reader.fieldnames or []}"
            )
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            for column in COLUMNS[:2]:
                if not (row[column] or "").strip():
                    raise DataError(f"{where}, column '{column}': empty text")
            score = _parse_score(row["score"], where, score_min, score_max)
            pairs.text_a.append(row["sentence1"])
            pairs.text_b.append(row["sentence2"])
            pairs.scores.append((score - score_min) / (score_max - score_min))
            pairs.where.append(where)
    except csv.Error as error:
        raise DataError(f"{path}: not readable as CSV: {error}") from error
    if not len(pairs):
        raise DataError(f"{path}: no rows (an empty split cannot be trained or evaluated on)")
    return pairs


def _parse_score(raw: str | None, where: str, score_min: float, score_max: float) -> float:
    text = (raw or "").strip()
    if not text:
        raise DataError(f"{where}, column 'score': empty score")
    try:
        score = float(text)
    except ValueError:
        raise DataError(f"{where}, column 'score': {text!r} is not a number{decimal_comma_hint(text)}") from None
    if math.isnan(score) or not score_min <= score <= score_max:
        raise DataError(f"{where}, column 'score': {text} is outside the declared range [{score_min}, {score_max}]")
    return score
