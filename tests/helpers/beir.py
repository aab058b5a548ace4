"""Small retrieval sets in BEIR's layout: written from rows, or cut from the shared SciFact."""

from __future__ import annotations

import csv
import json
from pathlib import Path

SCIFACT_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "scifact"


def write_beir(folder: Path, corpus: list[dict], queries: list[dict], qrels: dict[str, list[tuple]]) -> Path:
    """``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` (``(query-id, corpus-id, score)`` rows)."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    for split, rows in qrels.items():
        with (folder / "qrels" / f"{split}.tsv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(["query-id", "corpus-id", "score"])
            writer.writerows(rows)
    return folder


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
