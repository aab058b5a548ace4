"""STS evaluation of any late-interaction model: Spearman and Pearson of MaxSim against gold scores."""

from __future__ import annotations

from scipy.stats import pearsonr, spearmanr

from lightning_modules.data.columns import resolve_columns
from lightning_modules.errors import DataError
from lightning_modules.data.formats import TableSpec, read_table
from lightning_modules.data.pairs import build_examples
from lightning_modules.model import LateInteractionModel


def evaluate_sts(model: LateInteractionModel, tables: dict[str, TableSpec], batch_size: int = 64) -> dict:
    """Spearman and Pearson (x100) of the model's scores on each named table, and their means.

    Columns are detected as for training (``sentence1/sentence2/score`` and the other common
    names). Every row counts (duplicates too, as benchmarks define them); a row with an empty
    text or a bad score is an error naming the file, row and column.
    """
    results = {}
    for name, spec in tables.items():
        table = read_table(spec)
        mapping = resolve_columns(table.source, table.columns, setting=None, read_as=table.read_as)
        if mapping.score is None:
            raise DataError(f"{table.source}: no score column found (columns: {table.columns}); STS needs one")
        examples, report = build_examples(table, mapping, "graded", spec.split, keep_duplicates=True)
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
