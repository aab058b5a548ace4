"""Writing small tables of text pairs in every format the readers take."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq


def write_rows(path, rows, columns=None):
    """Write ``rows`` (dicts) in the format that ``path``'s suffix names."""
    columns = columns or list(rows[0])
    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="," if suffix == ".csv" else "\t")
            writer.writerow(columns)
            writer.writerows([[row.get(c, "") for c in columns] for row in rows])
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path
