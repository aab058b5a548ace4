"""Writing a table back in the format it was read from, with a column added."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from lightning_modules.errors import DataError
from lightning_modules.data.formats import TEXT_FORMATS

WRITABLE = (*TEXT_FORMATS, ".jsonl", ".ndjson", ".parquet", ".pq")


def write_table(path: Path, columns: list[str], rows: list[dict], delimiter: str | None = None) -> None:
    """Write ``rows`` to ``path`` as CSV/TSV, JSON Lines or Parquet, by its suffix; a delimited
    file with ``delimiter`` (as the input was read: a semicolon CSV stays one), else the suffix's."""
    suffix = path.suffix.lower()
    if suffix in TEXT_FORMATS:
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, delimiter=delimiter or TEXT_FORMATS[suffix])
            writer.writeheader()
            writer.writerows(rows)
    elif suffix in (".jsonl", ".ndjson"):
        with path.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    elif suffix in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise DataError(f"{path}: cannot write the format {suffix or '(no suffix)'!r}; use .csv, .tsv, .jsonl or .parquet")
