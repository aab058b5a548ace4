"""The ``triton`` backend of ``maxsim_matrix``: fused kernels for the hard-max MaxSim.

Forward, one program per (block of ``a`` texts, group of up to ``FORWARD_B_TEXTS`` ``b``
texts): the ``a`` block's token vectors (loaded once when they fit one tile along D)
meet the ``b`` texts in tiles of ``BLOCK_M`` tokens, streamed through one pipelined loop
over the tiles of every text of the group; each tile of similarities lives only in
registers (float32 accumulation), where it updates each ``a`` token's running max and
argmax (direction a2b) and gives each ``b`` token its max over every ``a`` text of the
block (direction b2a). What reaches memory is the ``(Ba, Bb)`` scores and the index of
each token's best match: ``(Ba, Bb, La)`` and/or ``(Ba, Bb, Lb)``, int16 while the
matched side has fewer than 2^15 tokens.

Backward, from those indices alone: the gradient of a max flows to the winning pair of
tokens only. Two paths, as torch's own scatter-adds:

* by default (``_atomic_backward``), one sweep per direction: each token that took a max
  reads the vector of its best match (its own gradient, summed in its program) and adds
  its own vector to that match's gradient with a float32 atomic add. Fast; the order of
  the adds, and so the last bits of the picked tokens' gradients, vary from run to run.
* under ``torch.use_deterministic_algorithms(True)`` (Lightning's
  ``Trainer(deterministic=True)``, ``trainer.deterministic=true`` in config),
  ``_sorted_backward``: gathers only. Where a token took a max it reads its best match
  (``_gather_a_kernel``, ``_gather_b_kernel``); where a token was picked it sums the
  tokens that picked it (``_collect``; 16-bit inputs take the one-hot products below for
  b2a's a side): a stable sort of each text's picks lists every target token's sources
  in a fixed order, ``searchsorted`` finds where each list begins, and a program per target
  token (and per part of a long list) sums it. Bit for bit the same from run to run.

On both paths, for 16-bit inputs, the picked a side of b2a is ``_onehot_kernel`` (the
module's default score "both" has it: every token of every b text adds to one of the 32
tokens of each query, about 4,800 adds a query token at B = 512, 32 x 300, the atomic
adds' worst contention). Each program owns a tile of target tokens and, a source text at a
time, multiplies an exact 0/1 matrix (which of the text's tokens picked which target token)
with that text's vectors on the tensor cores, in float32, scaling each product by the
pair's gradient times the text's token weight in float32: the 0/1 products are exact, the
weights are not rounded to the inputs' dtype, the sums are float32; no atomics. The same
kernel can sum a2b's picked b side (``backward_config(...)["ONEHOT_A2B"]``, off by default:
there each b token receives only about 55 adds at that shape, and on an H200 the one-hot
products took 9.55 ms of forward+backward where the atomic adds took 5.35 in the same run,
``benchmarks/RESULTS.md``, v8). (late-interaction-kernels' ``lowmem`` backward is this
design for a2b, with the weights rounded to the inputs' dtype inside the product.)
``backward_config(...)["ONEHOT_B2A"]`` turns b2a's off (atomic adds, or the sorted sums).

Precision: float32 inputs use IEEE float32 products in the forward pass
(``input_precision="ieee"``; TF32 would cost about three decimal digits), which on a GPU
run on the CUDA cores, not the tensor cores: bf16 is the fast path (``maxsim_matrix``
casts to the autocast dtype, as the dense einsum would). bf16 and fp16 inputs multiply
in their own type with float32 accumulation. The backward pass sums in float32.

Backward programs take consecutive tokens wherever texts begin and end, so long ``a``
texts cost them nothing extra; a forward program holds whole ``a`` texts (up to
``MAX_A_TOKENS``), with 8 warps when they are long (float32 programs always).
``forward_config`` and ``backward_config`` hold every launch setting
(``benchmarks/triton_tune.py`` sweeps them).

Runs on CUDA tensors, or on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``, set before Triton is imported), which is how the tests check it
on machines without a GPU. The interpreter multiplies bf16/fp16 as raw integers, so
there the forward tiles are lifted to float32 first: the same numbers, since a product of
two bf16 (or fp16) values is exact in float32 and the GPU accumulates in float32 too.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

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
# Tokens per program of the atomic backward pass: with 2 warps, 8 dims of D = 128 per thread,
# about 56 registers on sm_90, so many programs share a multiprocessor and hide the gathers' latency.
ATOMIC_ROWS = 4
ATOMIC_PROGRAMS = 16  # programs per multiprocessor the atomic backward pass aims for
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (tests without a GPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def runs_on(x: torch.Tensor) -> bool:
    """Whether the kernels can take tensors on ``x``'s device: CUDA, or any under the interpreter."""
    return x.is_cuda or interpreting()


def handles(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the kernels take these inputs: float32/bf16/fp16 of one dtype, non-empty batches,
    a texts of at most ``MAX_A_TOKENS`` tokens, b texts of at most 65535, and index tensors whose
    offsets fit int32. (The caller hands the others to the chunked backend.)"""
    (ba, la, dim), (bb, lb, _) = a.shape, b.shape
    if ba == 0 or bb == 0:
        return False  # nothing to launch: an empty score matrix is chunked's
    small = ba * bb * max(la, lb) < 2**31 and max(ba * la, bb * lb) * dim < 2**31
    texts = forward_config(la, lb, dim, a.dtype, "both", False, _arch(a))["TEXTS"]
    # Grid axis 1 allows 65535 programs: the forward's blocks of a texts, the sorted backward's b tokens.
    launchable = triton.cdiv(ba, texts) <= 65535 and lb <= 65535
    return a.dtype in SUPPORTED_DTYPES and b.dtype == a.dtype and la <= MAX_A_TOKENS and small and launchable


class TritonMaxSim(torch.autograd.Function):
    """``maxsim_matrix`` with a hard max, fused.

    ``apply(a (Ba, La, D), b (Bb, Lb, D), a_mask (Ba, La), b_mask (Bb, Lb), a_weight (Ba, La),
    b_weight (Bb, Lb), direction) -> (Ba, Bb)`` float32. ``a_weight``/``b_weight`` are what
    each token's best match adds to the score: one value per text (``1``, ``1/count``, halved
    for "both") on its real tokens, 0 on masked ones, float32. Masked tokens' vectors must be
    zero (``maxsim_matrix`` zeroes them): a product with weight 0 is still NaN on inf padding.
    Masks and weights get no gradient. Without a gradient to compute (inference, scoring a
    corpus) the argmax indices are neither written nor kept.
    """

    @staticmethod
    def forward(ctx, a, b, a_mask, b_mask, a_weight, b_weight, direction):
        a, b = a.contiguous(), b.contiguous()
        a_mask, b_mask = a_mask.to(torch.int8).contiguous(), b_mask.to(torch.int8).contiguous()
        a_weight, b_weight = a_weight.float().contiguous(), b_weight.float().contiguous()
        (ba, la, dim), (bb, lb, _) = a.shape, b.shape
        keep = any(ctx.needs_input_grad[:2])
        a2b, b2a = direction in ("a2b", "both"), direction in ("b2a", "both")
        scores = torch.empty(ba, bb, dtype=torch.float32, device=a.device)
        a_best = torch.empty(ba, bb, la, dtype=_index_dtype(lb), device=a.device) if a2b and keep else None
        b_best = torch.empty(ba, bb, lb, dtype=_index_dtype(la), device=a.device) if b2a and keep else None
        config = forward_config(la, lb, dim, a.dtype, direction, keep, _arch(a))
        with _on_device(a):
            a_blocks = triton.cdiv(ba, config["TEXTS"])
            b_texts = _b_texts_per_program(a, bb, a_blocks)
            # b texts on grid axis 0: a corpus may hold more than the 65535 that axis 1 allows.
            _forward_kernel[(triton.cdiv(bb, b_texts), a_blocks)](
                a, b, a_mask, b_mask, a_weight, b_weight, scores,
                scores if a_best is None else a_best, scores if b_best is None else b_best,  # unused when None
                ba, bb, la, lb, dim, b_texts, **config,
            )  # fmt: skip
        ctx.save_for_backward(a, b, a_weight, b_weight, a_best, b_best)
        ctx.direction = direction
        return scores

    @staticmethod
    def backward(ctx, grad):
        a, b, a_weight, b_weight, a_best, b_best = ctx.saved_tensors
        grad = grad.float().contiguous()
        want_a, want_b = ctx.needs_input_grad[:2]
        with _on_device(a):
            backward = _sorted_backward if torch.are_deterministic_algorithms_enabled() else _atomic_backward
            grad_a, grad_b = backward(a, b, a_weight, b_weight, a_best, b_best, grad, ctx.direction, want_a, want_b)
        grad_a = grad_a.view_as(a).to(a.dtype) if want_a else None
        grad_b = grad_b.view_as(b).to(b.dtype) if want_b else None
        return grad_a, grad_b, None, None, None, None, None


def _b_texts_per_program(x: torch.Tensor, bb: int, a_blocks: int) -> int:
    """How many b texts each forward program scores: up to ``FORWARD_B_TEXTS`` (fewer programs,
    each loading its a block once for all of them), but never so many that fewer than
    ``FORWARD_PROGRAMS`` programs per multiprocessor remain (small batches)."""
    spare = (bb * a_blocks) // (FORWARD_PROGRAMS * _parallel_units(x))
    return max(1, min(FORWARD_B_TEXTS, spare, bb))


def _atomic_backward(a, b, a_weight, b_weight, a_best, b_best, grad, direction, want_a, want_b):
    """The backward pass in one sweep over the argmax indices per direction: each token that took
    a max reads its best match and adds its own vector to that match's gradient, with float32
    atomic adds (fast; the order of the adds, and so the last bits, vary from run to run).

    Returns ``grad_a (Ba * La, D)`` and ``grad_b (Bb * Lb, D)`` float32 (``None`` where not wanted).
    """
    (ba, la, dim), (bb, lb, _) = a.shape, b.shape
    config = backward_config(lb, dim, a.dtype, direction)
    rows, block_d = config["ATOMIC_ROWS"], config["BLOCK_D"]
    launch = dict(ROWS=rows, BLOCK_D=block_d, num_warps=config["atomic_warps"], num_stages=config["num_stages"])
    d_tiles = triton.cdiv(dim, block_d)
    # Only the wanted gradients get a buffer (a frozen corpus on the b side must not cost a
    # float32 copy of itself); the kernels never touch the placeholder.
    placeholder = torch.empty(1, dtype=torch.float32, device=a.device)
    a2b, b2a = direction in ("a2b", "both"), direction in ("b2a", "both")
    # The picked side of a direction, where many tokens add to one (a2b's b side, b2a's a side),
    # by one-hot products (no atomics) where the settings say so (16-bit inputs); the other
    # direction's atomic adds then add to that result.
    onehot_b = a2b and want_b and config["ONEHOT_A2B"]
    onehot_a = b2a and want_a and config["ONEHOT_B2A"]
    if onehot_a:
        grad_a = _onehot_grad(b, b_weight, b_best, grad, ba, la, a2b=False, config=config)
    else:
        grad_a = torch.zeros(ba * la, dim, dtype=torch.float32, device=a.device) if want_a else placeholder
    if onehot_b:
        grad_b = _onehot_grad(a, a_weight, a_best, grad, bb, lb, a2b=True, config=config)
    else:
        grad_b = torch.zeros(bb * lb, dim, dtype=torch.float32, device=a.device) if want_b else placeholder
    if a2b and (want_a or not onehot_b):  # a tokens took maxima over b tokens
        blocks = triton.cdiv(ba * la, rows)
        splits = _splits(a, blocks * d_tiles, bb)
        _atomic_a2b_kernel[(blocks, splits, d_tiles)](
            a, b, a_weight, a_best, grad, grad_a, grad_b, ba, bb, la, lb, dim, splits,
            GRAD_A=want_a, GRAD_B=want_b and not onehot_b, **launch,
        )  # fmt: skip
    if b2a and (want_b or not onehot_a):  # b tokens took maxima over the tokens of each a text
        blocks = triton.cdiv(lb, rows)
        splits = _splits(a, bb * blocks * d_tiles, ba)
        # (b text, block of its tokens) flattened on axis 0, which allows 2^31 - 1 programs; axis 1 only 65535.
        _atomic_b2a_kernel[(bb * blocks, splits * d_tiles)](
            a, b, b_weight, b_best, grad, grad_a, grad_b, ba, bb, la, lb, dim, splits, d_tiles, blocks,
            GRAD_A=want_a and not onehot_a, GRAD_B=want_b, **launch,
        )  # fmt: skip
    return (grad_a if want_a else None), (grad_b if want_b else None)


def _splits(x: torch.Tensor, programs: int, loop: int, per_unit: int | None = None) -> int:
    """Into how many parts to split a kernel's loop over ``loop`` texts so that about ``per_unit``
    (default ``ATOMIC_PROGRAMS``) programs per multiprocessor share the work (small batches
    would leave most of a GPU idle)."""
    per_unit = ATOMIC_PROGRAMS if per_unit is None else per_unit
    return max(1, min(loop, triton.cdiv(per_unit * _parallel_units(x), programs)))


def _onehot_grad(sources, source_weight, best, grad, bt, lt, a2b, config):
    """The gradient of the side whose tokens were picked, ``(Bt * Lt, D)`` float32, by
    ``_onehot_kernel``: direction a2b's b side (``a2b``: sources ``a``, ``best`` = a_best
    ``(Ba, Bb, La)``, Bt, Lt = Bb, Lb) or b2a's a side (sources ``b``, ``best`` = b_best
    ``(Ba, Bb, Lb)``, Bt, Lt = Ba, La). Each program owns a tile of target tokens (ONEHOT_ROWS
    rows: TOKENS tokens of each of TEXTS texts) and sums, over every source text, the vectors of
    the tokens that picked them as a product of an exact 0/1 matrix with those vectors (tensor
    cores). For 16-bit inputs, whose vectors the tensor cores take as they are. No atomics:
    deterministic."""
    (bs, ls, dim) = sources.shape
    launch = onehot_launch(ls, lt, config)
    # Where best[i, j] and grad[i, j] lie for source text i and target text j, both (Ba, Bb, ...).
    if a2b:
        strides = dict(best_source_stride=bt * ls, best_target_stride=ls, grad_source_stride=bt, grad_target_stride=1)
    else:
        strides = dict(best_source_stride=ls, best_target_stride=bs * ls, grad_source_stride=1, grad_target_stride=bs)
    grid = (triton.cdiv(bt, launch["TEXTS"]), triton.cdiv(lt, launch["TOKENS"]), triton.cdiv(dim, launch["BLOCK_D"]))
    # Few programs (a small batch) would leave most of a GPU idle: split the source texts across
    # programs, each writing its own partial sum (added in a fixed order), within int32 offsets.
    splits = _splits(sources, grid[0] * grid[1] * grid[2], bs, per_unit=4)
    splits = max(1, min(splits, (2**31 - 1) // (bt * lt * dim)))
    partial = torch.empty(splits, bt * lt, dim, dtype=torch.float32, device=sources.device)
    _onehot_kernel[(grid[0], grid[1], splits * grid[2])](
        sources, source_weight, best, grad, partial, bs, bt, ls, lt, dim, **strides,
        SPLITS=splits, D_TILES=grid[2], CHUNKS=triton.cdiv(ls, launch["CHUNK"]), **launch,
    )  # fmt: skip
    return partial.sum(dim=0) if splits > 1 else partial[0]


def onehot_launch(ls: int, lt: int, config: dict) -> dict:
    """``_onehot_kernel``'s constants and launch options for source texts of ``ls`` tokens and
    target texts of ``lt``: ONEHOT_ROWS rows a program, as TOKENS tokens (up to ONEHOT_TOKENS)
    of each of TEXTS target texts, CHUNK source tokens a step."""
    tokens = _block(lt, config["ONEHOT_TOKENS"])
    return dict(
        TEXTS=max(1, config["ONEHOT_ROWS"] // tokens), TOKENS=tokens, CHUNK=_block(ls, config["ONEHOT_CHUNK"]),
        BLOCK_D=config["BLOCK_D"], UPCAST=interpreting(), num_warps=config["onehot_warps"],
        num_stages=config["onehot_stages"],
    )  # fmt: skip


def _sorted_backward(a, b, a_weight, b_weight, a_best, b_best, grad, direction, want_a, want_b):
    """The deterministic backward pass (``torch.use_deterministic_algorithms(True)``, as
    Lightning's ``Trainer(deterministic=True)`` sets): gathers only, summed in fixed orders, so
    the gradients are the same bit for bit from run to run.

    Where a token took a max it reads its best match (``_gather_a_kernel``, ``_gather_b_kernel``);
    where a token was picked it sums the tokens that picked it (``_collect``; for 16-bit
    inputs ``_onehot_grad``, products of exact 0/1 matrices, as deterministic). Returns
    ``grad_a (Ba * La, D)`` and ``grad_b (Bb * Lb, D)`` float32 (``None`` where not wanted).
    """
    (ba, la, dim), (bb, lb, _) = a.shape, b.shape
    blocks = backward_config(lb, dim, a.dtype, direction)
    gather = {k: blocks[k] for k in ("ROWS", "BLOCK_M", "BLOCK_D", "num_warps", "num_stages")}
    a2b, b2a = direction in ("a2b", "both"), direction in ("b2a", "both")
    d_tiles = triton.cdiv(dim, blocks["BLOCK_D"])
    grad_a = grad_b = None
    if want_a:
        grad_a = 0.0
        if a2b:  # each a token reads its best b token
            row_blocks = triton.cdiv(ba * la, blocks["ROWS"])
            # Few row blocks (a small batch) would leave most of a GPU idle: split the b
            # texts across programs and add the partial sums (in a fixed order: deterministic).
            splits = _splits(a, row_blocks * d_tiles, bb, per_unit=4)
            partial = torch.empty(splits, ba * la, dim, dtype=torch.float32, device=a.device)
            _gather_a_kernel[(row_blocks, splits, d_tiles)](
                b, a_weight, a_best, grad, partial, ba, bb, la, lb, dim, splits, **gather,
            )  # fmt: skip
            grad_a = partial.sum(dim=0)
        if b2a and blocks["ONEHOT_B2A"]:  # each a token collects the b tokens that picked it
            grad_a = grad_a + _onehot_grad(b, b_weight, b_best, grad, ba, la, a2b=False, config=blocks)
        elif b2a:
            grad_a = grad_a + _collect(b_best.view(ba, bb * lb), la, b.view(bb * lb, dim), b_weight.view(-1),
                                       grad, lb, grad_source_stride=1, grad_row_stride=bb, config=blocks)
    if want_b:
        grad_b = 0.0
        if a2b and blocks["ONEHOT_A2B"]:  # each b token collects the a tokens that picked it
            grad_b = _onehot_grad(a, a_weight, a_best, grad, bb, lb, a2b=True, config=blocks)
        elif a2b:
            picks = a_best.permute(1, 0, 2).reshape(bb, ba * la)  # per b text: every a token's pick
            grad_b = _collect(picks, lb, a.view(ba * la, dim), a_weight.view(-1), grad,
                              la, grad_source_stride=bb, grad_row_stride=1, config=blocks)
        if b2a:  # each b token reads its best token in every a text
            gathered = torch.empty(bb * lb, dim, dtype=torch.float32, device=a.device)
            _gather_b_kernel[(bb, triton.cdiv(lb, blocks["BLOCK_M"]), d_tiles)](
                a, b_weight, b_best, grad, gathered, ba, bb, la, lb, dim, **gather,
            )  # fmt: skip
            grad_b = grad_b + gathered
    return grad_a, grad_b


def _arch(x: torch.Tensor) -> int:
    """The compute capability x 10 of ``x``'s GPU (90 for an H100); 90 under the interpreter."""
    if not x.is_cuda:
        return 90
    major, minor = torch.cuda.get_device_capability(x.device)
    return 10 * major + minor


def _on_device(x: torch.Tensor):
    """Triton launches on the current CUDA device: make it ``x``'s."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _collect(picks, targets, sources, source_weight, grad, source_length, grad_source_stride, grad_row_stride,
             config):
    """The scatter-add of the backward pass as a gather: each target token sums the vectors of
    the tokens that picked it as their best match.

    Args:
        picks: ``(R, S)`` for each of R texts, the target token (in ``[0, targets)``) that each
            of the S source tokens of the other side picked in it.
        sources: ``(S, D)`` the source tokens' vectors; ``source_weight (S,)`` their weights.
        grad: ``(Ba, Bb)``; the source token ``s`` of text ``s // source_length`` takes
            ``grad[...]`` at ``(s // source_length) * grad_source_stride + r * grad_row_stride``.

    Returns:
        ``(R * targets, D)`` float32. A stable sort of each text's picks lists the sources of
        each target token in a fixed order (deterministic sums), and ``searchsorted`` finds
        where each target's list begins.
    """
    rows, count = picks.shape
    ordered, order = torch.sort(picks.to(torch.int32).contiguous(), dim=1, stable=True)
    ordered, order = ordered.contiguous(), order.to(torch.int32).contiguous()  # the kernel indexes rows densely
    bounds = torch.arange(targets + 1, dtype=torch.int32, device=picks.device).expand(rows, -1).contiguous()
    offsets = torch.searchsorted(ordered, bounds).to(torch.int32).contiguous()  # (R, targets + 1)
    # Long lists (few targets, many sources: b2a into a short query) are cut into parts summed
    # by programs of their own, then added in a fixed order: about COLLECT_PART sources a program.
    splits = max(1, min(64, triton.cdiv(count // max(targets, 1), COLLECT_PART)))
    block_d = config["BLOCK_D"]
    d_tiles = triton.cdiv(sources.shape[1], block_d)
    out = torch.empty(splits, rows * targets, sources.shape[1], dtype=torch.float32, device=picks.device)
    _collect_kernel[(rows, targets, splits * d_tiles)](
        order, offsets, sources, source_weight, grad, out,
        count, targets, source_length, sources.shape[1], grad_source_stride, grad_row_stride, splits, d_tiles,
        CHUNK=config["COLLECT_CHUNK"], BLOCK_D=block_d, num_warps=config["collect_warps"],
        num_stages=config["collect_stages"],
    )  # fmt: skip
    return out.sum(dim=0) if splits > 1 else out[0]


def forward_config(la: int, lb: int, dim: int, dtype: torch.dtype, direction: str, store: bool, arch: int) -> dict:
    """The forward kernel's compile-time constants and launch options for these shapes.

    A program holds TEXTS whole a texts of BLOCK_L (power of two) tokens: 128 rows, or one
    long text. Programs of 256 rows get 8 warps. Vectors of at most BLOCK_D dims (ColBERT's
    128 in bf16) are one tile: the a block is loaded once and three pipeline stages stream
    the b tiles (at most 64 KB + 3 x 16 KB of shared memory, within an A100's 163 KB).
    Wider vectors tile along D with two stages.

    float32 operands multiply on the CUDA cores, where each thread holds its share of the
    rows x BLOCK_M tile of similarities and of both operand tiles in registers, so their
    settings depend on the chip (``arch``: compute capability x 10, of the inputs' device).
    From sm_90 (H100, H200): 64 dims a step, 64-token b tiles, 4 warps (8 for 256 rows),
    1.6x faster on an H200 than the narrow setting below (36.5 against 60.0 ms, B = 512,
    32 x 300). Before sm_90: 32 dims a step on 8 warps, with 32-token b tiles when a program
    holds 256 rows: with triton 3.9 for sm_80 the wide setting spilled registers inside the
    hot loop, at 2.4x the instructions per similarity (``benchmarks/RESULTS.md``, "float32
    forward"; ``tests/test_triton_compile.py`` keeps spills out of the hot loops).
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

    Atomic pass (the default): ATOMIC_ROWS tokens a program, ``atomic_warps`` warps. Each
    program streams one vector per token and text, so it is narrow: late-interaction-kernels
    reports 1-2 warps as the H100 optimum for such programs, and registers grow with the
    elements each thread holds (``triton_compile_check.py``: 56 at 4 rows, 236 at 16 rows of
    128 dims on 2 warps), which caps the programs a multiprocessor runs at once.
    ``benchmarks/triton_tune.py`` sweeps these settings on a GPU. Deterministic pass: ROWS
    flat a tokens (``_gather_a_kernel``), BLOCK_M b tokens (``_gather_b_kernel``),
    COLLECT_CHUNK sources a step (``_collect_kernel``).

    Both passes, 16-bit inputs: b2a's picked a side (``ONEHOT_B2A``; ``ONEHOT_A2B``, off,
    would do a2b's b side too: slower on an H200, module docstring) by ``_onehot_kernel``,
    whose programs own ONEHOT_ROWS target rows (128: tensor-core tiles), up to ONEHOT_TOKENS
    tokens of each of as many target texts as fill them (4 of 32 for 32-token queries, 2 of
    64 for long documents: each source text's vectors, read once per program, serve them
    all), and take up to ONEHOT_CHUNK tokens of a source text a step; 8 warps keep the
    128 x 128 float32 sum at 64 registers a thread (181-210 in all on sm_90). float32 inputs
    keep the atomic adds or the sorted sums: tensor cores would take their vectors as TF32.
    """
    one_hot = dtype != torch.float32
    return dict(
        ROWS=BACKWARD_ROWS, BLOCK_M=_block(lb, BLOCK_M), BLOCK_D=_block_d(dim, dtype),
        num_warps=4, num_stages=2, COLLECT_CHUNK=16, collect_warps=4, collect_stages=3,
        ATOMIC_ROWS=ATOMIC_ROWS, atomic_warps=2,
        ONEHOT_A2B=False, ONEHOT_B2A=one_hot, ONEHOT_ROWS=128, ONEHOT_TOKENS=BLOCK_M, ONEHOT_CHUNK=64,
        onehot_warps=8, onehot_stages=3,
    )  # fmt: skip


def _block_d(dim: int, dtype: torch.dtype) -> int:
    """Vector dims per tile of the backward kernels and of 16-bit forward programs: up to 128
    (ColBERT's D in one step), 64 for float32 operands (the same bytes)."""
    return _block(dim, BLOCK_D // 2 if dtype == torch.float32 else BLOCK_D)


def _block(n: int, cap: int) -> int:
    """A power-of-two tile covering ``n`` up to ``cap``; at least 16, the smallest tensor-core tile."""
    return max(16, min(cap, triton.next_power_of_2(n)))


def _index_dtype(candidates: int) -> torch.dtype:
    """The smallest integer type that holds a token index among ``candidates``."""
    return torch.int16 if candidates <= torch.iinfo(torch.int16).max else torch.int32


def _parallel_units(x: torch.Tensor) -> int:
    """Streaming multiprocessors to fill (1 in the interpreter)."""
    if x.is_cuda:
        return torch.cuda.get_device_properties(x.device).multi_processor_count
    return 1


@triton.jit
def _a_rows(block, TEXTS: tl.constexpr, BLOCK_L: tl.constexpr, Ba, La):
    """The rows of a forward program: TEXTS whole a texts, each padded to BLOCK_L tokens.
    Returns each row's text, token, and whether it is a real token."""
    rows = tl.arange(0, TEXTS * BLOCK_L)
    text = block * TEXTS + rows // BLOCK_L
    token = rows % BLOCK_L
    return text, token, (text < Ba) & (token < La)


@triton.jit
def _flat_rows(block, ROWS: tl.constexpr, Ba, La):
    """The rows of a backward program: ROWS consecutive tokens of the flattened ``(Ba * La)`` a
    tokens, wherever texts begin and end (the backward needs no whole text)."""
    row = block * ROWS + tl.arange(0, ROWS)
    return row // La, row % La, row < Ba * La


# Sizes are not specialised on: a new batch size or text length must not mean a new compile.
@triton.jit(do_not_specialize=["Ba", "Bb", "La", "Lb", "B_TEXTS"])
def _forward_kernel(
    a_ptr, b_ptr, a_mask_ptr, b_mask_ptr, a_weight_ptr, b_weight_ptr, scores_ptr, a_best_ptr, b_best_ptr,
    Ba, Bb, La, Lb, D, B_TEXTS,
    A2B: tl.constexpr, B2A: tl.constexpr, STORE: tl.constexpr, TEXTS: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, ONE_D_TILE: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):  # fmt: skip
    """scores[i, j] for TEXTS a texts and the B_TEXTS b texts ``j0, j0 + 1, ...``, and (STORE)
    each token's best match.

    One loop runs over every tile of every b text of the program (the tiles of text j
    follow those of text j - 1), so the pipeline that streams b tiles does not drain
    between texts. The running maxima restart at a text's first tile; its results are
    written at its last (masked stores, no branch in the loop)."""
    group, block = tl.program_id(0), tl.program_id(1)
    text, token, row_ok = _a_rows(block, TEXTS, BLOCK_L, Ba, La)
    a_row = text * La + token
    a_ok = tl.load(a_mask_ptr + a_row, mask=row_ok, other=0) != 0
    a_weight = tl.load(a_weight_ptr + a_row, mask=row_ok, other=0.0)
    block_texts = block * TEXTS + tl.arange(0, TEXTS)
    j0 = group * B_TEXTS
    tiles = tl.cdiv(Lb, BLOCK_M)  # per b text
    best = tl.full((TEXTS * BLOCK_L,), float("-inf"), tl.float32)  # a2b running max per a token
    best_at = tl.zeros((TEXTS * BLOCK_L,), tl.int32)
    b2a_total = tl.zeros((TEXTS,), tl.float32)
    if ONE_D_TILE:
        # The a block is loaded once and stays on chip while the b tiles stream past: the loop
        # over b tiles then holds only the b load and the product, which Triton pipelines (the
        # next tile's load overlaps this tile's product and maxima).
        d = tl.arange(0, BLOCK_D)
        a_block = tl.load(a_ptr + a_row[:, None] * D + d[None, :], mask=row_ok[:, None] & (d < D)[None, :], other=0.0)
        if UPCAST:  # Triton's interpreter multiplies bf16 as raw integers: lift to float32 there
            a_block = a_block.to(tl.float32)
    for step in range(0, tl.minimum(B_TEXTS, Bb - j0) * tiles):
        j = j0 + step // tiles
        m0 = (step % tiles) * BLOCK_M
        first = m0 == 0
        # The last tile of text j, as vectors (row-wise and text-wise): Triton's interpreter
        # refuses a scalar condition inside a store mask.
        last_row = (m0 + BLOCK_M + token * 0) >= Lb
        last_text = (m0 + BLOCK_M + block_texts * 0) >= Lb
        best = tl.where(first, float("-inf"), best)
        b2a_total = tl.where(first, 0.0, b2a_total)
        m = m0 + tl.arange(0, BLOCK_M)
        m_ok = m < Lb
        if ONE_D_TILE:
            b = tl.load(b_ptr + (j * Lb + m)[:, None] * D + d[None, :], mask=m_ok[:, None] & (d < D)[None, :], other=0.0)
            if UPCAST:
                b = b.to(tl.float32)
            sims = tl.dot(a_block, tl.trans(b), input_precision=PRECISION, out_dtype=tl.float32)
        else:  # wide vectors: both operands tile by tile along D
            sims = tl.zeros((TEXTS * BLOCK_L, BLOCK_M), dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                d = d0 + tl.arange(0, BLOCK_D)
                a = tl.load(a_ptr + a_row[:, None] * D + d[None, :], mask=row_ok[:, None] & (d < D)[None, :],
                            other=0.0)
                b = tl.load(b_ptr + (j * Lb + m)[:, None] * D + d[None, :], mask=m_ok[:, None] & (d < D)[None, :],
                            other=0.0)
                if UPCAST:
                    a, b = a.to(tl.float32), b.to(tl.float32)
                sims = tl.dot(a, tl.trans(b), sims, input_precision=PRECISION)
        total = tl.zeros((TEXTS,), tl.float32)
        if A2B:
            # -inf, not 0, for masked b tokens: they must lose even against negative cosines.
            b_ok = tl.load(b_mask_ptr + j * Lb + m, mask=m_ok, other=0) != 0
            tile_best, tile_at = tl.max(tl.where(b_ok[None, :], sims, float("-inf")), axis=1, return_indices=True)
            better = tile_best > best  # strict: the first of equal maxima wins, as in torch
            best_at = tl.where(better, tile_at + m0, best_at)
            best = tl.where(better, tile_best, best)
            # Every b text has a real token, so a real row's max is finite by the last tile;
            # padding rows weigh 0.
            total += tl.sum(tl.reshape(tl.where(a_weight > 0, best, 0.0) * a_weight, (TEXTS, BLOCK_L)), axis=1)
            if STORE:
                tl.store(a_best_ptr + (text * Bb + j) * La + token, best_at.to(a_best_ptr.dtype.element_ty),
                         mask=row_ok & last_row)
        if B2A:
            masked = tl.where(a_ok[:, None], sims, float("-inf"))
            col_best, col_at = tl.max(tl.reshape(masked, (TEXTS, BLOCK_L, BLOCK_M)), axis=1, return_indices=True)
            weight = tl.load(b_weight_ptr + j * Lb + m, mask=m_ok, other=0.0)
            # A masked b token, or a padding text of the block, saw only -inf: weight 0 must not make NaN.
            b2a_total += tl.sum(tl.where(weight[None, :] > 0, col_best, 0.0) * weight[None, :], axis=1)
            total += b2a_total
            if STORE:
                at_ptr = b_best_ptr + (block_texts[:, None] * Bb + j) * Lb + m[None, :]
                at_ok = (block_texts < Ba)[:, None] & m_ok[None, :]
                tl.store(at_ptr, col_at.to(b_best_ptr.dtype.element_ty), mask=at_ok)
        tl.store(scores_ptr + block_texts * Bb + j, total, mask=(block_texts < Ba) & last_text)


@triton.jit(do_not_specialize=["Ba", "Bb", "La", "Lb", "SPLITS"])
def _gather_a_kernel(
    b_ptr, a_weight_ptr, a_best_ptr, grad_ptr, out_ptr, Ba, Bb, La, Lb, D, SPLITS,
    ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """a2b's grad_a for ROWS a tokens and BLOCK_D dims, over the b texts ``split, split + SPLITS, ...``:
    each a token reads the vector of its best b token, weighted by ``grad * a_weight``."""
    block, split, d_tile = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    text, token, row_ok = _flat_rows(block, ROWS, Ba, La)
    d = d_tile * BLOCK_D + tl.arange(0, BLOCK_D)
    ok = row_ok[:, None] & (d < D)[None, :]
    a_weight = tl.load(a_weight_ptr + text * La + token, mask=row_ok, other=0.0)
    acc = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    for j in range(split, Bb, SPLITS):
        g = tl.load(grad_ptr + text * Bb + j, mask=row_ok, other=0.0)
        best = tl.load(a_best_ptr + (text * Bb + j) * La + token, mask=row_ok, other=0).to(tl.int32)
        picked = tl.load(b_ptr + (j * Lb + best)[:, None] * D + d[None, :], mask=ok, other=0.0)
        acc += (g * a_weight)[:, None] * picked.to(tl.float32)
    tl.store(out_ptr + (split * Ba * La + text * La + token)[:, None] * D + d[None, :], acc, mask=ok)


@triton.jit(do_not_specialize=["Ba", "Bb", "La", "Lb"])
def _gather_b_kernel(
    a_ptr, b_weight_ptr, b_best_ptr, grad_ptr, out_ptr, Ba, Bb, La, Lb, D,
    ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """b2a's grad_b for BLOCK_M tokens of b text j and BLOCK_D dims: each b token reads the
    vector of its best token in every a text, weighted by ``grad * b_weight``."""
    j, m_tile, d_tile = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    m = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < Lb
    d = d_tile * BLOCK_D + tl.arange(0, BLOCK_D)
    ok = m_ok[:, None] & (d < D)[None, :]
    b_weight = tl.load(b_weight_ptr + j * Lb + m, mask=m_ok, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for i in range(0, Ba):
        best = tl.load(b_best_ptr + (i * Bb + j) * Lb + m, mask=m_ok, other=0).to(tl.int32)
        picked = tl.load(a_ptr + (i * La + best)[:, None] * D + d[None, :], mask=ok, other=0.0)
        acc += (tl.load(grad_ptr + i * Bb + j) * b_weight)[:, None] * picked.to(tl.float32)
    tl.store(out_ptr + (j * Lb + m)[:, None] * D + d[None, :], acc, mask=ok)


@triton.jit(do_not_specialize=["Ba", "Bb", "La", "Lb", "SPLITS"])
def _atomic_a2b_kernel(
    a_ptr, b_ptr, a_weight_ptr, a_best_ptr, grad_ptr, grad_a_ptr, grad_b_ptr, Ba, Bb, La, Lb, D, SPLITS,
    GRAD_A: tl.constexpr, GRAD_B: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Direction a2b, ROWS flat a tokens, BLOCK_D dims, the b texts ``split, split + SPLITS, ...``:
    each a token that took a max in b text j reads its best b token (``grad_a``) and adds its own
    vector to that token's gradient (``grad_b``), both weighted by ``grad[i, j] * a_weight``."""
    block, split, d_tile = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    text, token, row_ok = _flat_rows(block, ROWS, Ba, La)
    row = text * La + token
    d = d_tile * BLOCK_D + tl.arange(0, BLOCK_D)
    a_weight = tl.load(a_weight_ptr + row, mask=row_ok, other=0.0)
    real = row_ok & (a_weight != 0)  # masked tokens weigh 0: nothing to add
    ok = real[:, None] & (d < D)[None, :]
    if GRAD_B:  # loaded once, added once per b text
        mine = tl.load(a_ptr + row[:, None] * D + d[None, :], mask=ok, other=0.0).to(tl.float32) * a_weight[:, None]
    acc = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    for j in range(split, Bb, SPLITS):
        g = tl.load(grad_ptr + text * Bb + j, mask=real, other=0.0)
        best = tl.load(a_best_ptr + (text * Bb + j) * La + token, mask=real, other=0).to(tl.int32)
        picked = (j * Lb + best)[:, None] * D + d[None, :]
        if GRAD_A:
            acc += (g * a_weight)[:, None] * tl.load(b_ptr + picked, mask=ok, other=0.0).to(tl.float32)
        if GRAD_B:
            tl.atomic_add(grad_b_ptr + picked, g[:, None] * mine, mask=ok, sem="relaxed")
    if GRAD_A:  # other programs (splits, direction b2a) add to the same rows
        tl.atomic_add(grad_a_ptr + row[:, None] * D + d[None, :], acc, mask=ok, sem="relaxed")


@triton.jit(do_not_specialize=["Ba", "Bb", "La", "Lb", "SPLITS", "D_TILES", "M_TILES"])
def _atomic_b2a_kernel(
    a_ptr, b_ptr, b_weight_ptr, b_best_ptr, grad_ptr, grad_a_ptr, grad_b_ptr, Ba, Bb, La, Lb, D, SPLITS, D_TILES,
    M_TILES, GRAD_A: tl.constexpr, GRAD_B: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Direction b2a, ROWS tokens of b text j, BLOCK_D dims, the a texts ``split, split + SPLITS,
    ...``: each b token reads its best token in a text i (``grad_b``) and adds its own vector to
    that token's gradient (``grad_a``), both weighted by ``grad[i, j] * b_weight``."""
    j, m_tile = tl.program_id(0) // M_TILES, tl.program_id(0) % M_TILES
    split, d_tile = tl.program_id(1) // D_TILES, tl.program_id(1) % D_TILES
    m = m_tile * ROWS + tl.arange(0, ROWS)
    d = d_tile * BLOCK_D + tl.arange(0, BLOCK_D)
    b_weight = tl.load(b_weight_ptr + j * Lb + m, mask=m < Lb, other=0.0)
    real = (m < Lb) & (b_weight != 0)
    ok = real[:, None] & (d < D)[None, :]
    mine_at = (j * Lb + m)[:, None] * D + d[None, :]
    if GRAD_A:
        mine = tl.load(b_ptr + mine_at, mask=ok, other=0.0).to(tl.float32) * b_weight[:, None]
    acc = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    for i in range(split, Ba, SPLITS):
        g = tl.load(grad_ptr + i * Bb + j)
        best = tl.load(b_best_ptr + (i * Bb + j) * Lb + m, mask=real, other=0).to(tl.int32)
        picked = (i * La + best)[:, None] * D + d[None, :]
        if GRAD_B:
            acc += (g * b_weight)[:, None] * tl.load(a_ptr + picked, mask=ok, other=0.0).to(tl.float32)
        if GRAD_A:
            tl.atomic_add(grad_a_ptr + picked, g * mine, mask=ok, sem="relaxed")
    if GRAD_B:
        tl.atomic_add(grad_b_ptr + mine_at, acc, mask=ok, sem="relaxed")


# The grad strides keep Triton's specialisation on 1 (one of them is, on either side: contiguous loads).
@triton.jit(do_not_specialize=["Bs", "Bt", "Ls", "Lt", "best_source_stride", "best_target_stride", "SPLITS", "D_TILES",
                               "CHUNKS"], do_not_specialize_on_alignment=["grad_source_stride", "grad_target_stride"])
def _onehot_kernel(
    sources_ptr, source_weight_ptr, best_ptr, grad_ptr, out_ptr, Bs, Bt, Ls, Lt, D,
    best_source_stride, best_target_stride, grad_source_stride, grad_target_stride, SPLITS, D_TILES, CHUNKS,
    TEXTS: tl.constexpr, TOKENS: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """The gradient of the picked side of one direction, for tile ``program_id(1)`` (TOKENS
    tokens) of the TEXTS target texts of group ``program_id(0)``, BLOCK_D dims, summed over the
    source texts ``split, split + SPLITS, ...``::

        out[j, t] = sum_i grad(i, j) * c_i * sum_s [best(i, j, s) == t] * sources[i, s]

    where the source tokens ``s`` of text ``i`` took their max over the tokens of target text
    ``j`` and ``best(i, j, s)`` is the one each picked (direction a2b: sources a, targets b;
    b2a: sources b, targets a; the strides say where ``best`` and ``grad`` keep each pair), and
    ``c_i`` is the weight of text i's real tokens (every weight ``maxsim_matrix`` builds is one
    value per text times its mask). The inner sum is the product of an exact 0/1 matrix (rows:
    this program's target tokens; columns: CHUNK tokens of a source text) with those tokens'
    vectors: tensor cores, float32 accumulation, exact products; ``grad(i, j) * c_i`` then
    scales it in float32. One pipelined loop runs over every chunk of every source text of the
    split; each program owns its rows, so no atomics, and the sums run in a fixed order."""
    group, tile = tl.program_id(0), tl.program_id(1)
    split, d_tile = tl.program_id(2) // D_TILES, tl.program_id(2) % D_TILES
    rows = tl.arange(0, TEXTS * TOKENS)
    j = group * TEXTS + rows // TOKENS  # each row's target text and token
    t = tile * TOKENS + rows % TOKENS
    texts = group * TEXTS + tl.arange(0, TEXTS)
    d = d_tile * BLOCK_D + tl.arange(0, BLOCK_D)
    acc = tl.zeros((TEXTS * TOKENS, BLOCK_D), dtype=tl.float32)
    for step in range(0, tl.cdiv(Bs - split, SPLITS) * CHUNKS):
        i = split + (step // CHUNKS) * SPLITS
        s = (step % CHUNKS) * CHUNK + tl.arange(0, CHUNK)
        s_ok = s < Ls
        weight = tl.load(source_weight_ptr + i * Ls + s, mask=s_ok, other=0.0)
        # Masked tokens (weight 0) pick no row: -1 matches none.
        picks = tl.load(best_ptr + i * best_source_stride + texts[:, None] * best_target_stride + s[None, :],
                        mask=(texts < Bt)[:, None] & (weight > 0)[None, :], other=-1).to(tl.int32)
        picks = tl.reshape(tl.broadcast_to(picks[:, None, :], (TEXTS, TOKENS, CHUNK)), (TEXTS * TOKENS, CHUNK))
        # Masked tokens pick nothing, but 0 x inf is NaN: maxsim_matrix zeroes padding vectors.
        vectors = tl.load(sources_ptr + (i * Ls + s)[:, None] * D + d[None, :],
                          mask=s_ok[:, None] & (d < D)[None, :], other=0.0)
        if UPCAST:  # Triton's interpreter multiplies bf16 as raw integers: lift to float32 there
            vectors = vectors.to(tl.float32)
        summed = tl.dot((picks == t[:, None]).to(vectors.dtype), vectors, out_dtype=tl.float32)
        # The text's weight: the largest of the chunk's (all real tokens carry the same; a chunk
        # of masked tokens only adds zeros).
        g = tl.load(grad_ptr + i * grad_source_stride + texts * grad_target_stride, mask=texts < Bt, other=0.0)
        scale = g * tl.max(weight, axis=0)
        acc += tl.reshape(tl.broadcast_to(scale[:, None], (TEXTS, TOKENS)), (TEXTS * TOKENS,))[:, None] * summed
    ok = ((j < Bt) & (t < Lt))[:, None] & (d < D)[None, :]
    tl.store(out_ptr + ((split * Bt + j) * Lt + t)[:, None] * D + d[None, :], acc, mask=ok)


@triton.jit(do_not_specialize=["count", "targets", "source_length", "grad_source_stride", "grad_row_stride",
                               "SPLITS", "D_TILES"])
def _collect_kernel(
    order_ptr, offsets_ptr, sources_ptr, weight_ptr, grad_ptr, out_ptr,
    count, targets, source_length, D, grad_source_stride, grad_row_stride, SPLITS, D_TILES,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One target token ``t`` of text ``r``, BLOCK_D dims, one of SPLITS parts of its list: the
    weighted sum of the vectors of the source tokens that picked it,
    ``order[r, offsets[r, t]:offsets[r, t + 1]]``, written to ``out[split]``."""
    r, t = tl.program_id(0), tl.program_id(1)
    split, d_tile = tl.program_id(2) // D_TILES, tl.program_id(2) % D_TILES
    first = tl.load(offsets_ptr + r * (targets + 1) + t)
    last = tl.load(offsets_ptr + r * (targets + 1) + t + 1)
    part = tl.cdiv(last - first, SPLITS)
    start = first + split * part
    end = tl.minimum(last, start + part)
    d = d_tile * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for e0 in range(start, end, CHUNK):
        e = e0 + tl.arange(0, CHUNK)
        e_ok = e < end
        source = tl.load(order_ptr + r * count + e, mask=e_ok, other=0)
        weight = tl.load(weight_ptr + source, mask=e_ok, other=0.0) * tl.load(
            grad_ptr + (source // source_length) * grad_source_stride + r * grad_row_stride, mask=e_ok, other=0.0)
        vectors = tl.load(sources_ptr + source[:, None] * D + d[None, :], mask=e_ok[:, None] & d_ok[None, :], other=0.0)
        acc += tl.sum(weight[:, None] * vectors.to(tl.float32), axis=0)
    rows = tl.num_programs(0)
    tl.store(out_ptr + (split * rows * targets + r * targets + t) * D + d, acc, mask=d_ok)
