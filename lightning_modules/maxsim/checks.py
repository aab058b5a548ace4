"""What ``maxsim_pairwise`` and ``maxsim_matrix`` refuse, with a ``ValueError`` that says why."""

from __future__ import annotations

import math

import torch

from lightning_modules.maxsim.dense import DIRECTIONS, REDUCTIONS


def check_inputs(a, a_mask, b, b_mask, direction, reduction, temperature, paired):
    """Options, shapes ``(B, L, D)`` and ``(B, L)``, bool masks, a real token in every text,
    floating-point vectors of one size D > 0 and of one dtype (outside autocast); ``paired``:
    as many texts in ``a`` as in ``b``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
    if temperature is not None and not (number and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be None (hard max) or a finite number > 0, got {temperature!r}")
    for name, x, m in (("a", a, a_mask), ("b", b, b_mask)):
        if x.dim() != 3:
            raise ValueError(f"{name} must be (B, L, D) token vectors, got shape {tuple(x.shape)}")
        if m.shape != x.shape[:2]:
            raise ValueError(f"{name}_mask must be (B, L) = {tuple(x.shape[:2])}, got {tuple(m.shape)}")
        if m.dtype != torch.bool:
            raise ValueError(f"{name}_mask must be a bool tensor, got {m.dtype}")
        empty = (~m.any(dim=-1)).nonzero().flatten()
        if empty.numel():
            raise ValueError(
                f"text(s) {empty.tolist()} of {name} have no token left to match (every position is masked); "
                "MaxSim is undefined for an empty text"
            )
        if not x.is_floating_point():
            raise ValueError(f"{name} must hold floating-point token vectors, got {x.dtype}")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"a and b must share the vector size D, got {a.shape[-1]} and {b.shape[-1]}")
    if a.shape[-1] == 0:
        raise ValueError("token vectors must have at least one dimension, got D = 0")
    # Under autocast the products run in its dtype whatever the inputs' (as the einsum would).
    if a.dtype != b.dtype and not torch.is_autocast_enabled(a.device.type):
        raise ValueError(f"a and b must share a dtype (or run under torch.autocast), got {a.dtype} and {b.dtype}")
    if paired and a.shape[0] != b.shape[0]:
        raise ValueError(f"maxsim_pairwise needs as many texts in a as in b, got {a.shape[0]} and {b.shape[0]}")
