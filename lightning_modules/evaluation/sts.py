"""STS evaluation of any late-interaction model: Spearman and Pearson of MaxSim against gold scores.

A task is a CSV/TSV/JSONL/Parquet file, a folder holding ``<split>.csv`` (as the
shared STS-B folders do), a Hugging Face dataset id, or one of MTEB's STS task
names (hub access needed). Columns are detected as for training
(``sentence1/sentence2/score`` and the other common names).
"""

from __future__ import annotations

from pathlib import Path

from scipy.stats import pearsonr, spearmanr

from lightning_modules.data.columns import resolve_columns
from lightning_modules.errors import DataError
from lightning_modules.data.formats import TableSpec, read_table
from lightning_modules.data.pairs import build_examples
from lightning_modules.model import LateInteractionModel

# MTEB's English STS tasks and the hub datasets they read (test split).
MTEB_STS = {
    "STSBenchmark": "mteb/stsbenchmark-sts",
    "STS12": "mteb/sts12-sts",
    "STS13": "mteb/sts13-sts",
    "STS14": "mteb/sts14-sts",
    "STS15": "mteb/sts15-sts",
    "STS16": "mteb/sts16-sts",
    "SICK-R": "mteb/sickr-sts",
    "BIOSSES": "mteb/biosses-sts",
}


def resolve_task(task: str, split: str = "test") -> tuple[str, TableSpec]:
    """A task's display name and where its table is."""
    if task in MTEB_STS:
        return task, TableSpec(MTEB_STS[task], None, split)
    path = Path(task).expanduser()
    if path.is_dir():
        file = path / f"{split}.csv"
        if not file.is_file():
            raise DataError(f"{path}: a task folder must hold {split}.csv (the split evaluated: split={split})")
        return path.name, TableSpec(str(file), None, split)
    return (path.stem if path.suffix else task), TableSpec(task, None, split)


def evaluate_sts(model: LateInteractionModel, tasks: list[str], split: str = "test", batch_size: int = 64) -> dict:
    """Spearman and Pearson (x100) of the model's scores on each task, and their means.

    Every row counts (duplicates too, as benchmarks define them); a row with an empty
    text or a bad score is an error naming the file, row and column.
    """
    results = {}
    for task in tasks:
        name, spec = resolve_task(task, split)
        table = read_table(spec)
        mapping = resolve_columns(table.source, table.columns, setting=None, read_as=table.read_as)
        if mapping.score is None:
            raise DataError(f"{table.source}: no score column found (columns: {table.columns}); STS needs one")
        examples, report = build_examples(table, mapping, "graded", split, keep_duplicates=True)
        if report.dropped:
            raise DataError(f"{table.source}: rows that cannot be scored:\n  {report.summary()}")
        predicted = model.score(examples.text_a, examples.text_b, batch_size=batch_size).numpy()
        results[name] = {
            "spearman": round(100 * float(spearmanr(predicted, examples.targets).statistic), 2),
            "pearson": round(100 * float(pearsonr(predicted, examples.targets).statistic), 2),
            "pairs": len(examples),
            "source": table.source,
        }
    mean = {m: round(sum(r[m] for r in results.values()) / len(results), 2) for m in ("spearman", "pearson")}
    return {"tasks": results, "mean": mean}


def format_table(evaluation: dict) -> str:
    """A printable table: one task a line, then the mean."""
    lines = [f"{'task':<28}{'pairs':>8}{'spearman':>10}{'pearson':>10}", "-" * 56]
    for name, r in evaluation["tasks"].items():
        lines.append(f"{name:<28}{r['pairs']:>8}{r['spearman']:>10.2f}{r['pearson']:>10.2f}")
    mean = evaluation["mean"]
    lines += ["-" * 56, f"{'mean':<28}{'':>8}{mean['spearman']:>10.2f}{mean['pearson']:>10.2f}"]
    return "\n".join(lines)
