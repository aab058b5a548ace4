"""maxsim-lightning: late-interaction (MaxSim) text models, trained with PyTorch Lightning.

The public names, loaded on first use (so that ``lightning_modules.errors`` and the other
light modules import without torch)::

    from lightning_modules import LateInteractionModel, maxsim_matrix, maxsim_pairwise
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "LateInteractionModel": "lightning_modules.model",
    "maxsim_matrix": "lightning_modules.maxsim",
    "maxsim_pairwise": "lightning_modules.maxsim",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'lightning_modules' has no attribute {name!r}")
