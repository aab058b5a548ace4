"""Reading the STS Benchmark: ``{train,validation,test}.csv`` (``sentence1,sentence2,score``, score
0-5) from a local folder or, when there is none, the hub dataset ``sentence-transformers/stsb``
(score already 0-1)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lightning_modules.data.reading import ScoredPairs, read_scored_pairs_csv
from lightning_modules.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def load_stsb_splits(
    data_dir: str | Path, hub_id: str | None, score_min: float = 0.0, score_max: float = 5.0
) -> dict[str, ScoredPairs]:
    """Read the three splits from ``data_dir``, or from the hub when the folder is absent."""
    folder = Path(data_dir).expanduser()
    if folder.is_dir():
        missing = [s for s in SPLITS if not (folder / f"{s}.csv").is_file()]
        if missing:
            raise DataError(
                f"STS-B folder {folder.resolve()} lacks {', '.join(s + '.csv' for s in missing)}; "
                f"it must hold {', '.join(s + '.csv' for s in SPLITS)} with columns sentence1,sentence2,score."
            )
        splits = {s: read_scored_pairs_csv(folder / f"{s}.csv", score_min, score_max) for s in SPLITS}
        log.info("STS-B from %s: %s", folder.resolve(), {s: len(p) for s, p in splits.items()})
        return splits
    if hub_id is None:
        raise DataError(_missing_folder_message(folder, "no hub dataset is configured (data.hub_id=null)"))
    try:
        return _load_hub_splits(hub_id)
    except Exception as error:  # noqa: BLE001 - any hub failure gets the same advice
        reason = f"the hub dataset {hub_id!r} could not be loaded either ({error.__class__.__name__}: {error})"
        raise DataError(_missing_folder_message(folder, reason)) from error


def _load_hub_splits(hub_id: str) -> dict[str, ScoredPairs]:
    import datasets  # lazily: only the hub path needs it

    splits = {}
    for split in SPLITS:
        table = datasets.load_dataset(hub_id, split=split)
        splits[split] = ScoredPairs(list(table["sentence1"]), list(table["sentence2"]), [float(s) for s in table["score"]],
                                    [f"hub dataset {hub_id}, split {split}, row {i}" for i in range(len(table))])
        bad = [i for i, s in enumerate(splits[split].scores) if not 0.0 <= s <= 1.0]
        if bad:
            raise DataError(f"hub dataset {hub_id!r}, split {split}, row {bad[0]}: score outside [0, 1]")
    log.info("STS-B from the hub dataset %s: %s", hub_id, {s: len(p) for s, p in splits.items()})
    return splits


def _missing_folder_message(folder: Path, reason: str) -> str:
    return (
        f"No STS-B data folder at {folder.resolve()}, and {reason}. Put train.csv, validation.csv and test.csv "
        "(columns sentence1,sentence2,score) in a folder and point to it with data.data_dir=/path/to/stsb, "
        "or set DATA_DIR to the folder that contains stsb/."
    )


def seeded_subset(pairs: ScoredPairs, limit: int | None) -> ScoredPairs:
    """The same ``limit`` pairs every time (a fixed-seed permutation); all of them when ``limit`` is None."""
    if limit is None or limit >= len(pairs):
        return pairs
    generator = torch.Generator().manual_seed(0)
    return pairs.subset(torch.randperm(len(pairs), generator=generator)[:limit].tolist())
