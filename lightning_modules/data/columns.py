"""Which column holds what: an explicit mapping, completed by detecting common names.

Roles: ``text_a`` and ``text_b`` (the pair), ``score`` (a graded similarity),
``label`` (0/1), ``negatives`` (one or more columns of hard negatives for
``text_a``; a column may hold one text or a list of texts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lightning_modules.errors import DataError

# Pairs of names, most specific first; matched case-insensitively.
PAIR_NAMES = (
    ("sentence1", "sentence2"),
    ("sentence_a", "sentence_b"),
    ("text1", "text2"),
    ("text_a", "text_b"),
    ("anchor", "positive"),
    ("query", "positive"),
    ("query", "document"),
    ("query", "passage"),
    ("query", "context"),
    ("question", "positive"),
    ("question", "passage"),
    ("question", "document"),
    ("question", "context"),
    ("question", "answer"),
    ("premise", "hypothesis"),
)
SCORE_NAMES = ("score", "similarity", "similarity_score", "relevance")
LABEL_NAMES = ("label", "labels", "is_duplicate", "is_positive")
# negative, negatives, hard_negatives, negative_1, negative2, ...
NEGATIVE_NAME = re.compile(r"^(hard_)?negatives?(_?\d+)?$", re.IGNORECASE)
ROLES = ("text_a", "text_b", "score", "label", "negatives")


@dataclass
class ColumnMapping:
    """Column names for each role; ``None`` (or no negatives) where the data has none."""

    text_a: str
    text_b: str
    score: str | None = None
    label: str | None = None
    negatives: list[str] = field(default_factory=list)
    detected: list[str] = field(default_factory=list)  # the roles found by name, for the log

    def describe(self) -> str:
        parts = [f"{role}={getattr(self, role)!r}" for role in ("text_a", "text_b", "score", "label")]
        parts.append(f"negatives={self.negatives}")
        how = f" (detected: {', '.join(self.detected)})" if self.detected else ""
        return ", ".join(parts) + how


def resolve_columns(source: str, columns: list[str], explicit: dict | None = None, *,
                    setting: str | None = "data.columns", read_as: str | None = None) -> ColumnMapping:
    """Map roles to the ``columns`` of ``source``: explicit entries first, then detection by name.

    ``explicit`` maps a role to a column name (``negatives`` to a name or a list of
    names); ``None`` entries are detected. A score column, when found, takes
    precedence over a label column in detection. ``setting``: the option that maps
    columns in the calling command (``data.columns`` for training, ``columns`` for
    ``train.score``; ``None`` where there is none), named in messages. ``read_as``: how
    a delimited file was split (``RawTable.read_as``), named when only one column was found.

    Raises:
        DataError: an explicit column that is missing, an unknown role, or no pair
            of text columns; the message lists the columns found and the mapping so far.
    """
    explicit = {k: v for k, v in (explicit or {}).items() if v not in (None, [], "")}
    unknown = sorted(set(explicit) - set(ROLES))
    if unknown:
        raise DataError(f"{setting or 'columns'}: unknown role(s) {unknown}; the roles are {list(ROLES)}")
    by_lower = {name.lower(): name for name in columns}
    mapping: dict = {}
    detected: list[str] = []

    for role, value in explicit.items():
        names = [value] if isinstance(value, str) else list(value)
        missing = [name for name in names if name not in columns]
        if missing:
            guess = _detect(columns)
            raise DataError(
                f"{source}: mapped column(s) {missing} ({setting or 'columns'}.{role}) not found. "
                f"Columns found: {columns}. Detected mapping: {guess}"
            )
        mapping[role] = names if role == "negatives" else names[0]

    if "text_a" not in mapping or "text_b" not in mapping:
        pair = next(((by_lower[a], by_lower[b]) for a, b in PAIR_NAMES if a in by_lower and b in by_lower), None)
        if pair is None:
            how = f", or map them: {setting}.text_a=... {setting}.text_b=..." if setting else ""
            split = ""
            if len(columns) == 1 and read_as:  # one column: most likely split at the wrong separator
                split = f" The file was read as {read_as}: is that its separator?"
            raise DataError(
                f"{source}: no pair of text columns found. Columns found: {columns}.{split} Name them one of "
                f"{[f'{a}/{b}' for a, b in PAIR_NAMES]}{how}"
            )
        for role, name in zip(("text_a", "text_b"), pair):
            if role not in mapping:
                mapping[role] = name
                detected.append(role)
    if "score" not in mapping and "label" not in mapping:
        for role, names in (("score", SCORE_NAMES), ("label", LABEL_NAMES)):
            name = next((by_lower[n] for n in names if n in by_lower), None)
            if name is not None:
                mapping[role] = name
                detected.append(role)
                break
    if "negatives" not in mapping:
        taken = {mapping.get(role) for role in ("text_a", "text_b", "score", "label")}
        negatives = [name for name in columns if NEGATIVE_NAME.match(name) and name not in taken]
        if negatives:
            mapping["negatives"] = negatives
            detected.append("negatives")
    return ColumnMapping(**mapping, detected=detected)


def _detect(columns: list[str]) -> str:
    try:
        return resolve_columns("", columns).describe()
    except DataError:
        return "none (no pair of text columns)"
