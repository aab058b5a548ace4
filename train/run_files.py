"""Rankings as files other tools read: TREC run files (``qid Q0 docid rank score tag``, read by
trec_eval, ranx and pytrec_eval) and JSON Lines, for ``train.evaluate`` and ``train.search``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lightning_modules.errors import DataError

# The suffixes written as JSON Lines; any other is a TREC run file.
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def run_tag(model: str) -> str:
    """The TREC run file's tag (its last column, one word): the model path's name, else ``maxsim``."""
    return re.sub(r"\s+", "_", Path(model).name) or "maxsim"


def write_run(path: Path, ranking: dict[str, list[tuple[str, float]]], tag: str) -> None:
    """A TREC run file: ``qid Q0 docid rank score tag`` a line, each query's documents best first, ranks from 1.

    Raises:
        DataError: an id is empty or holds whitespace, which separates the file's columns.
    """
    lines = run_lines(ranking, tag, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        f.writelines(lines)


def run_lines(ranking: dict[str, list[tuple[str, float]]], tag: str, where: str = "the run") -> list[str]:
    """The lines of a TREC run file (``write_run``), each ending in a newline.

    Raises:
        DataError: an id is empty or holds whitespace, which separates the file's columns.
    """
    for qid, documents in ranking.items():
        for doc in (qid, *(d for d, _ in documents)):
            if not doc or re.search(r"\s", doc):
                raise DataError(f"id {doc!r} cannot go into a TREC run file ({where}): its columns are separated by "
                                "whitespace, so an id must be one non-empty word")
    # repr: every digit of the score, so that a tool re-sorting by score keeps our order
    return [f"{qid} Q0 {doc} {rank} {score!r} {tag}\n" for qid, documents in ranking.items()
            for rank, (doc, score) in enumerate(documents, 1)]


def write_jsonl(path: Path, ranking: dict[str, list[tuple[str, float]]], texts: dict[str, str] | None = None) -> None:
    """One JSON object a query: ``{"query_id", "query" (when ``texts`` has it), "results": [{"rank",
    "id", "score"}, ...]}``, best first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for qid, documents in ranking.items():
            record = {"query_id": qid, **({"query": texts[qid]} if texts and qid in texts else {}),
                      "results": [{"rank": rank, "id": doc, "score": score}
                                  for rank, (doc, score) in enumerate(documents, 1)]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
