"""Launch settings of the triton kernels: which tiles, warps and pipeline stages each kernel gets.

Every setting the host code launches with comes from ``forward_config``, ``backward_config``
and ``onehot_launch`` (and the module constants they read), so that
``python -m tools.kernels.triton_tune`` can sweep them by replacing these on this module.
Why each setting is what it is: docs/engine.md, "Launch settings".
"""

from __future__ import annotations

import os

import torch
import triton

# a texts longer than this do not fit one forward program (the b2a max of a b token needs
# every token of an a text at once): the caller falls back to the chunked backend.
MAX_A_TOKENS = 256
# Rows (a tokens) per program: large enough for tensor-core tiles, small enough for registers
# and shared memory (a forward program holds whole a texts, so it may take up to 256 rows).
FORWARD_ROWS = 128
FORWARD_B_TEXTS = 8  # b texts a forward program scores, at most
FORWARD_PROGRAMS = 4  # forward programs per multiprocessor, at least (when there are enough texts)
BACKWARD_ROWS = 64
BLOCK_M = 64  # b tokens per tile
BLOCK_D = 128  # vector dims per tile (ColBERT's 128 in one step); float32 backward: 64
COLLECT_PART = 256  # sources a backward collect program sums, at most about
# Tokens per program of the atomic backward pass: few, so that few registers a thread let many
# programs share a multiprocessor and hide the gathers' latency.
ATOMIC_ROWS = 4
ATOMIC_PROGRAMS = 16  # programs per multiprocessor the atomic backward pass aims for
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (tests without a GPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def forward_config(la: int, lb: int, dim: int, dtype: torch.dtype, direction: str, store: bool, arch: int) -> dict:
    """The forward kernel's compile-time constants and launch options for these shapes.

    A program holds TEXTS whole a texts of BLOCK_L (power of two) tokens: 128 rows, or one
    long text. Programs of 256 rows get 8 warps. Vectors of at most BLOCK_D dims (ColBERT's
    128 in bf16) are one tile: the a block is loaded once and three pipeline stages stream
    the b tiles, within an A100's shared memory. Wider vectors tile along D with two stages.

    float32 operands multiply on the CUDA cores, so their settings depend on the chip
    (``arch``: compute capability x 10, of the inputs' device). From sm_90 (H100, H200): 64
    dims a step, 64-token b tiles, 4 warps (8 for 256 rows). Before sm_90: 32 dims a step on 8
    warps, with 32-token b tiles when a program holds 256 rows, where the wide setting spills
    registers in the hot loop (docs/engine.md, "Launch settings";
    ``tests/maxsim/test_triton_compile.py`` keeps spills out of the hot loops).
    """
    block_l = max(16, triton.next_power_of_2(la))
    texts = max(1, FORWARD_ROWS // block_l)
    rows = texts * block_l
    fp32 = dtype == torch.float32
    wide = arch >= 90  # the float32 setting: see above
    block_d = _block(dim, 64 if wide else 32) if fp32 else _block_d(dim, dtype)
    block_m = _block(lb, BLOCK_M // 2 if fp32 and rows > 128 and not wide else BLOCK_M)
    one_d_tile = dim <= block_d
    return dict(
        A2B=direction in ("a2b", "both"), B2A=direction in ("b2a", "both"), STORE=store, TEXTS=texts,
        BLOCK_L=block_l, BLOCK_M=block_m, BLOCK_D=block_d, ONE_D_TILE=one_d_tile,
        PRECISION="ieee", UPCAST=interpreting() and not fp32,
        num_warps=8 if rows > 128 or (fp32 and not wide) else 4, num_stages=3 if one_d_tile else 2,
    )  # fmt: skip


def backward_config(lb: int, dim: int, dtype: torch.dtype, direction: str) -> dict:
    """The backward kernels' compile-time constants and launch options.

    Atomic pass (the default): ATOMIC_ROWS tokens a program, ``atomic_warps`` warps (narrow
    programs, each streaming one vector per token and text). Deterministic pass: ROWS flat a
    tokens (``kernels.gather_a_kernel``), BLOCK_M b tokens (``kernels.gather_b_kernel``),
    COLLECT_CHUNK sources a step (``kernels.collect_kernel``).

    Both passes, 16-bit inputs: b2a's picked a side (``ONEHOT_B2A``; ``ONEHOT_A2B``, off,
    would do a2b's b side too) by ``kernels.onehot_kernel``, whose programs own ONEHOT_ROWS
    target rows (tensor-core tiles), up to ONEHOT_TOKENS tokens of each of as many target
    texts as fill them, and take up to ONEHOT_CHUNK tokens of a source text a step. float32
    inputs keep the atomic adds or the sorted sums: tensor cores would take their vectors as
    TF32. Why these values: docs/engine.md, "Launch settings".
    """
    one_hot = dtype != torch.float32
    return dict(
        ROWS=BACKWARD_ROWS, BLOCK_M=_block(lb, BLOCK_M), BLOCK_D=_block_d(dim, dtype),
        num_warps=4, num_stages=2, COLLECT_CHUNK=16, collect_warps=4, collect_stages=3,
        ATOMIC_ROWS=ATOMIC_ROWS, atomic_warps=2,
        ONEHOT_A2B=False, ONEHOT_B2A=one_hot, ONEHOT_ROWS=128, ONEHOT_TOKENS=BLOCK_M, ONEHOT_CHUNK=64,
        onehot_warps=8, onehot_stages=3,
    )  # fmt: skip


def onehot_launch(ls: int, lt: int, config: dict) -> dict:
    """``kernels.onehot_kernel``'s constants and launch options for source texts of ``ls`` tokens and
    target texts of ``lt``: ONEHOT_ROWS rows a program, as TOKENS tokens (up to ONEHOT_TOKENS)
    of each of TEXTS target texts, CHUNK source tokens a step."""
    tokens = _block(lt, config["ONEHOT_TOKENS"])
    return dict(
        TEXTS=max(1, config["ONEHOT_ROWS"] // tokens), TOKENS=tokens, CHUNK=_block(ls, config["ONEHOT_CHUNK"]),
        BLOCK_D=config["BLOCK_D"], UPCAST=interpreting(), num_warps=config["onehot_warps"],
        num_stages=config["onehot_stages"],
    )  # fmt: skip


def _block_d(dim: int, dtype: torch.dtype) -> int:
    """Vector dims per tile of the backward kernels and of 16-bit forward programs: up to 128
    (ColBERT's D in one step), 64 for float32 operands (the same bytes)."""
    return _block(dim, BLOCK_D // 2 if dtype == torch.float32 else BLOCK_D)


def _block(n: int, cap: int) -> int:
    """A power-of-two tile covering ``n`` up to ``cap``; at least 16, the smallest tensor-core tile."""
    return max(16, min(cap, triton.next_power_of_2(n)))
