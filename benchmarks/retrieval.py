"""Retrieval on a BEIR set (SciFact by default), side by side in one run, on the CPU:

* **BM25** (``bm25s``, English stopwords);
* the **all-MiniLM-L6-v2 bi-encoder** (mean pooling, cosine), zero-shot and fine-tuned with
  sentence-transformers' ``MultipleNegativesRankingLoss``;
* **PyLate's ColBERT** from the same MiniLM (PyLate's defaults: a fresh 128-d projection, its
  query length and [MASK] expansion), fine-tuned with its ``Contrastive`` loss, in PyLate's own
  virtual environment (``make interop-env``; ``benchmarks/pylate_retrieval.py``);
* **ours**, zero-shot and trained by ``python -m train +experiment=scifact`` (through
  ``train.pipeline.run``, the experiment's own recipe, its checkpoint picked by validation).

Every trained system sees the same training queries (the experiment's, after its validation
hold-out) and the same hard negatives: the ones our zero-shot model mines, as the experiment
does (for the peers, as many a pair as ours draws into each batch, ``data.max_negatives_per_pair``,
drawn once with the seed; random non-relevant documents where mining found fewer), with the same
epochs, batch size, learning rate and seed. Documents are cut
at the experiment's ``data.max_length`` tokens everywhere.

For each: test nDCG@10, MRR@10 and Recall@100 (x100, over the whole corpus, the same metric
function for all); training pairs per second; query latency (ms per query, one query at a
time: encode it and rank the whole stored corpus; ours' trained row shares the zero-shot
model's figure: same architecture and lengths); and the bytes per document of what has to be
stored (float32 vectors; BM25's sparse index). Then the ratios against ours trained. A table
and JSON (``--out``). Timings are reported, never judged.

Each system's rows are kept in a work folder (``--work``; default: next to ``--out``,
``benchmarks/results/retrieval.work/``) as soon as it finishes: ``<step>.json`` for the steps
``ours-zero-shot``, ``bm25``, ``bi-encoder``, ``pylate``, ``ours-trained`` (done in that order),
the zero-shot step's with the negatives it mined (by query and document id), and
``fingerprint.json``, what the rows depend on (the data folder, the overrides, the shared
settings). A killed run, started again with the same command, reads the steps it finished and
goes on with the next (the negatives handed back to the peers, not mined again); one with other
settings stops and names what differs, and ``--fresh`` starts over. ``--skip`` neither runs nor
reads a system.

    python -m benchmarks.retrieval                     # SciFact, the experiment's settings
    python -m benchmarks.retrieval --data path/to/beir_folder --skip pylate
    python -m benchmarks.retrieval --fresh             # forget the finished steps of an earlier run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.report import write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "scifact"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "retrieval.json"
PYLATE_PYTHON = ROOT / ".venv-pylate" / "bin" / "python"
SYSTEMS = ("bm25", "bi-encoder", "pylate", "ours")
STEPS = ("ours-zero-shot", "bm25", "bi-encoder", "pylate", "ours-trained")  # the order of work
DEPTH = 100
LATENCY_QUERIES = 20

log = logging.getLogger("bench")


def compose_ours(overrides: list[str]):
    import train  # noqa: F401  (registers the OmegaConf resolvers used by conf/)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["+experiment=scifact", *overrides])


def metrics_of(ranked, judgements) -> dict:
    from lightning_modules.evaluation.metrics import ranking_metrics

    values = ranking_metrics(torch.as_tensor(ranked), judgements)
    return {name: round(100 * values[name], 2) for name in ("ndcg@10", "mrr@10", "recall@100")}


# --------------------------------------------------------------------------- the shared data


class Task:
    """The experiment's data: corpus, test queries with judgements, training examples."""

    def __init__(self, cfg) -> None:
        from lightning_modules.datamodules import BeirDataModule

        data = {k: v for k, v in dict(cfg.data).items() if not k.startswith("_")}
        self.datamodule = BeirDataModule(**data)
        self.datamodule.setup("fit")
        dm = self.datamodule
        self.corpus_texts = dm.data.corpus_texts
        position = dm.corpus.position
        self.test_ids = sorted(dm.splits["test"])
        self.test_texts = [dm.data.queries[q] for q in self.test_ids]
        self.judgements = [{position[d]: g for d, g in dm.splits["test"][q].items()} for q in self.test_ids]
        self.exclude = [position.get(q) for q in self.test_ids]

    def examples(self, seed: int, negatives: int) -> list[dict]:
        """One training example a pair: ``query``, ``positive`` and ``negative_1`` .. ``negative_<negatives>``
        texts, drawn with ``seed`` from the pair's mined negatives (as many a pair as ours draws into
        each batch, ``data.max_negatives_per_pair``), random non-relevant documents where mining
        found fewer."""
        dm, rng = self.datamodule, random.Random(seed)
        out = []
        for item in dm.datasets["train"]:
            mined = [k for k, _ in item.negatives]
            chosen = rng.sample(mined, min(negatives, len(mined)))
            while len(chosen) < negatives:
                k = rng.randrange(len(self.corpus_texts))
                if k not in dm._positives[item.a_key] and k not in chosen:
                    chosen.append(k)
            out.append({"query": dm.data.queries[dm._train_queries[item.a_key]],
                        "positive": self.corpus_texts[item.b_key],
                        **{f"negative_{n + 1}": self.corpus_texts[k] for n, k in enumerate(chosen)}})
        return out


# --------------------------------------------------------------------------- systems


def run_bm25(task: Task) -> dict:
    from lightning_modules.data.bm25 import BM25Index

    index = BM25Index(task.corpus_texts)
    ranked, _ = index.top_k(task.test_texts, DEPTH)
    start = time.perf_counter()
    for text in task.test_texts[:LATENCY_QUERIES]:
        index.top_k([text], DEPTH)
    latency = 1000 * (time.perf_counter() - start) / min(LATENCY_QUERIES, len(task.test_texts))
    return {"system": "BM25 (bm25s)", **metrics_of(ranked, task.judgements), "train_pairs_per_second": None,
            "latency_ms_per_query": round(latency, 2), "bytes_per_document": round(index.nbytes / len(task.corpus_texts))}


def _bi_encoder_row(model, task: Task, name: str) -> dict:
    documents = model.encode(task.corpus_texts, batch_size=32, convert_to_tensor=True, normalize_embeddings=True,
                             show_progress_bar=True)
    queries = model.encode(task.test_texts, batch_size=32, convert_to_tensor=True, normalize_embeddings=True)
    scores = queries @ documents.T
    for row, excluded in enumerate(task.exclude):
        if excluded is not None:
            scores[row, excluded] = float("-inf")
    ranked = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :DEPTH]
    start = time.perf_counter()
    for text in task.test_texts[:LATENCY_QUERIES]:
        query = model.encode([text], convert_to_tensor=True, normalize_embeddings=True)
        torch.topk(query @ documents.T, min(DEPTH, len(documents)))
    latency = 1000 * (time.perf_counter() - start) / min(LATENCY_QUERIES, len(task.test_texts))
    return {"system": name, **metrics_of(ranked, task.judgements), "latency_ms_per_query": round(latency, 2),
            "bytes_per_document": 4 * documents.shape[1]}


def run_bi_encoder(task: Task, examples: list[dict], settings: dict) -> list[dict]:
    import datasets
    import transformers
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    try:  # sentence-transformers 6 moved the losses
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    transformers.set_seed(settings["seed"])
    model = SentenceTransformer(settings["model_dir"], device="cpu")
    model.max_seq_length = settings["max_length"]
    rows = [{**_bi_encoder_row(model, task, "bi-encoder MiniLM, zero-shot"), "train_pairs_per_second": None}]
    dataset = datasets.Dataset.from_dict({k: [e[k] for e in examples] for k in examples[0]})  # columns in order
    with tempfile.TemporaryDirectory(prefix="bench_st_") as tmpdir:
        arguments = SentenceTransformerTrainingArguments(
            output_dir=tmpdir, num_train_epochs=settings["epochs"], per_device_train_batch_size=settings["batch_size"],
            learning_rate=settings["lr"], warmup_steps=0.1, seed=settings["seed"], eval_strategy="no", save_strategy="no",
            report_to="none", logging_strategy="no", disable_tqdm=True, use_cpu=True)
        trainer = SentenceTransformerTrainer(model=model, args=arguments, train_dataset=dataset,
                                             loss=MultipleNegativesRankingLoss(model))
        output = trainer.train()
    pairs_per_s = len(dataset) * settings["epochs"] / float(output.metrics["train_runtime"])
    rows.append({**_bi_encoder_row(model, task, "bi-encoder MiniLM, MNRL"), "train_pairs_per_second": round(pairs_per_s, 2)})
    return rows


def run_pylate(task: Task, examples: list[dict], settings: dict) -> dict:
    if not PYLATE_PYTHON.is_file():
        raise SystemExit(f"error: {PYLATE_PYTHON} not found: make interop-env builds PyLate's environment "
                         "(or --skip pylate)")
    request = {"model": settings["model_dir"], "examples": examples, "corpus": task.corpus_texts, "queries": task.test_texts,
               "epochs": settings["epochs"], "batch_size": settings["batch_size"], "lr": settings["lr"],
               "seed": settings["seed"], "document_length": settings["max_length"], "depth": DEPTH,
               "latency_queries": LATENCY_QUERIES, "exclude": task.exclude}
    with tempfile.TemporaryDirectory(prefix="bench_pylate_") as tmpdir:
        request["out"] = str(Path(tmpdir) / "result.json")
        done = subprocess.run([str(PYLATE_PYTHON), str(ROOT / "benchmarks" / "pylate_retrieval.py")],
                              input=json.dumps(request), capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"error: PyLate's run failed:\n{done.stderr[-3000:]}")
        result = json.loads(Path(request["out"]).read_text())
    return {"system": f"PyLate {result['pylate']} ColBERT, Contrastive", **metrics_of(result["ranked"], task.judgements),
            "train_pairs_per_second": round(result["train_pairs"] / result["train_time_s"], 2),
            "latency_ms_per_query": round(result["latency_ms_per_query"], 2),
            "bytes_per_document": round(result["bytes_per_document"])}


def run_ours_zero_shot(task: Task, cfg) -> dict:
    """Ours zero-shot: its row (``rows``) and the hard negatives it mines for the training queries,
    as the experiment does (``negatives``: see ``negatives_by_id``; None where it mines none)."""
    from lightning_modules.encoder import EncoderOptions
    from lightning_modules.evaluation.corpus import latest_encodings, rank_corpus
    from lightning_modules.model import LateInteractionModel

    dm = task.datamodule
    model_cfg = {k: v for k, v in dict(cfg.model).items() if not k.startswith("_")}
    scoring = {k: model_cfg[k] for k in ("direction", "reduction", "temperature", "maxsim") if k in model_cfg}
    model = LateInteractionModel.build(EncoderOptions.from_settings(model_cfg), **scoring).eval()
    queries = model.embed_token_ids(dm._tokenize_queries("test", task.test_ids))
    _, ranked = rank_corpus(model, [q.float() for q in queries], dm.corpus, DEPTH, exclude=task.exclude)
    start = time.perf_counter()
    for ids in dm._tokenize_queries("test", task.test_ids[:LATENCY_QUERIES]):
        rank_corpus(model, [v.float() for v in model.embed_token_ids([ids])], dm.corpus, DEPTH, show_progress_bar=False)
    latency = 1000 * (time.perf_counter() - start) / min(LATENCY_QUERIES, len(task.test_ids))
    stored = 4 * model.encoder.dim * latest_encodings[dm.corpus].tokens / latest_encodings[dm.corpus].documents
    zero = {"system": "ours zero-shot (MaxSim, raw token vectors)", **metrics_of(ranked, task.judgements),
            "train_pairs_per_second": None, "latency_ms_per_query": round(latency, 2), "bytes_per_document": round(stored)}
    negatives = mine_negatives(model, dm)
    latest_encodings.pop(dm.corpus, None)
    return {"rows": [zero], "negatives": negatives}


def mine_negatives(model, dm) -> dict[str, list[str]] | None:
    """The peers' hard negatives: what the experiment itself mines with this zero-shot model, by id;
    None where the experiment mines none (``dm.mining_request()``)."""
    from lightning_modules.callbacks.mining import mine_hard_negatives

    request = dm.mining_request()
    return None if request is None else negatives_by_id(dm, mine_hard_negatives(model, request))


def negatives_by_id(dm, mined: list[list[int]]) -> dict[str, list[str]]:
    """``mined`` (corpus positions, one list per training query, in ``dm``'s order) as corpus ids by
    training query id: ids stay the same from run to run, positions are only ``dm``'s."""
    ids = dm.corpus.ids
    return {query: [ids[i] for i in row] for query, row in zip(dm._train_queries, mined, strict=True)}


def give_negatives(dm, negatives: dict[str, list[str]] | None) -> None:
    """Make ``negatives`` (corpus ids by training query id) ``dm``'s hard negatives, at its positions."""
    if negatives is None:
        return
    position = dm.corpus.position
    dm.add_hard_negatives([[position[d] for d in negatives[query]] for query in dm._train_queries])


def run_ours_trained(overrides: list[str], zero: dict) -> dict:
    """Ours trained by ``+experiment=scifact`` (``train.pipeline.run``); latency and storage are
    those of ``zero`` (ours' zero-shot row): the same architecture and lengths."""
    from train.pipeline import run

    with tempfile.TemporaryDirectory(prefix="bench_ours_") as tmpdir:
        results = run(compose_ours([*overrides, "zero_shot=false", "export=false", f"paths.output_dir={tmpdir}"]))
    return {"system": "ours, +experiment=scifact", "ndcg@10": results.get("test/ndcg@10"),
            "mrr@10": results.get("test/mrr@10"), "recall@100": results.get("test/recall@100"),
            "train_pairs_per_second": results.get("train_pairs_per_second"),
            "latency_ms_per_query": zero["latency_ms_per_query"], "bytes_per_document": zero["bytes_per_document"],
            "val/ndcg@10": results.get("val/ndcg@10")}


# --------------------------------------------------------------------------- resuming


def write_atomically(path: Path, result: dict) -> None:
    """Write ``result`` as JSON to ``path`` whole or not at all: a run killed while writing leaves
    the earlier file (or none), never half of one."""
    text = json.dumps(result, indent=2) + "\n"
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def fingerprint_changes(old: dict, new: dict) -> list[str]:
    """What differs between two fingerprints, by name: ``data``, ``settings.lr``, ``override trainer.max_epochs``."""
    def flat(fingerprint: dict) -> dict:
        out = {}
        for key, value in fingerprint.items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            elif key == "overrides":
                out.update({f"override {o.split('=', 1)[0]}": o for o in value})
            else:
                out[key] = value
        return out

    before, after = flat(old), flat(new)
    changes = [key for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)]
    if not changes and old.get("overrides") != new.get("overrides"):
        changes = ["the order of the overrides"]
    return changes


class WorkFolder:
    """A run's finished steps, one ``<step>.json`` each, written as soon as the step finishes, next
    to ``fingerprint.json``: what they depend on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fingerprint = path / "fingerprint.json"
        self.resumed: list[str] = []  # the steps read from an earlier run, in order

    def step_file(self, step: str) -> Path:
        return self.path / f"{step}.json"

    def clear(self) -> None:
        """Forget an earlier run (``--fresh``): remove the files this script writes, and only those."""
        for path in [self.fingerprint, *map(self.step_file, STEPS), *self.path.glob("*.json.tmp")]:
            path.unlink(missing_ok=True)

    def check(self, fingerprint: dict) -> None:
        """Keep ``fingerprint`` in a new work folder; stop where the folder's results ran under another."""
        if self.fingerprint.is_file():
            changes = fingerprint_changes(json.loads(self.fingerprint.read_text()), fingerprint)
            if changes:
                raise SystemExit(f"error: {self.path} holds results of other settings ({', '.join(changes)} differ): "
                                 "--fresh starts over (or give another --work)")
            return
        if any(self.step_file(step).is_file() for step in STEPS):
            raise SystemExit(f"error: {self.path} holds results but no fingerprint.json: --fresh starts over "
                             "(or give another --work)")
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomically(self.fingerprint, fingerprint)

    def take(self, step: str, compute) -> dict:
        """``step``'s result: read where an earlier run finished it, else ``compute()``d and kept at once."""
        path = self.step_file(step)
        if path.is_file():
            log.info("%s: finished earlier, read from %s", step, path)
            self.resumed.append(step)
            return json.loads(path.read_text())
        log.info("%s: running (kept in %s when it finishes)", step, path)
        result = compute()
        write_atomically(path, result)
        return result


def plan(skip: list[str]) -> list[str]:
    """The steps to take, in the order of ``STEPS``: ours' zero-shot whenever ours or a trained peer
    runs (it mines the negatives they train on), each system unless skipped."""
    wanted = set(SYSTEMS) - set(skip)
    steps = {"ours-zero-shot": bool(wanted & {"ours", "bi-encoder", "pylate"}), "bm25": "bm25" in wanted,
             "bi-encoder": "bi-encoder" in wanted, "pylate": "pylate" in wanted, "ours-trained": "ours" in wanted}
    return [step for step in STEPS if steps[step]]


# --------------------------------------------------------------------------- report


def format_table(rows: list[dict]) -> str:
    header = f"{'system':<46}{'nDCG@10':>9}{'MRR@10':>8}{'R@100':>8}{'pairs/s':>9}{'ms/query':>10}{'bytes/doc':>11}"
    lines = [header, "-" * len(header)]
    for r in rows:
        pairs = f"{r['train_pairs_per_second']:.1f}" if r.get("train_pairs_per_second") else "-"
        lines.append(f"{r['system']:<46}{r['ndcg@10']:>9.2f}{r['mrr@10']:>8.2f}{r['recall@100']:>8.2f}{pairs:>9}"
                     f"{r['latency_ms_per_query']:>10.1f}{r['bytes_per_document']:>11,}")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> dict:
    """Against ours trained: nDCG@10 difference, and ratios of throughput, latency and storage."""
    ours = next((r for r in rows if r["system"].startswith("ours, ")), None)
    if ours is None:
        return {}
    out = {}
    for r in rows:
        if r is ours:
            continue
        entry = {"ndcg@10_ours_minus_theirs": round(ours["ndcg@10"] - r["ndcg@10"], 2),
                 "latency_ours_over_theirs": round(ours["latency_ms_per_query"] / r["latency_ms_per_query"], 2),
                 "bytes_ours_over_theirs": round(ours["bytes_per_document"] / r["bytes_per_document"], 2)}
        if r.get("train_pairs_per_second") and ours.get("train_pairs_per_second"):
            entry["train_pairs_per_second_ours_over_theirs"] = round(
                ours["train_pairs_per_second"] / r["train_pairs_per_second"], 2)
        out[r["system"]] = entry
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a BEIR folder (default: %(default)s)")
    parser.add_argument("--skip", action="append", default=[], choices=SYSTEMS, help="leave a system out (repeatable)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="Hydra overrides for ours, applied to every system's shared settings (repeatable)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=None, metavar="DIR",
                        help="each finished system's rows, for resuming (default: --out's name with .work)")
    parser.add_argument("--fresh", action="store_true", help="forget the finished systems of an earlier run")
    return parser.parse_args(argv)


def settings_of(cfg) -> dict:
    """The settings every system shares, from the experiment's config."""
    return {"model_dir": str(cfg.model.model_name_or_path), "epochs": int(cfg.trainer.max_epochs),
            "batch_size": int(cfg.data.batch_size), "lr": float(cfg.model.lr), "seed": int(cfg.seed),
            "max_length": int(cfg.data.max_length), "negatives_per_pair": int(cfg.data.max_negatives_per_pair)}


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    args = parse_args(argv)
    overrides = [f"data.path={args.data.resolve()}", *args.override]
    cfg = compose_ours(overrides)
    settings = settings_of(cfg)
    work = WorkFolder(args.work or args.out.with_suffix(".work"))
    if args.fresh:
        work.clear()
    work.check({"data": str(args.data.resolve()), "overrides": overrides, "settings": settings})
    task = Task(cfg)
    steps, results = plan(args.skip), {}
    if "ours-zero-shot" in steps:
        results["ours-zero-shot"] = work.take("ours-zero-shot", lambda: run_ours_zero_shot(task, cfg))
        # Given back whether mined now or read: the peers' examples are drawn from them.
        give_negatives(task.datamodule, results["ours-zero-shot"]["negatives"])
    examples = task.examples(settings["seed"], settings["negatives_per_pair"])
    runners = {"bm25": lambda: {"rows": [run_bm25(task)]},
               "bi-encoder": lambda: {"rows": run_bi_encoder(task, examples, settings)},
               "pylate": lambda: {"rows": [run_pylate(task, examples, settings)]},
               "ours-trained": lambda: {"rows": [run_ours_trained(overrides, results["ours-zero-shot"]["rows"][0])]}}
    for step in steps:
        if step in runners:
            results[step] = work.take(step, runners[step])
    rows = [row for step in steps for row in results[step]["rows"]]
    print(format_table(rows))
    write_json({"data": str(args.data), "settings": settings, "training_pairs": len(examples),
                "test_queries": len(task.test_ids), "documents": len(task.corpus_texts), "rows": rows,
                "ratios": ratios(rows), "overrides": overrides, "resumed": work.resumed}, args.out)


if __name__ == "__main__":
    main()
