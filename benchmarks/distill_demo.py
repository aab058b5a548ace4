"""Score distillation on data we have: our trained SciFact retriever teaches a smaller-vector student.

* **Teacher**: the SciFact retriever trained by ``python -m train +experiment=scifact`` (MiniLM, its
  own 384-d token vectors, a2b mean MaxSim), exported (``--teacher``).
* **Data**: a seeded slice of SciFact (``--data``, BEIR's layout), written to ``WORK/data`` as a
  BEIR folder: ``--train-queries`` of its training queries (``qrels/train.tsv``), of which
  ``--validation-queries`` are held out as ``qrels/dev.tsv`` (they pick the student's checkpoint and
  get no teacher scores), ``--test-queries`` of its test queries (``qrels/test.tsv``), and a corpus
  of every document judged for a kept query plus seeded others, ``--corpus`` documents in all.
* **Teacher scores**: ``python -m train.teacher_scores`` ranks each training query against the
  slice's corpus with the teacher's exact search and keeps its ``--k`` best (PyLate's rows).
* **Student**: ``python -m train +experiment=distill``, MiniLM with a fresh ``--projection-dim``
  projection (128 by default, 64 for a smaller index), trained on the teacher's scores with
  ``--n-ways`` candidates a query: KL with the student's and teacher's scores on one scale
  (``--temperature`` for both, no min-max normalisation: the teacher scores like the student, a mean
  MaxSim in [-1, 1]; ``--normalize`` gives PyLate's recipe instead).
* **Measured**: test nDCG@10, MRR@10, Recall@10 and Recall@100 (x100) of the slice's test queries
  against its whole corpus: the teacher by ``python -m train.evaluate``, the student zero-shot (its
  random projection) and distilled from its run's ``results.json`` (the same evaluator); and the
  size of the index's vectors: float16, ``2 * dim`` bytes a token, times the corpus's tokens (an
  index on disk adds the texts and ids).

Why a SciFact slice and not STS-B: distillation teaches a ranking over each query's candidates,
which a retrieval set has (queries, a corpus, the teacher's top ``k``) and STS-B's sentence pairs do
not; and why a slice: on a 2-core CPU, encoding SciFact's 5,183 abstracts takes 5-15 minutes, and
this demonstration encodes the corpus four times (teacher scores, teacher evaluation, the student
zero-shot and trained). The defaults (400 training queries, 300 test queries, 2,000 documents)
encode 2,000 documents four times and train on 350 queries with 8 documents each: tens of minutes
on such a CPU (not measured yet; the smoke test below took 2 min 15 s on the 2-core machine, with
another job on one core); ``--corpus 0 --train-queries 0`` uses all of SciFact. The slice's
figures are not SciFact's (fewer distractors: higher), and are comparable only with each other.

    python -m benchmarks.distill_demo --teacher RUN/model --work /tmp/distill                      # the default slice
    python -m benchmarks.distill_demo --teacher RUN/model --work /tmp/distill_smoke --train-queries 40 --validation-queries 10 \\
        --test-queries 20 --corpus 120 --max-length 128 --k 16 --n-ways 4   # the smoke test
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "scifact"
METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100")

log = logging.getLogger("distill_demo")


# ---- the slice ----------------------------------------------------------------------------------


def _qrels(path: Path) -> dict[str, dict[str, int]]:
    judged: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as f:
        for row in list(csv.reader(f, delimiter="\t"))[1:]:
            judged.setdefault(row[0], {})[row[1]] = int(row[2])
    return judged


def _write_qrels(path: Path, judged: dict[str, dict[str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["query-id", "corpus-id", "score"])
        writer.writerows([q, d, g] for q, docs in judged.items() for d, g in docs.items())


def write_slice(data: Path, out: Path, train_queries: int, validation_queries: int, test_queries: int,
                corpus_size: int, seed: int) -> dict:
    """A seeded SciFact slice as a BEIR folder (train, dev and test qrels); what it holds."""
    rng = random.Random(seed)
    train, test = _qrels(data / "qrels" / "train.tsv"), _qrels(data / "qrels" / "test.tsv")
    train_ids, test_ids = sorted(train), sorted(test)
    rng.shuffle(train_ids)
    rng.shuffle(test_ids)
    train_ids = train_ids[:train_queries] if train_queries else train_ids
    test_ids = test_ids[:test_queries] if test_queries else test_ids
    dev_ids, train_ids = train_ids[:validation_queries], train_ids[validation_queries:]
    splits = {"train": {q: train[q] for q in sorted(train_ids)}, "dev": {q: train[q] for q in sorted(dev_ids)},
              "test": {q: test[q] for q in sorted(test_ids)}}
    documents = [json.loads(line) for line in (data / "corpus.jsonl").open(encoding="utf-8") if line.strip()]
    judged = {d for split in splits.values() for docs in split.values() for d in docs}
    others = [doc["_id"] for doc in documents if doc["_id"] not in judged]
    rng.shuffle(others)
    room = max(corpus_size - len(judged), 0) if corpus_size else len(others)
    kept = judged | set(others[:room])
    queries = [json.loads(line) for line in (data / "queries.jsonl").open(encoding="utf-8") if line.strip()]
    used = {q for split in splits.values() for q in split}
    out.mkdir(parents=True, exist_ok=True)
    with (out / "corpus.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(doc, ensure_ascii=False) + "\n" for doc in documents if doc["_id"] in kept)
    with (out / "queries.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(q, ensure_ascii=False) + "\n" for q in queries if q["_id"] in used)
    for split, judged_split in splits.items():
        _write_qrels(out / "qrels" / f"{split}.tsv", judged_split)
    return {"source": str(data), "documents": len(kept), "judged_documents": len(judged),
            "queries": {split: len(judged_split) for split, judged_split in splits.items()}, "seed": seed}


# ---- the commands ----------------------------------------------------------------------------


def run_command(arguments: list[str], what: str, cwd: Path) -> float:
    """Run ``python -m ...`` as a user would; its wall time. Its output goes to WORK/logs/<what>.log."""
    command = [sys.executable, "-m", *arguments]
    log_file = cwd / "logs" / f"{what}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log.info("%s: %s", what, " ".join(command[1:]))
    start = time.perf_counter()
    with log_file.open("w", encoding="utf-8") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "".join(log_file.read_text(encoding="utf-8").splitlines(keepends=True)[-30:])
        raise SystemExit(f"{what} failed (exit status {done.returncode}); its log: {log_file}\n{tail}")
    log.info("%s: done in %.0f s", what, seconds)
    return seconds


def corpus_tokens(folder: Path, model_path: Path, max_length: int) -> int:
    """Token vectors an index of the folder's corpus holds: every token of each document, special ones
    included, at most ``max_length`` (the model's own tokenisation; no token is skipped by default)."""
    from lightning_modules.data.beir import read_corpus
    from lightning_modules.tokenization import load_tokenizer, tokenize_texts

    ids, _ = tokenize_texts(load_tokenizer(str(model_path)), read_corpus(str(folder)).texts, max_length)
    return sum(len(row) for row in ids)


def _row(name: str, dim: int, metrics: dict, tokens: int) -> dict:
    return {"system": name, "dim": dim, **{m: round(float(metrics[m]), 2) for m in METRICS},
            "bytes_per_token": 2 * dim, "vectors_mib": round(tokens * 2 * dim / 2**20, 2)}


def format_table(rows: list[dict]) -> str:
    header = (f"{'system':<26}{'dim':>5}{'ndcg@10':>9}{'mrr@10':>8}{'R@10':>8}{'R@100':>8}{'B/token':>9}"
              f"{'vectors MiB':>12}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['system']:<26}{r['dim']:>5}{r['ndcg@10']:>9.2f}{r['mrr@10']:>8.2f}{r['recall@10']:>8.2f}"
                     f"{r['recall@100']:>8.2f}{r['bytes_per_token']:>9}{r['vectors_mib']:>12.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True,
                        help="the teacher's export folder: the model/ folder of a +experiment=scifact run")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SciFact in BEIR's layout")
    parser.add_argument("--work", type=Path, required=True, help="where the slice, scores, runs and logs go")
    parser.add_argument("--train-queries", type=int, default=400, help="training queries kept, dev included (0: all)")
    parser.add_argument("--validation-queries", type=int, default=50, help="of them, held out as the dev split")
    parser.add_argument("--test-queries", type=int, default=300, help="test queries kept (0: all 300)")
    parser.add_argument("--corpus", type=int, default=2000, help="documents in the slice, judged ones first (0: all)")
    parser.add_argument("--k", type=int, default=32, help="teacher candidates a query")
    parser.add_argument("--n-ways", type=int, default=8, help="candidates a query in each training batch")
    parser.add_argument("--projection-dim", type=int, default=128, help="the student's token vector size")
    parser.add_argument("--temperature", type=float, default=0.05, help="of the student's and the teacher's scores")
    parser.add_argument("--normalize", action="store_true", help="PyLate's recipe: min-max normalise, temperatures 1")
    parser.add_argument("--loss", choices=("kl", "margin_mse"), default="kl")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8, help="queries a training batch")
    parser.add_argument("--max-length", type=int, default=256, help="document tokens (the teacher's: 256)")
    parser.add_argument("--seed", type=int, default=0, help="of the slice")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a further override of the student's run (model.lr=1e-4, ...); repeatable")
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default WORK/distill_demo.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not (args.teacher / "maxsim_lightning.json").is_file():
        raise SystemExit(f"--teacher {args.teacher}: not a maxsim-lightning export (no maxsim_lightning.json)")
    teacher_settings = json.loads((args.teacher / "maxsim_lightning.json").read_text())
    teacher_dim = int(json.loads((args.teacher / "1_Dense" / "config.json").read_text())["out_features"])

    data = work / "data"
    slice_info = write_slice(args.data, data, args.train_queries, args.validation_queries, args.test_queries,
                             args.corpus, args.seed)
    log.info("slice: %s", slice_info)
    seconds = {}
    scores = work / "teacher_scores.jsonl"
    seconds["teacher_scores"] = run_command(
        ["train.teacher_scores", f"model={args.teacher}", f"queries={data}", "split=train", f"corpus={data}",
         f"out={scores}", f"k={args.k}"], "teacher_scores", work)
    teacher_eval = work / "teacher_evaluation.json"
    seconds["teacher_evaluation"] = run_command(
        ["train.evaluate", f"model={args.teacher}", f"tasks=[{data}]", "split=test", f"out={teacher_eval}",
         f"max_length={args.max_length}"], "teacher_evaluation", work)
    temperature = 1.0 if args.normalize else args.temperature
    student_run = work / "student"
    seconds["student_training"] = run_command(
        ["train", "+experiment=distill", f"data.queries={data}/queries.jsonl", f"data.corpus={data}/corpus.jsonl",
         f"data.scores={scores}", f"data.eval_path={data}", "data.validation_split=dev", "data.test_split=test",
         f"data.n_ways={args.n_ways}", f"data.batch_size={args.batch_size}", f"data.max_length={args.max_length}",
         f"model.projection_dim={args.projection_dim}", f"model.distillation_loss={args.loss}",
         f"model.distillation_normalize_scores={str(args.normalize).lower()}",
         f"model.distillation_student_temperature={temperature}",
         f"model.distillation_teacher_temperature={temperature}", f"trainer.max_epochs={args.epochs}",
         "~logger", f"hydra.run.dir={student_run}", *args.set], "student_training", work)

    teacher = json.loads(teacher_eval.read_text())["retrieval"][data.name]
    student = json.loads((student_run / "results.json").read_text())
    tokens = corpus_tokens(data, args.teacher, args.max_length)
    rows = [_row(f"teacher ({teacher_dim}-d)", teacher_dim, teacher, tokens),
            _row(f"student zero-shot ({args.projection_dim}-d)", args.projection_dim,
                 {m: student["zero_shot"][f"test/{m}"] for m in METRICS}, tokens),
            _row(f"student distilled ({args.projection_dim}-d)", args.projection_dim,
                 {m: student[f"test/{m}"] for m in METRICS}, tokens)]
    print(format_table(rows))
    distilled = rows[2]
    print(f"student/teacher: nDCG@10 {distilled['ndcg@10'] / max(rows[0]['ndcg@10'], 1e-9):.3f}, "
          f"index bytes {distilled['bytes_per_token'] / rows[0]['bytes_per_token']:.3f} "
          f"({tokens} token vectors in the slice's corpus, float16)")
    result = {"slice": slice_info, "teacher": str(args.teacher), "teacher_text": teacher_settings.get("text"),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "corpus_tokens": tokens, "rows": rows, "seconds": {k: round(v, 1) for k, v in seconds.items()},
              "student_run": str(student_run), "student_results": str(student_run / "results.json")}
    write_json(result, args.out or work / "distill_demo.json")
    return result


if __name__ == "__main__":
    main()
