"""Reading a table of rows from CSV, TSV, JSON Lines, Parquet or a Hugging Face dataset.

Every reader returns a ``RawTable``: the column names, the rows as dicts, and for
each row a label (``line 12`` for text files, ``row 7`` otherwise) so that an
error can point at the exact place. Values are left as read (strings from CSV,
JSON types from JSON Lines, Arrow types from Parquet); the pairs layer checks them.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_modules.errors import DataError

TEXT_FORMATS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}  # suffix -> the delimiter preferred in detection
# The separators a delimited file may use (Excel in many European locales writes ';').
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}
DETECTION_SAMPLE = 1 << 16  # characters read to detect the delimiter
DETECTION_ROWS = 50
JSON_FORMATS = (".jsonl", ".ndjson", ".json")
PARQUET_FORMATS = (".parquet", ".pq")
SUPPORTED = ", ".join([*TEXT_FORMATS, *JSON_FORMATS, *PARQUET_FORMATS]) + ", or a Hugging Face dataset id"
# owner/name or name: what a hub dataset id looks like (and a local file path usually does not).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class RawTable:
    """Rows as read, with where each came from (for error messages)."""

    source: str
    columns: list[str]
    rows: list[dict[str, Any]]
    row_labels: list[str] = field(default_factory=list)
    delimiter: str | None = None  # a delimited file's separator
    read_as: str | None = None  # how it was split, for messages: "semicolon-separated (detected; ...)"

    def where(self, index: int, column: str | None = None) -> str:
        """``'data.csv, line 12, column 'score''``: the place of row ``index`` (0-based)."""
        label = self.row_labels[index] if self.row_labels else f"row {index + 1}"
        return f"{self.source}, {label}" + (f", column {column!r}" if column else "")

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class TableSpec:
    """Where a table lives: a local file, or a hub dataset with an optional config and split."""

    path: str
    name: str | None = None
    split: str | None = None

    @classmethod
    def parse(cls, spec: str | dict | TableSpec, default_split: str) -> TableSpec:
        """Accept ``"file.csv"``, ``"owner/dataset"`` or ``{path, name, split}`` (Hydra gives dicts)."""
        if isinstance(spec, TableSpec):
            return spec
        if isinstance(spec, str):
            return cls(spec, None, default_split)
        if hasattr(spec, "keys"):
            unknown = set(spec.keys()) - {"path", "name", "split"}
            if "path" not in spec or unknown:
                raise DataError(f"a dataset is a path or {{path, name, split}}; got keys {sorted(spec.keys())}")
            return cls(str(spec["path"]), spec.get("name"), spec.get("split") or default_split)
        raise DataError(f"a dataset is a path or {{path, name, split}}; got {spec!r}")


def parse_delimiter(value: str | None, setting: str = "data.delimiter") -> str | None:
    """``None`` (or ``auto``: detect), or one of ``DELIMITERS`` given as itself or by name."""
    if value is None or value == "auto":
        return None
    # The character, its name, or a backslash-t as a shell passes it.
    accepted = {**{char: char for char in DELIMITERS}, **{name: char for char, name in DELIMITERS.items()},
                "\\t": "\t"}
    if value in accepted:
        return accepted[value]
    raise DataError(f"{setting}={value!r}: expected comma, semicolon or tab (or the character itself: ',' ';'), "
                    "or null to detect it")


def read_table(spec: TableSpec, delimiter: str | None = None, setting: str = "data.delimiter") -> RawTable:
    """Read a local file (format from its suffix) or, when no such file exists, a hub dataset.

    ``delimiter``: the separator of a ``.csv``/``.tsv`` file (``None``: detected among
    ``DELIMITERS``, the suffix's own first); ``setting`` names the option that sets it,
    for messages.

    Raises:
        DataError: a path that does not exist and is not a loadable hub id, a format
            that cannot be read, bytes that are not UTF-8, malformed rows, an empty file.
    """
    path = Path(spec.path).expanduser()
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected a file ({SUPPORTED})")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in TEXT_FORMATS:
            table = _read_delimited(path, TEXT_FORMATS[suffix], parse_delimiter(delimiter, setting), setting)
        elif suffix in JSON_FORMATS:
            table = _read_json(path)
        elif suffix in PARQUET_FORMATS:
            table = _read_parquet(path)
        else:
            raise DataError(f"{path}: cannot read the format {suffix or '(no suffix)'!r}; supported: {SUPPORTED}")
    elif path.suffix.lower() in (*TEXT_FORMATS, *JSON_FORMATS, *PARQUET_FORMATS) or not HUB_ID.match(spec.path):
        raise DataError(f"{path}: file not found (working directory {Path.cwd()})")
    else:
        table = _read_hub(spec)
    if not table.rows:
        raise DataError(f"{table.source}: no rows (header only or empty)")
    return table


def read_utf8(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 are an error naming the line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # -sig: a BOM is not part of the first column name
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DataError(
            f"{path}, line {line}: not valid UTF-8 ({error.reason} at byte {error.start}); "
            "re-save the file as UTF-8"
        ) from error


def detect_delimiter(text: str, preferred: str) -> str:
    """The separator of delimited ``text``: ``preferred`` (the suffix's) if it splits the
    first rows into two or more fields, the same number in each; else the other candidate
    of ``DELIMITERS`` that does, with the most fields; else ``preferred`` (whose errors then
    say how the file was split)."""
    sample = text[:DETECTION_SAMPLE]
    best, best_fields = preferred, 0
    for candidate in (preferred, *(d for d in DELIMITERS if d != preferred)):
        try:
            rows = [r for r in itertools.islice(csv.reader(io.StringIO(sample, newline=""), delimiter=candidate),
                                                DETECTION_ROWS) if r]
        except csv.Error:
            continue
        if len(text) > DETECTION_SAMPLE and len(rows) > 1:
            rows = rows[:-1]  # the sample may cut the last row short
        fields = len(rows[0]) if rows else 0
        if fields >= 2 and all(len(r) == fields for r in rows):
            if candidate == preferred:
                return preferred
            if fields > best_fields:
                best, best_fields = candidate, fields
    return best


def _read_delimited(path: Path, preferred: str, delimiter: str | None, setting: str) -> RawTable:
    text = read_utf8(path)
    if not text.strip():
        raise DataError(f"{path}: empty file")
    how = setting
    if delimiter is None:
        delimiter, how = detect_delimiter(text, preferred), f"detected; {setting}= sets it"
    read_as = f"{DELIMITERS[delimiter]}-separated ({how})"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
        columns = [name.strip() for name in header]
        _check_header(path, columns)
        rows, labels = [], []
        for values in reader:
            if not values:  # a blank line is not a row
                continue
            where = f"line {reader.line_num}"
            if len(values) != len(columns):
                raise DataError(
                    f"{path}, {where}: {len(values)} fields, but the header has {len(columns)} ({columns}), "
                    f"read as {read_as}; a field that contains the delimiter must be quoted"
                )
            rows.append(dict(zip(columns, values)))
            labels.append(where)
    except csv.Error as error:
        raise DataError(f"{path}, line {reader.line_num}: not readable as {read_as} text: {error}") from error
    return RawTable(str(path), columns, rows, labels, delimiter=delimiter, read_as=read_as)


def _check_header(path: Path, columns: list[str]) -> None:
    if any(not name for name in columns):
        raise DataError(f"{path}, line 1: the header has an empty column name: {columns}")
    duplicated = sorted({name for name in columns if columns.count(name) > 1})
    if duplicated:
        raise DataError(f"{path}, line 1: the header repeats column(s) {duplicated}")


def _read_json(path: Path) -> RawTable:
    """JSON Lines (one object per line), or a single JSON array of objects."""
    text = read_utf8(path)
    if not text.strip():
        raise DataError(f"{path}: empty file")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {error.lineno}: not valid JSON: {error.msg}") from error
        entries = [(f"item {i + 1}", record) for i, record in enumerate(records)]
    else:
        entries = []
        # split("\n"), not splitlines(): U+2028 and friends may stand raw inside JSON strings.
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                entries.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {number}: not valid JSON: {error.msg}") from error
    columns: list[str] = []
    for label, record in entries:
        if not isinstance(record, dict):
            raise DataError(f"{path}, {label}: expected a JSON object, found {type(record).__name__}")
        columns.extend(key for key in record if key not in columns)
    return RawTable(str(path), columns, [record for _, record in entries], [label for label, _ in entries])


def _read_parquet(path: Path) -> RawTable:
    import pyarrow.parquet as pq  # lazily: only Parquet needs it (datasets depends on it)

    try:
        table = pq.read_table(path)
    except Exception as error:  # noqa: BLE001 - Arrow raises several types for a bad file
        raise DataError(f"{path}: not readable as Parquet ({error.__class__.__name__}: {error})") from error
    return RawTable(str(path), list(table.column_names), table.to_pylist())


def _read_hub(spec: TableSpec) -> RawTable:
    import datasets  # lazily: only the hub path needs it

    source = f"hub dataset {spec.path}" + (f" ({spec.name})" if spec.name else "") + f", split {spec.split}"
    try:
        table = datasets.load_dataset(spec.path, spec.name, split=spec.split)
    except Exception as error:  # noqa: BLE001 - offline, missing, private: the same advice
        raise DataError(
            f"{spec.path}: no such local file, and loading it as a hub dataset failed "
            f"({error.__class__.__name__}: {error})"
        ) from error
    return RawTable(source, list(table.column_names), table.to_list())


def decimal_comma_hint(value) -> str:
    """``'; write it with a decimal point: 4.3'`` when ``value`` reads like ``4,3``, else ``''``."""
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+,\d+\s*", value):
        return f"; write it with a decimal point: {value.strip().replace(',', '.')}"
    return ""
