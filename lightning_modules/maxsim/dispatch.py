"""Which backend scores ``maxsim_matrix``: the backend names, the ``auto`` policy, the hand-offs
and the engine settings of the training module (``model.maxsim``).

``resolve_backend`` is the one place that decides; docs/engine.md, "The auto policy", says why
it decides so and where its limits come from.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import torch

from lightning_modules.errors import SettingsError
from lightning_modules.maxsim import late_interaction_kernels
from lightning_modules.maxsim.chunked import ChunkedMaxSim
from lightning_modules.maxsim.dense import dense_matrix, token_weights, zero_masked

BACKENDS = ("auto", "dense", "chunked", "triton", "late-interaction-kernels")
# auto: the largest (Ba, Bb, La, Lb) similarity tensor it leaves to dense, on a CPU and on a GPU
# without the triton kernels (docs/engine.md, "The auto policy").
AUTO_DENSE_LIMIT_BYTES = 12 * 2**20
AUTO_DENSE_LIMIT_BYTES_GPU = 64 * 2**20
# How the MaxSim engine computes in-batch score matrices (``model.maxsim`` in config).
ENGINE_DEFAULTS = {"backend": "auto", "chunk_budget_mb": 16}


def triton_installed() -> bool:
    """Whether the triton package can be imported (it ships with CUDA builds of torch)."""
    return importlib.util.find_spec("triton") is not None


def check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(backend, a, b, temperature):
    """The backend that runs: ``dense``, ``chunked``, ``triton`` or ``late-interaction-kernels``.

    A smooth max (``temperature``) is dense's whatever was asked. ``triton`` hands what its
    kernels do not take to chunked, and refuses without Triton or CUDA tensors (or
    ``TRITON_INTERPRET=1``); ``late-interaction-kernels`` refuses what the peer cannot take.
    ``auto``: docs/engine.md, "The auto policy".
    """
    if temperature is not None:
        return "dense"  # smooth max: every token gets gradient, nothing to save by keeping argmaxes
    if backend == "late-interaction-kernels":
        late_interaction_kernels.check(a, b)
        return backend
    if backend == "triton":
        if not triton_installed():
            raise ValueError("backend='triton' needs the triton package: pip install 'maxsim-lightning[triton]'")
        from lightning_modules.maxsim import triton as triton_backend

        if not triton_backend.runs_on(a):
            raise ValueError("backend='triton' needs CUDA tensors (TRITON_INTERPRET=1 runs it on the CPU, for tests)")
        return "triton" if triton_backend.handles(a, b) else "chunked"
    if backend == "auto" and a.is_cuda and triton_installed() and torch.cuda.get_device_capability(a.device) >= (8, 0):
        from lightning_modules.maxsim import triton as triton_backend

        if triton_backend.handles(a, b):
            return "triton"
    if backend == "auto":
        size = a.shape[0] * b.shape[0] * a.shape[1] * b.shape[1] * a.element_size()
        limit = AUTO_DENSE_LIMIT_BYTES_GPU if a.is_cuda else AUTO_DENSE_LIMIT_BYTES
        return "chunked" if size > limit else "dense"
    return backend


def run_matrix(backend, a, a_mask, b, b_mask, direction, reduction, temperature, chunk_budget_bytes,
               zero_padded=(False, False)):
    """``(Ba, Bb)`` scores on ``backend`` (resolved: not ``auto``), for checked inputs;
    ``zero_padded``: whether ``a``'s and ``b``'s masked vectors are known to be zero already."""
    if backend != "dense":  # (the dense einsum is autocast's own)
        a, b = autocast_operands(a, b)  # before the copy below, which is then in the autocast dtype
    a = a if zero_padded[0] else zero_masked(a, a_mask)
    b = b if zero_padded[1] else zero_masked(b, b_mask)
    if backend == "triton":
        from lightning_modules.maxsim.triton import TritonMaxSim

        a_weight = token_weights(a_mask, reduction, direction, torch.float32)
        b_weight = token_weights(b_mask, reduction, direction, torch.float32)
        return TritonMaxSim.apply(a, b, a_mask, b_mask, a_weight, b_weight, direction)
    if backend == "late-interaction-kernels":
        return late_interaction_kernels.maxsim_matrix(a, a_mask, b, b_mask, direction, reduction)
    if backend == "chunked":
        return ChunkedMaxSim.apply(a, b, a_mask, b_mask, direction, reduction, chunk_budget_bytes)
    return dense_matrix(a, a_mask, b, b_mask, direction, reduction, temperature)


def autocast_operands(a, b):
    """``a`` and ``b`` in the autocast dtype when autocast is on, as the dense einsum would
    multiply them (token vectors leave F.normalize in float32 even under autocast): for
    the fused kernels, which autocast does not reach, and the chunked backend's products
    into a buffer (``out=``, which autocast leaves alone). float64 stays float64, as
    autocast leaves it."""
    if torch.is_autocast_enabled(a.device.type):
        low = torch.get_autocast_dtype(a.device.type)
        return tuple(x if x.dtype == torch.float64 else x.to(low) for x in (a, b))
    return a, b


def engine_settings(maxsim: dict[str, Any] | None) -> dict[str, Any]:
    """``ENGINE_DEFAULTS`` updated with ``maxsim``. Refused here with a ``SettingsError`` (a user's
    error: one paragraph and exit status 2 from the command line), at construction rather than at
    the first in-batch step: anything but a mapping, unknown keys and backend names, and a
    backend whose package is not installed. (Whether the tensors are on a GPU, which the
    triton and late-interaction-kernels backends need, is known only when they are scored.)"""
    if maxsim is not None and not isinstance(maxsim, Mapping):
        raise SettingsError(f"model.maxsim must be a mapping of engine settings such as {{backend: auto}}, got "
                            f"{maxsim!r}; to choose a backend: model.maxsim.backend=<name>")
    settings = {**ENGINE_DEFAULTS, **(maxsim or {})}
    unknown = sorted(set(settings) - set(ENGINE_DEFAULTS))
    if unknown:
        raise SettingsError(f"model.maxsim: unknown key(s) {unknown}; known: {sorted(ENGINE_DEFAULTS)}")
    if settings["backend"] not in BACKENDS:
        raise SettingsError(f"model.maxsim.backend must be one of {', '.join(BACKENDS)}; got {settings['backend']!r} "
                            "(docs/engine.md says what each computes)")
    budget = settings["chunk_budget_mb"]
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget * 2**20 >= 1:
        raise SettingsError(f"model.maxsim.chunk_budget_mb must be a number of megabytes > 0, got {budget!r}")
    if settings["backend"] == "triton" and not triton_installed():
        raise SettingsError("model.maxsim.backend=triton needs the triton package: pip install 'maxsim-lightning[triton]'")
    if settings["backend"] == "late-interaction-kernels" and not late_interaction_kernels.installed():
        raise SettingsError("model.maxsim.backend=late-interaction-kernels needs that package: "
                            "pip install late-interaction-kernels")
    return settings
