"""Host code of the ``triton`` backend: which inputs the kernels take, and the launches of the
backward passes (the forward's is in ``function.py``).

Two backward paths, both from the forward's argmax indices alone (docs/engine.md, "triton"):
``atomic_backward`` (the default: gathers and float32 atomic adds; the last bits of the
picked tokens' gradients vary from run to run) and ``sorted_backward`` (under
``torch.use_deterministic_algorithms(True)``: gathers only, in fixed orders, bit for bit the
same every run). For 16-bit inputs both sum b2a's picked a side by one-hot products
(``onehot_grad``) unless the settings say otherwise. Launch settings come from
``settings.py``, always read through the module, so that replacing them there reaches every launch.
"""

from __future__ import annotations

import contextlib

import torch
import triton

from lightning_modules.maxsim.triton import kernels, settings


def runs_on(x: torch.Tensor) -> bool:
    """Whether the kernels can take tensors on ``x``'s device: CUDA, or any under the interpreter."""
    return x.is_cuda or settings.interpreting()


def handles(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the kernels take these inputs: float32/bf16/fp16 of one dtype, non-empty batches,
    a texts of at most ``MAX_A_TOKENS`` tokens, b texts of at most 65535, and index tensors whose
    offsets fit int32. (The caller hands the others to the chunked backend.)"""
    (ba, la, dim), (bb, lb, _) = a.shape, b.shape
    if ba == 0 or bb == 0:
        return False  # nothing to launch: an empty score matrix is chunked's
    small = ba * bb * max(la, lb) < 2**31 and max(ba * la, bb * lb) * dim < 2**31
    texts = settings.forward_config(la, lb, dim, a.dtype, "both", False, arch(a))["TEXTS"]
    # Grid axis 1 allows 65535 programs: the forward's blocks of a texts, the sorted backward's b tokens.
    launchable = triton.cdiv(ba, texts) <= 65535 and lb <= 65535
    supported = a.dtype in settings.SUPPORTED_DTYPES and b.dtype == a.dtype
    return supported and la <= settings.MAX_A_TOKENS and small and launchable


def b_texts_per_program(x: torch.Tensor, bb: int, a_blocks: int) -> int:
    """How many b texts each forward program scores: up to ``settings.FORWARD_B_TEXTS`` (fewer programs,
    each loading its a block once for all of them), but never so many that fewer than
    ``FORWARD_PROGRAMS`` programs per multiprocessor remain (small batches)."""
    spare = (bb * a_blocks) // (settings.FORWARD_PROGRAMS * parallel_units(x))
    return max(1, min(settings.FORWARD_B_TEXTS, spare, bb))


def atomic_backward(a, b, a_weight, b_weight, a_best, b_best, grad, direction, want_a, want_b):
    """The backward pass in one sweep over the argmax indices per direction: each token that took
    a max reads its best match and adds its own vector to that match's gradient, with float32
    atomic adds (fast; the order of the adds, and so the last bits, vary from run to run).

    Returns ``grad_a (Ba * La, D)`` and ``grad_b (Bb * Lb, D)`` float32 (``None`` where not wanted).
    """
    (ba, la, dim), (bb, lb, _) = a.shape, b.shape
    config = settings.backward_config(lb, dim, a.dtype, direction)
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
        grad_a = onehot_grad(b, b_weight, b_best, grad, ba, la, a2b=False, config=config)
    else:
        grad_a = torch.zeros(ba * la, dim, dtype=torch.float32, device=a.device) if want_a else placeholder
    if onehot_b:
        grad_b = onehot_grad(a, a_weight, a_best, grad, bb, lb, a2b=True, config=config)
    else:
        grad_b = torch.zeros(bb * lb, dim, dtype=torch.float32, device=a.device) if want_b else placeholder
    if a2b and (want_a or not onehot_b):  # a tokens took maxima over b tokens
        blocks = triton.cdiv(ba * la, rows)
        splits = _splits(a, blocks * d_tiles, bb)
        kernels.atomic_a2b_kernel[(blocks, splits, d_tiles)](
            a, b, a_weight, a_best, grad, grad_a, grad_b, ba, bb, la, lb, dim, splits,
            GRAD_A=want_a, GRAD_B=want_b and not onehot_b, **launch,
        )  # fmt: skip
    if b2a and (want_b or not onehot_a):  # b tokens took maxima over the tokens of each a text
        blocks = triton.cdiv(lb, rows)
        splits = _splits(a, bb * blocks * d_tiles, ba)
        # (b text, block of its tokens) flattened on axis 0, which allows 2^31 - 1 programs; axis 1 only 65535.
        kernels.atomic_b2a_kernel[(bb * blocks, splits * d_tiles)](
            a, b, b_weight, b_best, grad, grad_a, grad_b, ba, bb, la, lb, dim, splits, d_tiles, blocks,
            GRAD_A=want_a and not onehot_a, GRAD_B=want_b, **launch,
        )  # fmt: skip
    return (grad_a if want_a else None), (grad_b if want_b else None)


def _splits(x: torch.Tensor, programs: int, loop: int, per_unit: int | None = None) -> int:
    """Into how many parts to split a kernel's loop over ``loop`` texts so that about ``per_unit``
    (default ``ATOMIC_PROGRAMS``) programs per multiprocessor share the work (small batches
    would leave most of a GPU idle)."""
    per_unit = settings.ATOMIC_PROGRAMS if per_unit is None else per_unit
    return max(1, min(loop, triton.cdiv(per_unit * parallel_units(x), programs)))


def onehot_grad(sources, source_weight, best, grad, bt, lt, a2b, config):
    """The gradient of the side whose tokens were picked, ``(Bt * Lt, D)`` float32, by
    ``kernels.onehot_kernel``: direction a2b's b side (``a2b``: sources ``a``, ``best`` = a_best
    ``(Ba, Bb, La)``, Bt, Lt = Bb, Lb) or b2a's a side (sources ``b``, ``best`` = b_best
    ``(Ba, Bb, Lb)``, Bt, Lt = Ba, La). Each program owns a tile of target tokens (ONEHOT_ROWS
    rows: TOKENS tokens of each of TEXTS texts) and sums, over every source text, the vectors of
    the tokens that picked them as a product of an exact 0/1 matrix with those vectors (tensor
    cores). For 16-bit inputs, whose vectors the tensor cores take as they are. No atomics:
    deterministic."""
    (bs, ls, dim) = sources.shape
    launch = settings.onehot_launch(ls, lt, config)
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
    kernels.onehot_kernel[(grid[0], grid[1], splits * grid[2])](
        sources, source_weight, best, grad, partial, bs, bt, ls, lt, dim, **strides,
        SPLITS=splits, D_TILES=grid[2], CHUNKS=triton.cdiv(ls, launch["CHUNK"]), **launch,
    )  # fmt: skip
    return partial.sum(dim=0) if splits > 1 else partial[0]


def sorted_backward(a, b, a_weight, b_weight, a_best, b_best, grad, direction, want_a, want_b):
    """The deterministic backward pass (``torch.use_deterministic_algorithms(True)``, as
    Lightning's ``Trainer(deterministic=True)`` sets): gathers only, summed in fixed orders, so
    the gradients are the same bit for bit from run to run.

    Where a token took a max it reads its best match (``kernels.gather_a_kernel``, ``kernels.gather_b_kernel``);
    where a token was picked it sums the tokens that picked it (``_collect``; for 16-bit
    inputs ``onehot_grad``, products of exact 0/1 matrices, as deterministic). Returns
    ``grad_a (Ba * La, D)`` and ``grad_b (Bb * Lb, D)`` float32 (``None`` where not wanted).
    """
    (ba, la, dim), (bb, lb, _) = a.shape, b.shape
    blocks = settings.backward_config(lb, dim, a.dtype, direction)
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
            kernels.gather_a_kernel[(row_blocks, splits, d_tiles)](
                b, a_weight, a_best, grad, partial, ba, bb, la, lb, dim, splits, **gather,
            )  # fmt: skip
            grad_a = partial.sum(dim=0)
        if b2a and blocks["ONEHOT_B2A"]:  # each a token collects the b tokens that picked it
            grad_a = grad_a + onehot_grad(b, b_weight, b_best, grad, ba, la, a2b=False, config=blocks)
        elif b2a:
            grad_a = grad_a + _collect(b_best.view(ba, bb * lb), la, b.view(bb * lb, dim), b_weight.view(-1),
                                       grad, lb, grad_source_stride=1, grad_row_stride=bb, config=blocks)
    if want_b:
        grad_b = 0.0
        if a2b and blocks["ONEHOT_A2B"]:  # each b token collects the a tokens that picked it
            grad_b = onehot_grad(a, a_weight, a_best, grad, bb, lb, a2b=True, config=blocks)
        elif a2b:
            picks = a_best.permute(1, 0, 2).reshape(bb, ba * la)  # per b text: every a token's pick
            grad_b = _collect(picks, lb, a.view(ba * la, dim), a_weight.view(-1), grad,
                              la, grad_source_stride=bb, grad_row_stride=1, config=blocks)
        if b2a:  # each b token reads its best token in every a text
            gathered = torch.empty(bb * lb, dim, dtype=torch.float32, device=a.device)
            kernels.gather_b_kernel[(bb, triton.cdiv(lb, blocks["BLOCK_M"]), d_tiles)](
                a, b_weight, b_best, grad, gathered, ba, bb, la, lb, dim, **gather,
            )  # fmt: skip
            grad_b = grad_b + gathered
    return grad_a, grad_b


def arch(x: torch.Tensor) -> int:
    """The compute capability x 10 of ``x``'s GPU (90 for an H100); 90 under the interpreter."""
    if not x.is_cuda:
        return 90
    major, minor = torch.cuda.get_device_capability(x.device)
    return 10 * major + minor


def on_device(x: torch.Tensor):
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
    splits = max(1, min(64, triton.cdiv(count // max(targets, 1), settings.COLLECT_PART)))
    block_d = config["BLOCK_D"]
    d_tiles = triton.cdiv(sources.shape[1], block_d)
    out = torch.empty(splits, rows * targets, sources.shape[1], dtype=torch.float32, device=picks.device)
    kernels.collect_kernel[(rows, targets, splits * d_tiles)](
        order, offsets, sources, source_weight, grad, out,
        count, targets, source_length, sources.shape[1], grad_source_stride, grad_row_stride, splits, d_tiles,
        CHUNK=config["COLLECT_CHUNK"], BLOCK_D=block_d, num_warps=config["collect_warps"],
        num_stages=config["collect_stages"],
    )  # fmt: skip
    return out.sum(dim=0) if splits > 1 else out[0]


def index_dtype(candidates: int) -> torch.dtype:
    """The smallest integer type that holds a token index among ``candidates``."""
    return torch.int16 if candidates <= torch.iinfo(torch.int16).max else torch.int32


def parallel_units(x: torch.Tensor) -> int:
    """Streaming multiprocessors to fill (1 in the interpreter)."""
    if x.is_cuda:
        return torch.cuda.get_device_properties(x.device).multi_processor_count
    return 1
