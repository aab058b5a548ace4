"""Small retrieval sets in BEIR's layout: written from rows, or cut from the shared SciFact."""

from __future__ import annotations

import csv
import json
from pathlib import Path

SCIFACT_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "scifact"


def write_beir(folder: Path, corpus: list[dict], queries: list[dict], qrels: dict[str, list[tuple]], *,
               corpus_file: str = "corpus.jsonl", queries_file: str = "queries.jsonl",
               qrels_file: str = "qrels/{split}.tsv", qrels_layout: str = "beir") -> Path:
    """A retrieval folder: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` (``(query-id,
    corpus-id, score)`` rows) by default; the other names choose another table format (by suffix,
    ``write_rows``) or qrels file, and ``qrels_layout`` one of ``beir`` (with the header), ``headerless``
    (BEIR's rows alone) or ``trec`` (``query-id 0 corpus-id score``, space-separated)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_rows(folder / corpus_file, corpus)
    write_rows(folder / queries_file, queries)
    for split, rows in qrels.items():
        path = folder / qrels_file.format(split=split)
        path.parent.mkdir(parents=True, exist_ok=True)
        if qrels_layout == "trec":
            path.write_text("".join(f"{q} 0 {d} {g}\n" for q, d, g in rows), encoding="utf-8")
            continue
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t")
            if qrels_layout == "beir":
                writer.writerow(["query-id", "corpus-id", "score"])
            writer.writerows(rows)
    return folder


def write_rows(path: Path, rows: list[dict]) -> None:
    """``rows`` as JSON Lines, CSV, TSV or Parquet, by the suffix of ``path`` (columns: the first row's keys)."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif path.suffix in (".csv", ".tsv"):
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [],
                                    delimiter="\t" if path.suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise ValueError(f"no writer for {path.suffix}")


def scifact_subset(folder: Path, train_queries: int, test_queries: int, distractors: int) -> Path:
    """A SciFact slice: the first queries of each split, their relevant abstracts and ``distractors``
    other abstracts (a real, small retrieval task)."""
    corpus = [json.loads(line) for line in (SCIFACT_DIR / "corpus.jsonl").open(encoding="utf-8")]
    queries = {q["_id"]: q for q in map(json.loads, (SCIFACT_DIR / "queries.jsonl").open(encoding="utf-8"))}
    qrels, wanted = {}, set()
    for split, limit in (("train", train_queries), ("test", test_queries)):
        with (SCIFACT_DIR / "qrels" / f"{split}.tsv").open(encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t"))[1:]
        kept = list(dict.fromkeys(r[0] for r in rows))[:limit]
        qrels[split] = [r for r in rows if r[0] in kept]
        wanted |= {r[1] for r in qrels[split]}
    documents = [d for d in corpus if d["_id"] in wanted]
    documents += [d for d in corpus if d["_id"] not in wanted][:distractors]
    used = {r[0] for rows in qrels.values() for r in rows}
    return write_beir(folder, documents, [queries[q] for q in sorted(used)], qrels)
