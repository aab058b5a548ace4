"""PyLate's own retrieval path over given token vectors, run by ``benchmarks/search.py`` in PyLate's
virtual environment (``.venv-pylate``, with ``voyager`` installed into it).

    .venv-pylate/bin/python benchmarks/pylate_search.py FOLDER K_TOKEN

``FOLDER`` holds ``vectors.safetensors`` (``documents (T, D)``, ``document_lengths (N,)``,
``queries (Tq, D)``, ``query_lengths (Q,)``) and ``ids.json`` (``documents``, ``queries``). The
documents go into ``pylate.indexes.Voyager`` (its defaults: M=64, ef_construction=200,
ef_search=200); ``pylate.retrieve.ColBERT`` retrieves the 10 best of each query (``K_TOKEN``
nearest tokens a query token, then PyLate's rerank), a query a batch. Writes
``FOLDER/result.json``: versions, ``index_seconds``, ``search_seconds``, ``index_bytes`` and
``ranking`` (query id -> ``[[document id, score], ...]``, best first; a document whose id is the
query's own left out, BEIR's convention, as ours).
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
from pylate import indexes, retrieve
from safetensors.torch import load_file


def main(folder: Path, k_token: int) -> None:
    tensors = load_file(str(folder / "vectors.safetensors"))
    ids = json.loads((folder / "ids.json").read_text())
    documents = list(tensors["documents"].split(tensors["document_lengths"].tolist()))
    queries = list(tensors["queries"].split(tensors["query_lengths"].tolist()))
    start = time.perf_counter()
    index = indexes.Voyager(index_folder=str(folder / "pylate"), index_name="index", override=True,
                            embedding_size=documents[0].shape[1])
    index.add_documents(documents_ids=ids["documents"], documents_embeddings=[d.numpy() for d in documents])
    index_seconds = time.perf_counter() - start
    retriever = retrieve.ColBERT(index=index)
    start = time.perf_counter()
    # One query a batch: at PyLate's default of 50, the token vectors its rerank asks Voyager for
    # overflow a 32-bit count on SciFact ("cannot create std::vector larger than max_size()").
    found = retriever.retrieve(queries_embeddings=[q.numpy() for q in queries], k=11, k_token=k_token, device="cpu",
                               batch_size=1)
    search_seconds = time.perf_counter() - start
    ranking = {}
    for query_id, results in zip(ids["queries"], found):
        ranking[query_id] = [[r["id"], float(r["score"])] for r in results if r["id"] != query_id][:10]
    index_bytes = sum(p.stat().st_size for p in (folder / "pylate").rglob("*") if p.is_file())
    (folder / "result.json").write_text(json.dumps({
        "pylate": version("pylate"), "voyager": version("voyager"), "torch": torch.__version__,
        "index_seconds": index_seconds, "search_seconds": search_seconds, "index_bytes": index_bytes,
        "ranking": ranking}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
