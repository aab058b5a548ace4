"""Which float precision a run computes in: ``trainer.precision: auto`` resolved for the machine.

bf16 pays only where the hardware multiplies in bf16: a CPU with AVX512-BF16 or AMX encodes
faster in bf16 than in fp32, while on a CPU without them (AVX2 only) torch emulates bf16 far
*slower* than fp32 (figures: docs/benchmarks.md, "CPU speed"). So ``auto`` asks the processor.

``auto`` computes in bf16 autocast where the hardware has it, and in fp32 elsewhere: training
(``bf16-mixed``, fp32 weights and optimizer) and the encodings and MaxSim scoring of evaluation
and mining. Measured against fp32 at the same seed, it is faster and its figures differ by
less than a seed's spread (the decision and its numbers: docs/benchmarks.md, "CPU speed").
Any Lightning precision forces both: ``trainer.precision=32-true`` (fp32 everywhere),
``trainer.precision=bf16-mixed`` (bf16 autocast everywhere).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

# CPU flags (Linux /proc/cpuinfo) of instructions that multiply bf16 natively.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# Inference precisions: what ``inference_autocast`` understands.
INFERENCE_PRECISIONS = ("32", "bf16", "16")


@dataclass(frozen=True)
class RunPrecision:
    """``training``: the precision Lightning trains in (``32-true``, ``bf16-mixed``, ...);
    ``inference``: the one of encodings and scoring without gradients (``32``, ``bf16`` or ``16``);
    ``reason``: why, in words (for the log and ``results.json``)."""

    training: str
    inference: str
    reason: str

    def as_dict(self) -> dict:
        return {"training": self.training, "inference": self.inference, "reason": self.reason}


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The instruction-set flags of the first processor listed in ``cpuinfo`` (empty where there is none)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def bf16_supported(device: str | torch.device = "cpu", flags: set[str] | None = None) -> bool:
    """Whether ``device`` multiplies bf16 natively: a CUDA device that says so, or a CPU with one of
    ``BF16_CPU_FLAGS`` (``flags``: the CPU's, read from /proc/cpuinfo when not given)."""
    device = torch.device(device)
    if device.type == "cuda":
        # Not emulated: a V100 or T4 "supports" bf16 only by emulating it, slower than fp16 or fp32.
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    return bool((cpu_flags() if flags is None else flags) & set(BF16_CPU_FLAGS))


def resolve_precision(requested: str | int | None, device: str | torch.device = "cpu", flags: set[str] | None = None) -> RunPrecision:
    """The precisions a run uses for ``trainer.precision=requested`` on ``device`` (see the module's docstring)."""
    requested = "32-true" if requested is None else str(requested)  # Lightning's default
    if requested == "auto":
        if bf16_supported(device, flags):
            return RunPrecision("bf16-mixed", "bf16", f"auto: {torch.device(device).type} has native bf16")
        return RunPrecision("32-true", "32", f"auto: no native bf16 on this {torch.device(device).type}")
    if requested.startswith("bf16"):
        return RunPrecision(requested, "bf16", "asked for")
    if requested.startswith("16"):
        return RunPrecision(requested, "16", "asked for")
    return RunPrecision(requested, "32", "asked for")


def inference_autocast(precision: str, device_type: str):
    """A context that runs ``precision`` (``INFERENCE_PRECISIONS``) on ``device_type``: autocast
    to bf16 or fp16, or nothing for ``32``."""
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"inference precision must be one of {INFERENCE_PRECISIONS}, got {precision!r}")
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
