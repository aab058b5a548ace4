"""What a task of ``python -m train.evaluate tasks=[...]`` names.

A retrieval task is a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/``) or
``BeIR/<name>``. An STS task is a CSV/TSV/JSONL/Parquet file, a folder holding ``<split>.csv``
(as the shared STS-B folders do), a Hugging Face dataset id, or one of MTEB's STS task names
(hub access needed); its columns are detected as for training (``sentence1/sentence2/score``
and the other common names).
"""

from __future__ import annotations

from pathlib import Path

from lightning_modules.data.formats import TableSpec
from lightning_modules.errors import DataError

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


def is_retrieval_task(task: str) -> bool:
    """Whether the task is a BEIR folder or a ``BeIR/<name>`` hub id."""
    return (Path(task).expanduser() / "corpus.jsonl").is_file() or task.startswith("BeIR/")


def resolve_sts_task(task: str, split: str = "test") -> tuple[str, TableSpec]:
    """An STS task's display name and where its table is."""
    if task in MTEB_STS:
        return task, TableSpec(MTEB_STS[task], None, split)
    path = Path(task).expanduser()
    if path.is_dir():
        file = path / f"{split}.csv"
        if not file.is_file():
            raise DataError(f"{path}: a task folder must hold {split}.csv (the split evaluated: split={split})")
        return path.name, TableSpec(str(file), None, split)
    return (path.stem if path.suffix else task), TableSpec(task, None, split)
