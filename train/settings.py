"""Settings that cannot work fail before any data or model is read, all of them in one paragraph."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from lightning_modules.errors import SettingsError


def check_settings(cfg: DictConfig) -> None:
    """Raise ``SettingsError`` naming every setting of ``cfg`` that cannot work, and why."""
    problems = []
    data, model = cfg.get("data") or {}, cfg.get("model") or {}
    for key in ("batch_size", "eval_batch_size"):
        if key in data and not _is_int_at_least(data[key], 1):
            problems.append(f"data.{key}={data[key]} (a batch holds at least 1 pair)")
    if "lr" in model and not (_is_number(model.lr) and model.lr > 0):
        problems.append(f"model.lr={model.lr} (the learning rate must be > 0, e.g. 1e-4)")
    if "warmup_ratio" in model and not (_is_number(model.warmup_ratio) and 0 <= model.warmup_ratio <= 1):
        problems.append(f"model.warmup_ratio={model.warmup_ratio} (the share of steps spent warming up, in [0, 1])")
    for key in ("checkpoint_every_n_steps", "max_nonfinite_steps"):
        if key in cfg and not _is_int_at_least(cfg[key], 1):
            problems.append(f"{key}={cfg[key]} (at least 1)")
    max_epochs = (cfg.get("trainer") or {}).get("max_epochs")
    if max_epochs is not None and max_epochs != -1 and not _is_int_at_least(max_epochs, 1):
        problems.append(f"trainer.max_epochs={max_epochs} (at least 1, or -1 with trainer.max_steps)")
    if unwritable := not_writable(Path(cfg.paths.output_dir)):
        problems.append(f"paths.output_dir={cfg.paths.output_dir} cannot be written ({unwritable}); "
                        "choose another with paths.log_dir=DIR or hydra.run.dir=DIR")
    if problems:
        raise SettingsError(
            f"{len(problems)} setting{'s' if len(problems) > 1 else ''} cannot work: " + "; ".join(problems)
            + ". Nothing was read or trained; fix them on the command line (python -m train ... KEY=VALUE)."
        )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int_at_least(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def not_writable(folder: Path) -> str | None:
    """Why ``folder`` cannot be created and written to, or None when it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        return error.strerror or type(error).__name__
    return None if os.access(folder, os.W_OK) else "permission denied"


def check_run_dir_argument(argv: list[str]) -> None:
    """A ``hydra.run.dir=DIR`` on the command line that cannot be written: one paragraph and exit
    status 2, before Hydra tries to create it (its own failure is a traceback). The run folder
    Hydra picks by itself is checked where it is chosen (``train/resolvers.py: run_dir``)."""
    for argument in argv:
        key, _, value = argument.partition("=")
        if key.lstrip("+") == "hydra.run.dir" and value:
            folder = value.strip("'\"")
            if problem := not_writable(Path(folder)):
                print(f"error: hydra.run.dir={folder} cannot be written ({problem}); choose another folder",
                      file=sys.stderr)
                sys.exit(2)
