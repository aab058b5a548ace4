"""What a task of ``python -m train.evaluate tasks=[...]`` names.

A retrieval task is a retrieval folder (a corpus, queries and judgements: BEIR's layout, or
the other shapes ``lightning_modules.data.beir`` reads) or ``BeIR/<name>``. An STS task is a CSV/TSV/JSONL/Parquet file, a folder holding ``<split>.csv``
(as the shared STS-B folders do), a Hugging Face dataset id, or one of MTEB's STS task names
(hub access needed); its columns are detected as for training (``sentence1/sentence2/score``
and the other common names).
"""

from __future__ import annotations

import os
from pathlib import Path

from lightning_modules.data.beir import LAYOUT, is_beir_folder
from lightning_modules.data.formats import TableSpec
from lightning_modules.errors import DataError, SettingsError

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


def task_kind(task: str, split: str = "test") -> tuple[str, str]:
    """``"retrieval"`` or ``"STS"``, and why the task was taken for that kind (a phrase for the log)."""
    path = Path(task).expanduser()
    if is_beir_folder(path):
        return "retrieval", "a retrieval folder: a corpus file and a queries file found"
    if task.startswith("BeIR/"):
        return "retrieval", "a BeIR/<name> hub dataset"
    if task in MTEB_STS:
        return "STS", f"MTEB's {task}: the hub dataset {MTEB_STS[task]}"
    if path.is_dir():
        return "STS", f"a folder without a corpus and a queries file (corpus.jsonl, .csv, ...): its {split}.csv is read"
    if path.is_file():
        return "STS", "a table file: its two text columns and score"
    return "STS", "no such local file or folder: read as a Hugging Face dataset id"


def task_parts(task: str) -> tuple[str, ...]:
    """Where a task is, ending with its display name: a local file or folder's absolute path (a
    file's name without its suffix; symlinks kept as named), ``BeIR/<name>`` as its two parts, an
    MTEB name or any other hub id whole."""
    if task in MTEB_STS:
        return (task,)
    path = Path(task).expanduser()
    if path.exists():
        path = Path(os.path.abspath(path))
        return (*path.parent.parts, path.name if path.is_dir() else path.stem)
    if task.startswith("BeIR/"):
        return tuple(task.split("/"))
    return (path.stem if path.suffix else task,)


def task_names(tasks: list[str]) -> list[str]:
    """A display name for each task, unique among them: its own (``task_parts``), or, where two
    tasks share one (``a/scifact``, ``b/scifact``), the shortest ending of each one's path that no
    other shares. The names key the tables, the JSON and the run files, where a clash would
    overwrite a row.

    Raises:
        SettingsError: two tasks are the same (given twice), or differ only in a file's suffix.
    """
    parts = [task_parts(task) for task in tasks]
    names = [p[-1] for p in parts]
    for name in set(names):
        clash = [i for i, n in enumerate(names) if n == name]
        if len(clash) == 1:
            continue
        paths = [parts[i] for i in clash]
        if len(set(paths)) < len(paths):
            same = [tasks[i] for i in clash]
            raise SettingsError(f"tasks=: {', '.join(same)} would all be reported as {name!r}: the same task given "
                                "twice, or files that differ only in their suffix; give each task once (rename a file "
                                "if they differ)")
        for i, path in zip(clash, paths):
            others = [other for other in paths if other != path]
            # The shortest ending no other path shares; the whole path when it ends another one
            # (BeIR/scifact and /data/BeIR/scifact): that one's name is then the longer.
            depth = next((k for k in range(2, len(path)) if all(o[-k:] != path[-k:] for o in others)), len(path))
            names[i] = Path(*path[-depth:]).as_posix()
    return names


def resolve_sts_task(task: str, split: str = "test") -> tuple[str, TableSpec]:
    """An STS task's display name (``task_parts``) and where its table is."""
    name = task_parts(task)[-1]
    if task in MTEB_STS:
        return name, TableSpec(MTEB_STS[task], None, split)
    path = Path(task).expanduser()
    if path.is_dir():
        file = path / f"{split}.csv"
        if not file.is_file():
            raise DataError(f"{path}: a task folder must hold {split}.csv (an STS task; the split evaluated: "
                            f"split={split}), or be a retrieval folder: {LAYOUT}; it holds neither")
        return name, TableSpec(str(file), None, split)
    return name, TableSpec(task, None, split)
