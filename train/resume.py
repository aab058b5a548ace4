"""``resume=RUN_FOLDER``: continue a run in its own folder from its ``checkpoints/last.ckpt``.

Never a silent fresh start: a folder without a checkpoint, or a config that differs from the
run's (other than the settings a resume may change), is an error that says what to do.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_modules.callbacks.checkpointing import LAST
from lightning_modules.errors import SettingsError

# Settings a resumed run may change: how long it trains, how often it saves, what it logs,
# where things live, and what it does after training. Anything else changes the run itself.
MAY_CHANGE = (
    "resume", "trainer.max_epochs", "trainer.min_epochs", "trainer.max_steps", "trainer.max_time",
    "checkpoint_every_n_steps", "max_nonfinite_steps", "test", "export", "logger", "paths",
    "data.num_workers", "trainer.enable_progress_bar", "callbacks.run_checkpoint.every_n_steps",
    "callbacks.nonfinite_guard.max_consecutive", "encoding_cache", "trainer.precision",
)


def resumable_run(folder) -> Path:
    """``folder`` as an absolute path, after checking that it holds a run that can be resumed."""
    run = Path(str(folder)).expanduser().resolve()
    if not run.is_dir():
        raise SettingsError(f"resume={folder}: no such folder (give the run folder, logs/<task>/runs/<time>)")
    if not last_checkpoint(run).is_file():
        found = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")) if (run / "checkpoints").is_dir() else []
        raise SettingsError(
            f"resume={folder}: no checkpoints/{LAST} in that folder"
            + (f" (it has {', '.join(found)}: a best checkpoint holds no training position)" if found else "")
            + ". A run writes it every checkpoint_every_n_steps steps and at each epoch's end; one killed "
              "before its first save cannot be resumed: start it again without resume="
        )
    if not (run / "config_resolved.yaml").is_file():
        raise SettingsError(f"resume={folder}: no config_resolved.yaml in that folder: not a run folder of ours")
    return run


def checkpoint_to_resume(cfg: DictConfig, run: Path) -> Path | None:
    """The checkpoint that the run in folder ``run`` continues from, None for a fresh run.

    With ``resume=``: that folder's ``last.ckpt`` (Hydra's run folder is the same one:
    ``train/resolvers.py: run_dir``). Without it, in a SLURM job that SLURM requeued
    (``SLURM_RESTART_COUNT`` > 0): the job's run starts again in its own folder (named after the
    job and the command) and continues from the ``last.ckpt`` its earlier start wrote. Either
    way the config must be the run's (``check_same_run``).
    """
    if cfg.get("resume"):
        if resumable_run(cfg.resume) != run.resolve():
            raise SettingsError(f"resume={cfg.resume} continues that run in its own folder, but hydra.run.dir "
                                f"names another ({run}): leave hydra.run.dir out when resuming")
    elif not (slurm_requeued() and last_checkpoint(run).is_file()):
        return None
    check_same_run(cfg, run)
    continue_wandb_run(cfg, run)
    return last_checkpoint(run)


def slurm_run_name(overrides: list[str]) -> str | None:
    """``slurm-<job id>-<digest of the overrides>`` inside a SLURM job that Lightning runs under its
    ``SLURMEnvironment``, else None.

    A requeued job keeps its id and its command: its run comes back to the folder its first start
    wrote to. Other commands of the same job (a loop over seeds) get folders of their own.
    """
    from lightning_fabric.plugins.environments import SLURMEnvironment  # lazily: a heavy import

    if not SLURMEnvironment.detect():
        return None
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "resume="))]
    return f"slurm-{job}-{hashlib.sha1(chr(0).join(kept).encode()).hexdigest()[:8]}"


def slurm_requeued() -> bool:
    """Whether this is a SLURM job that SLURM requeued (it starts the same command again)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def last_checkpoint(run: Path) -> Path:
    return run / "checkpoints" / LAST


def check_same_run(cfg: DictConfig, run: Path) -> None:
    """Raise unless ``cfg`` is the config of the run in ``run``, up to the settings of ``MAY_CHANGE``."""
    # As composed, before interpolations resolve: a run whose data or project moved (a data folder
    # staged elsewhere for each job, DATA_DIR, paths.*) is still the same run.
    composed = run / ".hydra" / "config.yaml"
    if composed.is_file():
        before = _flat(OmegaConf.to_container(OmegaConf.load(composed), resolve=False))
        now = _flat(OmegaConf.to_container(cfg, resolve=False))
    else:  # hydra.output_subdir=null: only the resolved config was kept
        before = _flat(OmegaConf.to_container(OmegaConf.load(run / "config_resolved.yaml"), resolve=False))
        now = _flat(OmegaConf.to_container(cfg, resolve=True))
    differ = sorted(
        key for key in before.keys() | now.keys()
        if before.get(key, "<unset>") != now.get(key, "<unset>") and not _may_change(key)
    )
    if differ:
        shown = "; ".join(f"{key}: {before.get(key, '<unset>')!r} in the run, {now.get(key, '<unset>')!r} now"
                          for key in differ[:8])
        raise SettingsError(
            f"resume={run}: this command's config differs from the run's in {len(differ)} setting(s): {shown}"
            + ("; ..." if len(differ) > 8 else "")
            + f". Give the run's own overrides again (they are in {run}/.hydra/overrides.yaml), changing only "
              f"what a resume may change ({', '.join(MAY_CHANGE[1:])})."
        )


def saved_wandb_run_id(run: Path) -> str | None:
    """The W&B run id that the run's last checkpoint recorded, if it logged to W&B."""
    checkpoint = torch.load(last_checkpoint(run), map_location="cpu", weights_only=True, mmap=True)
    return checkpoint.get("wandb_run_id")


def continue_wandb_run(cfg: DictConfig, run: Path) -> None:
    """Make ``cfg``'s W&B logger (``logger=wandb``) continue the W&B run that ``run`` logged to, not start a new one."""
    wandb = (cfg.get("logger") or {}).get("wandb")
    if wandb is None:  # no W&B logger: the checkpoint need not be opened
        return
    run_id = saved_wandb_run_id(run)
    if run_id:
        with open_dict(cfg):
            wandb.id = run_id
            wandb.resume = "allow"


def resume_command(run: Path, overrides: list[str]) -> str:
    """The command that continues ``run``: this one's overrides, with ``resume=`` set to the run."""
    kept = [o for o in overrides if not o.startswith(("resume=", "+resume="))]
    return shlex.join([Path(sys.executable).name, "-m", "train", *kept, f"resume={run}"])


def _may_change(key: str) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in MAY_CHANGE)


def _flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(_flat(value, f"{prefix}{key}."))
        return flat or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}
