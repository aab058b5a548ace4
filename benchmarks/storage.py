"""Storage against quality: the bytes a document of what a user indexes, and the nDCG@10 it buys.

For each model (``--model NAME=PATH``, e.g. the raw 384-d token vectors of a run trained with
``model.projection_dim=null`` and the trained 128-d projection of one with
``model.projection_dim=128``) and each stored dtype (``--dtypes``, float32 and float16 by
default), the whole corpus of a BEIR folder is indexed as ``python -m train.index`` indexes it
(``write_index``: the same shards, the same manifest), then the split's judged queries are searched
exactly as ``python -m train.search ... split=test k=100`` searches them (``Index.search``, every
document scored by MaxSim, the query's own id never returned, as BEIR does). Quality: nDCG@10,
MRR@10 and Recall@100 (x100) by the project's metric function (``ranking_metrics``, as
``train.evaluate`` counts them). Storage, measured from the files on disk, per document:

* **vectors**: the token-vector payload of the shards alone (the ``vectors`` tensor's bytes,
  read from each safetensors header): ``tokens x dim x bytes a number``;
* **whole folder**: every file of the index folder (the manifest, and the shards with their
  lengths, ids and texts: a user stores the documents' texts with the vectors).

Also the vector dim and the token vectors a document. One table, then JSON (``--out``).

Encoding runs at ``--precision`` (``auto``: bf16 where the processor multiplies it natively, as
``train.index``); the dtype only changes what is stored. So the same model's rows differ by the
rounding of the stored vectors alone; with bf16 encoding, a float32 index holds bf16 values in
float32's bytes.

Each index is kept in ``--work/<name>-<dtype>`` (default: ``--out``'s name with ``.work``). A
finished one is reused, not encoded again; a build that was killed continues from its last
finished shard (``write_index``'s own resumption). One built from another corpus or at another
precision is refused: delete it or give another ``--work``.

    python -m benchmarks.storage --model raw384=<run A>/model --model proj128=<run B>/model
    python -m benchmarks.storage --model raw384=<run A>/model --dtypes float32,float16,bfloat16 --split test
    python -m benchmarks.storage --model proj128=<run B>/model --precision 32-true --work /tmp/storage-indexes
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from benchmarks.report import write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "scifact"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "storage.json"
DEFAULT_DTYPES = "float32,float16"
DEPTH = 100  # documents a query: Recall@100's depth, train.search's k=100
VECTORS = "vectors"  # the shard tensor that holds the token vectors (lightning_modules/index/storage.py)

log = logging.getLogger("bench")


# --------------------------------------------------------------------------- arguments


def parse_models(specs: list[str]) -> list[tuple[str, str]]:
    """``NAME=PATH`` pairs -> ``[(name, path)]``; a name names the rows and the index folders, so
    it must be unique and a plain folder name."""
    models = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path or "/" in name or name in (".", ".."):
            raise SystemExit(f"--model {spec!r}: expected NAME=PATH, NAME a plain name (e.g. raw384=runs/a/model)")
        models.append((name, path))
    names = [name for name, _ in models]
    if len(set(names)) != len(names):
        raise SystemExit(f"--model names must be unique, got {names}")
    return models


def parse_dtypes(text: str) -> list[str]:
    """``float32,float16`` -> the stored dtypes, each one an index can hold."""
    from lightning_modules.index.storage import DTYPES

    dtypes = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in DTYPES]
    if not dtypes or unknown:
        raise SystemExit(f"--dtypes {text!r}: expected a comma-separated list of {list(DTYPES)}")
    return list(dict.fromkeys(dtypes))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                        help="a model to index with (an export, a .ckpt or a plain encoder); repeatable")
    parser.add_argument("--dtypes", default=DEFAULT_DTYPES, help="stored dtypes, comma-separated (%(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a BEIR folder (default: %(default)s)")
    parser.add_argument("--split", default="test", help="whose judged queries are searched (%(default)s)")
    parser.add_argument("--precision", default="auto", help="encoding: auto, 32-true or bf16-mixed (as train.index)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts an encoding batch (%(default)s)")
    parser.add_argument("--work", type=Path, default=None, metavar="DIR",
                        help="the indexes, kept for reuse (default: --out's name with .work)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: %(default)s)")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- the index


def index_folder(work: Path, name: str, dtype: str) -> Path:
    """Where the index of model ``name`` stored in ``dtype`` lives."""
    return work / f"{name}-{dtype}"


def check_reusable(folder: Path, source: str, dtype: str, precision: str) -> None:
    """Refuse an index already in ``folder`` that another run of this benchmark did not leave for
    this one: built from another corpus (``write_index`` would append to it), stored in another
    dtype (it keeps its own) or encoded at another precision (the rows would mix two). The model
    itself is checked by ``write_index`` (its fingerprint)."""
    from lightning_modules.index.storage import MANIFEST, read_manifest

    if not (folder / MANIFEST).is_file():
        return
    manifest = read_manifest(folder)
    found = {"corpus": manifest.sources, "dtype": manifest.dtype, "precision": manifest.precision}
    wanted = {"corpus": [source], "dtype": dtype, "precision": precision}
    differ = [f"{key} {found[key]!r} there, {wanted[key]!r} here" for key in found if found[key] != wanted[key]]
    if differ:
        raise SystemExit(f"{folder} holds another index ({'; '.join(differ)}); delete it or give another --work")


def build_index(model, corpus, folder: Path, dtype: str, batch_size: int, model_path: str):
    """The index of ``corpus`` in ``folder``, as ``train.index`` builds it: a finished one is read
    back (nothing encoded), a killed one continued, a missing one encoded. Returns ``IndexReport``."""
    from lightning_modules.index import write_index

    check_reusable(folder, corpus.source, dtype, model.inference_precision)
    report = write_index(model, corpus, folder, dtype=dtype, batch_size=batch_size, model_path=model_path)
    log.info("%s: %d documents encoded now, %d kept from a killed build, %d already indexed", folder, report.added,
             report.adopted, report.held)
    return report


# --------------------------------------------------------------------------- storage


def tensor_bytes_on_disk(path: Path, name: str = VECTORS) -> int:
    """The bytes of tensor ``name`` in the safetensors file ``path``, by its header's data offsets
    (a little-endian u64 header length, then the JSON header): the payload as written, not as
    computed from shapes."""
    with path.open("rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    start, end = header[name]["data_offsets"]
    return end - start


def folder_bytes(folder: Path) -> int:
    """The bytes of every file under ``folder``."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def storage_of(folder: Path) -> dict:
    """What the index in ``folder`` holds and takes on disk: documents, token vectors, the vector
    dim, the vectors' payload bytes and the whole folder's bytes, with their shares a document."""
    from lightning_modules.index.storage import read_manifest

    manifest = read_manifest(folder)
    documents = max(manifest.documents, 1)
    vectors = sum(tensor_bytes_on_disk(folder / shard.file) for shard in manifest.shards)
    total = folder_bytes(folder)
    return {"documents": manifest.documents, "tokens": manifest.tokens, "dim": int(manifest.model["dim"]),
            "tokens_per_document": round(manifest.tokens / documents, 2), "vector_bytes": vectors,
            "folder_bytes": total, "vector_bytes_per_document": round(vectors / documents, 1),
            "folder_bytes_per_document": round(total / documents, 1), "folder_mib": round(total / 2**20, 2)}


# --------------------------------------------------------------------------- quality


def judged_queries(data, split: str) -> tuple[list[str], list[str]]:
    """The ids and texts of the queries judged in ``split`` (those with a relevant document), in
    id order, as ``train.search ... split=`` takes them."""
    query_ids = sorted(data.judgements[split].by_query)
    return query_ids, [data.queries[q] for q in query_ids]


def ranked_positions(index, query_ids: list[str], texts: list[str], batch_size: int) -> torch.Tensor:
    """``(Q, DEPTH)`` index positions of each query's best documents, best first, ``-1`` padding a
    shorter list: ``train.search``'s exact search, the query's own id excluded."""
    found = index.search(texts, k=DEPTH, mode="exact", exclude=query_ids, batch_size=batch_size)
    ranked = torch.full((len(query_ids), DEPTH), -1, dtype=torch.long)
    for row, positions in enumerate(found.indices):
        ranked[row, : len(positions)] = torch.tensor(positions, dtype=torch.long)
    return ranked


def quality_of(ranked: torch.Tensor, judged: list[dict[str, int]], position: dict[str, int]) -> dict:
    """nDCG@10, MRR@10 and Recall@100 (x100) of ``ranked`` against the graded judgements (document
    id -> grade, one dict a query), by the project's metric function."""
    from lightning_modules.evaluation.metrics import ranking_metrics

    judgements = [{position[doc]: grade for doc, grade in docs.items()} for docs in judged]
    values = ranking_metrics(ranked, judgements)
    return {name: round(100 * values[name], 4) for name in ("ndcg@10", "mrr@10", "recall@100")}


# --------------------------------------------------------------------------- one row


def measure(model, corpus, data, split: str, folder: Path, dtype: str, batch_size: int, model_path: str) -> dict:
    """One row: the index of ``corpus`` in ``dtype`` (built or reused), its storage and its quality."""
    from lightning_modules.index import Index

    report = build_index(model, corpus, folder, dtype, batch_size, model_path)
    index = Index.load(folder, model)
    query_ids, texts = judged_queries(data, split)
    ranked = ranked_positions(index, query_ids, texts, batch_size)
    judged = [data.judgements[split].by_query[q] for q in query_ids]
    return {"dtype": dtype, **storage_of(folder), **quality_of(ranked, judged, index.position),
            "queries": len(query_ids), "encoded_now": report.added, "index": str(folder)}


def measure_model(name: str, path: str, dtypes: list[str], args, corpus, data, work: Path) -> tuple[dict, list[dict]]:
    """The model ``name`` loaded from ``path`` at ``args.precision``, and its rows, one a dtype."""
    from train.index import model_path
    from train.runtime import load_for_inference

    model, precision = load_for_inference(path, args.precision)
    log.info("%s: encoding in %s (%s)", name, precision.inference, precision.reason)
    rows = []
    for dtype in dtypes:
        row = measure(model, corpus, data, args.split, index_folder(work, name, dtype), dtype, args.batch_size,
                      model_path(path))
        rows.append({"model": name, **row})
    return {"name": name, "path": path, "dim": model.encoder.dim, "precision": precision.as_dict()}, rows


# --------------------------------------------------------------------------- report


COLUMNS = (("model", "model", "<", "{}"), ("dim", "dim", ">", "{}"), ("dtype", "dtype", "<", "{}"),
           ("vector_bytes_per_document", "B/doc (vectors)", ">", "{:,.0f}"),
           ("folder_bytes_per_document", "B/doc (folder)", ">", "{:,.0f}"), ("folder_mib", "MiB", ">", "{:.2f}"),
           ("ndcg@10", "nDCG@10", ">", "{:.2f}"), ("mrr@10", "MRR@10", ">", "{:.2f}"),
           ("recall@100", "R@100", ">", "{:.2f}"))


def format_table(rows: list[dict]) -> str:
    """The rows as a plain text table, one line a model and dtype."""
    cells = [[fmt.format(row[key]) for key, _, _, fmt in COLUMNS] for row in rows]
    widths = [max([len(title)] + [len(line[i]) for line in cells]) for i, (_, title, _, _) in enumerate(COLUMNS)]
    lines = ["  ".join(f"{title:{align}{w}}" for (_, title, align, _), w in zip(COLUMNS, widths))]
    lines += ["  ".join(f"{cell:{align}{w}}" for cell, (_, _, align, _), w in zip(line, COLUMNS, widths))
              for line in cells]
    return "\n".join(lines)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    args = parse_args(argv)
    models, dtypes = parse_models(args.model), parse_dtypes(args.dtypes)
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size {args.batch_size}: must be at least 1")
    from lightning_modules.data.beir import read_beir
    from lightning_modules.errors import DataError, SettingsError
    from lightning_modules.index.index import as_corpus

    data_path = str(args.data.expanduser().resolve())
    work = args.work or args.out.with_suffix(".work")
    try:
        data, (corpus, _) = read_beir(data_path, [args.split]), as_corpus(data_path)
        measured = [measure_model(name, path, dtypes, args, corpus, data, work) for name, path in models]
    except (DataError, SettingsError) as error:
        raise SystemExit(str(error)) from error
    rows = [row for _, model_rows in measured for row in model_rows]
    print(format_table(rows))
    write_json({"data": data_path, "split": args.split, "documents": len(corpus.ids), "depth": DEPTH,
                "precision": args.precision, "torch_threads": torch.get_num_threads(),
                "models": [model for model, _ in measured], "rows": rows}, args.out)


if __name__ == "__main__":
    main()
