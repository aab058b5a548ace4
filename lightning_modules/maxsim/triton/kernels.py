"""The triton kernels of the ``triton`` backend (launched by ``host.py`` with ``settings.py``'s settings).

Every kernel takes sizes at run time (no recompile for a new batch size or length) and its
tile sizes as ``tl.constexpr``. float32 accumulation throughout; ``UPCAST`` lifts 16-bit tiles
to float32 where Triton's interpreter would multiply them as raw integers. How the forward and
backward passes are laid out: docs/engine.md, "triton".
"""

import triton
import triton.language as tl


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
def forward_kernel(
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
        a_block = tl.load(a_ptr + a_row[:, None] * D + d[None, :], mask=row_ok[:, None] & (d < D)[None, :],
                          other=0.0)
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
def gather_a_kernel(
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
def gather_b_kernel(
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
def atomic_a2b_kernel(
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
def atomic_b2a_kernel(
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
def onehot_kernel(
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
def collect_kernel(
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
