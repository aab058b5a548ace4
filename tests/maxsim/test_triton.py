"""The triton backend (``lightning_modules/maxsim/triton/``), on a GPU or in Triton's CPU
interpreter (tests/conftest.py sets ``TRITON_INTERPRET=1`` where no GPU is present)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lightning_modules.maxsim import maxsim_matrix
from tests.helpers.maxsim_inputs import (
    DIRECTIONS,
    REDUCTIONS,
    FEW,
    DEVICE,
    TRITON,
    TOL,
    deterministic,
    random_vectors,
    ragged_batch,
    build,
    check_against_reference,
    triton_host,
    triton_settings,
)


@pytest.mark.parametrize("backend", [TRITON])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@FEW
@given(batch=ragged_batch(paired=False), exact_order=st.booleans())
def test_triton_matches_reference_scores_and_gradients(direction, reduction, batch, exact_order, backend):
    # float32 only: the kernels take float32/bf16/fp16 (float64 is handed to chunked, tested below).
    # Both backward paths: atomic adds (the default) and the deterministic one.
    check_against_reference(backend, direction, reduction, torch.float32, batch, exact_order=exact_order)


# Every kernel of the deterministic path runs in direction "both": the interpreter is slow.
_TILE_DIRECTIONS = {"a2b": ("a2b", False), "b2a": ("b2a", False), "both": ("both", False),
                    "both-deterministic": ("both", True)}
_TILE_SHAPES = {"many": (20, 10, 4, 150, 200), "long-a": (3, 150, 2, 64, 24)}
# "many" takes up to minutes per direction in Triton's CPU interpreter: `slow` (make test-all;
# tools/kernels/gpu_check.sh runs them on a GPU in seconds). "long-a" runs everywhere.
_TILE_CASES = [
    pytest.param(*_TILE_DIRECTIONS[direction], *shape, id=f"{name}-{direction}",
                 marks=[pytest.mark.slow] if name == "many" else [])
    for name, shape in _TILE_SHAPES.items() for direction in _TILE_DIRECTIONS
]


@pytest.mark.parametrize("backend", [TRITON])
@pytest.mark.parametrize("direction, exact_order, ba, la, bb, lb, d", _TILE_CASES)
def test_triton_tiles_cover_many_texts_long_texts_and_wide_vectors(ba, la, bb, lb, d, direction, exact_order, backend,
                                                                   monkeypatch):
    """Shapes beyond one tile in every dimension: several blocks of a texts (backward blocks
    that straddle texts), b texts of 150 tokens (3 tiles of 64, the last partial; in the
    second case 64 tokens, one tile), D = 200 (float32 forward, sm_90's setting: 4 tiles of
    64, the last partial; D = 24 is one, with the a block loaded once; the setting before
    sm_90 has a test of its own), the loops over texts split over programs in the
    backward pass (as on a GPU with many multiprocessors), long lists of tokens that picked
    one token summed in parts; and a texts of 150 tokens, one per forward program. Forward
    programs take several b texts each, the last group short. Both backward paths: atomic
    adds and the deterministic one."""
    monkeypatch.setattr(triton_host, "parallel_units", lambda x: 16)
    monkeypatch.setattr(triton_settings, "COLLECT_PART", 32)  # long source lists cut into parts, as on long texts
    # Forward programs of 3 b texts (the last of 4 texts alone), as on a GPU with a large batch.
    monkeypatch.setattr(triton_host, "b_texts_per_program", lambda x, bb, a_blocks: min(bb, 3))
    g = torch.Generator().manual_seed(7)
    am, bm = torch.rand(ba, la, generator=g) < 0.8, torch.rand(bb, lb, generator=g) < 0.8
    am[:, 3], bm[:, lb - 1] = True, True  # every text keeps a token; the last tile's last token is real
    a = random_vectors((ba, la, d), am, 1, torch.float64)
    b = random_vectors((bb, lb, d), bm, 2, torch.float64)
    a64, b64 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    want = maxsim_matrix(a64, am, b64, bm, direction=direction, backend="dense")
    a32, b32 = a.float().to(DEVICE).requires_grad_(True), b.float().to(DEVICE).requires_grad_(True)
    got = maxsim_matrix(a32, am.to(DEVICE), b32, bm.to(DEVICE), direction=direction, backend=backend)
    torch.testing.assert_close(got.cpu().double(), want, **TOL[torch.float32])
    with torch.no_grad():  # no gradient wanted: no argmax indices written, the same scores
        torch.testing.assert_close(maxsim_matrix(a32, am.to(DEVICE), b32, bm.to(DEVICE), direction=direction,
                                                 backend=backend), got.detach())
    weights = torch.randn(ba, bb, generator=g, dtype=torch.float64)
    with deterministic(exact_order):
        mine = torch.autograd.grad(got, (a32, b32), weights.float().to(DEVICE))
    theirs = torch.autograd.grad(want, (a64, b64), weights)
    for m, t in zip(mine, theirs):
        torch.testing.assert_close(m.cpu().double(), t, **TOL[torch.float32])


@pytest.mark.parametrize("backend", [TRITON])
@pytest.mark.parametrize("ba, la, bb, lb, d", [(4, 10, 2, 150, 200), (2, 150, 2, 64, 24)], ids=["wide", "long-a"])
def test_triton_float32_forward_before_sm_90_takes_its_narrow_setting(ba, la, bb, lb, d, backend, monkeypatch):
    """float32 forward programs on a chip before sm_90 (an A100), which the interpreter does
    not otherwise run (it takes sm_90's setting): 32 dims a step on 8 warps (D = 200: 7 steps,
    the last partial) and, for a program of 256 rows (a 150-token a text), 32-token b tiles
    (64 tokens: two). Scores and gradients ("both") against float64."""
    monkeypatch.setattr(triton_host, "arch", lambda x: 80)
    configs, config = [], triton_settings.forward_config
    monkeypatch.setattr(triton_settings, "forward_config", lambda *args: configs.append(config(*args)) or configs[-1])
    g = torch.Generator().manual_seed(3)
    am, bm = torch.rand(ba, la, generator=g) < 0.8, torch.rand(bb, lb, generator=g) < 0.8
    am[:, 0], bm[:, lb - 1] = True, True
    a = random_vectors((ba, la, d), am, 1, torch.float64)
    b = random_vectors((bb, lb, d), bm, 2, torch.float64)
    a64, b64 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    want = maxsim_matrix(a64, am, b64, bm, direction="both", backend="dense")
    a32, b32 = a.float().to(DEVICE).requires_grad_(True), b.float().to(DEVICE).requires_grad_(True)
    got = maxsim_matrix(a32, am.to(DEVICE), b32, bm.to(DEVICE), direction="both", backend=backend)
    launched = configs[-1]
    assert (launched["BLOCK_D"], launched["num_warps"]) == (32, 8)
    assert launched["BLOCK_M"] == (32 if la > 128 else 64)
    torch.testing.assert_close(got.cpu().double(), want, **TOL[torch.float32])
    weights = torch.randn(ba, bb, generator=g, dtype=torch.float64)
    mine = torch.autograd.grad(got, (a32, b32), weights.float().to(DEVICE))
    for m, t in zip(mine, torch.autograd.grad(want, (a64, b64), weights)):
        torch.testing.assert_close(m.cpu().double(), t, **TOL[torch.float32])


@pytest.mark.parametrize("backend", [TRITON])
def test_triton_backward_path_follows_torch_deterministic_mode(backend, monkeypatch):
    # Atomic adds by default; the sorted, atomic-free path under use_deterministic_algorithms
    # (the interpreter runs programs one at a time, so only a GPU can show the atomics' reordering).
    taken = []
    for name in ("atomic_backward", "sorted_backward"):
        original = getattr(triton_host, name)
        monkeypatch.setattr(triton_host, name, lambda *args, _f=original, _n=name: taken.append(_n) or _f(*args))
    a, am, b, bm = build((3, 4, 5, 8, torch.ones(3, 4, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool), 4),
                          torch.float32)
    a, b = a.to(DEVICE).requires_grad_(True), b.to(DEVICE).requires_grad_(True)
    am, bm = am.to(DEVICE), bm.to(DEVICE)
    grads = {}
    for exact_order in (False, True):
        with deterministic(exact_order):
            grads[exact_order] = torch.autograd.grad(maxsim_matrix(a, am, b, bm, backend=backend).sum(), (a, b))
    assert taken == ["atomic_backward", "sorted_backward"]
    for atomic, ordered in zip(grads[False], grads[True]):
        torch.testing.assert_close(atomic, ordered, rtol=1e-6, atol=1e-6)  # the same sums, in another order


_SIXTEEN_BIT_CASES = {
    "a2b-bf16": ("a2b", torch.bfloat16, "ab", True), "a2b-fp16": ("a2b", torch.float16, "ab", True),
    "b2a-bf16": ("b2a", torch.bfloat16, "ab", True), "both-bf16": ("both", torch.bfloat16, "ab", True),
    "both-bf16-b-frozen": ("both", torch.bfloat16, "a", True), "both-bf16-a-frozen": ("both", torch.bfloat16, "b", True),
    "a2b-bf16-default-b-side": ("a2b", torch.bfloat16, "ab", False),
    "both-bf16-default-b-side": ("both", torch.bfloat16, "ab", False),
}
# Tens of seconds a case in Triton's CPU interpreter: the default run takes each one-hot case
# on one backward path (the sorted one, cheaper there; a2b-bf16 on both) and a2b's default b
# side on its atomic adds; the others are `slow` (make test-all; a GPU runs them in seconds).
_SIXTEEN_BIT_FAST = {"a2b-bf16-atomic", "a2b-bf16-default-b-side-atomic"} | {
    f"{name}-deterministic" for name in _SIXTEEN_BIT_CASES if "default-b-side" not in name}
_SIXTEEN_BIT_PARAMS = [
    pytest.param(*case, exact_order, id=f"{name}-{path}",
                 marks=[] if f"{name}-{path}" in _SIXTEEN_BIT_FAST else [pytest.mark.slow])
    for name, case in _SIXTEEN_BIT_CASES.items()
    for exact_order, path in ((False, "atomic"), (True, "deterministic"))
]


@pytest.mark.parametrize("backend", [TRITON])
@pytest.mark.parametrize("direction, dtype, trained, one_hot_a2b, exact_order", _SIXTEEN_BIT_PARAMS)
def test_triton_16_bit_gradients_are_float32_sums_with_the_one_hot_picked_sides(direction, dtype, trained, one_hot_a2b,
                                                                                exact_order, backend, monkeypatch):
    """16-bit inputs: the picked side of each direction (a2b's b side with ``ONEHOT_A2B`` on,
    b2a's a side) as products of exact 0/1 matrices with the other side's vectors
    (``kernels.onehot_kernel``), on both backward paths; in "both", each direction's other side
    added to the other's one-hot sums, and with one side frozen (no gradient: only the other
    side's kernels run). "default-b-side": a2b's b side as the defaults sum it for 16-bit
    inputs (atomic adds, or the sorted sums), beside b2a's one-hot sums.
    The backward's float32 gradients, before the cast to the inputs' dtype, must be the float64
    sums over the same 16-bit values to float32 accuracy. The shapes cover 3 b texts in programs
    of 2 (the last group short), 150 tokens in tiles of 64 (the last partial) and in chunks of 16
    (b2a's sources), a texts of 40 tokens in chunks of 16 and in tiles of 64 (the last partial),
    NaN padding on both sides, the mean's per-text weights, D = 200 in tiles of 128, and the
    source texts split over programs (as on a GPU with many multiprocessors)."""
    monkeypatch.setattr(triton_host, "parallel_units", lambda x: 16)
    config = triton_settings.backward_config
    monkeypatch.setattr(triton_settings, "backward_config",
                        lambda *args: {**config(*args), "ONEHOT_CHUNK": 16, "ONEHOT_A2B": one_hot_a2b})
    calls, results = [], []
    original = triton_host.onehot_grad
    monkeypatch.setattr(triton_host, "onehot_grad",
                        lambda *args, **kwargs: calls.append(kwargs["a2b"]) or original(*args, **kwargs))
    for name in ("atomic_backward", "sorted_backward"):  # their float32 results, before the cast
        path = getattr(triton_host, name)
        monkeypatch.setattr(triton_host, name, lambda *args, _f=path: results.append(_f(*args)) or results[-1])
    ba, la, bb, lb, d = 5, 40, 3, 150, 200
    g = torch.Generator().manual_seed(11)
    am, bm = torch.rand(ba, la, generator=g) < 0.7, torch.rand(bb, lb, generator=g) < 0.8
    am[:, 0], bm[:, 0] = True, True
    a = random_vectors((ba, la, d), am, 5, torch.float64).to(dtype)
    b = random_vectors((bb, lb, d), bm, 6, torch.float64).to(dtype)
    a[~am], b[~bm] = float("nan"), float("nan")  # padding that must never be read: 0 x NaN is NaN
    weights = torch.randn(ba, bb, generator=g, dtype=torch.float64)
    x, y = a.to(DEVICE).requires_grad_("a" in trained), b.to(DEVICE).requires_grad_("b" in trained)
    inputs = [v for v, side in ((x, "a"), (y, "b")) if side in trained]
    with deterministic(exact_order):
        got = maxsim_matrix(x, am.to(DEVICE), y, bm.to(DEVICE), direction=direction, reduction="mean",
                            backend=backend)
        grads = torch.autograd.grad(got, inputs, weights.float().to(DEVICE))
    # One call per direction whose picked side is trained: a2b=True sums a2b's b side, a2b=False b2a's a side.
    assert sorted(calls) == sorted(([True] if one_hot_a2b and direction != "b2a" and "b" in trained else [])
                                   + ([False] if direction != "a2b" and "a" in trained else []))
    x64, y64 = a.double().requires_grad_(True), b.double().requires_grad_(True)
    want = maxsim_matrix(x64, am, y64, bm, direction=direction, reduction="mean", backend="dense")
    exact = dict(zip("ab", torch.autograd.grad(want, (x64, y64), weights)))
    full = dict(zip("ab", results[0]))  # the backward's float32 sums; None for a frozen side
    assert [side for side in "ab" if full[side] is not None] == list(trained)
    for mine, side in zip(grads, trained):
        torch.testing.assert_close(full[side].cpu().double().view_as(exact[side]), exact[side], **TOL[torch.float32])
        assert mine.dtype == dtype
        torch.testing.assert_close(mine.cpu(), full[side].cpu().view_as(exact[side]).to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("backend", [TRITON])
@pytest.mark.parametrize("a2b, n_sources, ls, n_targets, lt", [(True, 5, 40, 3, 70), (False, 3, 70, 5, 20),
                                                                (False, 3, 40, 5, 70)],
                         ids=["a2b-b-side", "b2a-a-side", "b2a-long-a-texts"])
@pytest.mark.parametrize("units", [1, 2, 3, 16])
def test_triton_one_hot_kernel_sums_splits_of_several_texts_and_reads_nothing_past_the_inputs(
        units, a2b, n_sources, ls, n_targets, lt, backend, monkeypatch):
    # _onehot_grad alone against a float64 loop, for each side it serves: a2b's b side (targets:
    # 3 b texts of 70 tokens, 2 a program, in 2 tiles of 64; sources: 5 a texts of 40 tokens)
    # and b2a's a side (targets: 5 a texts of 20 tokens, 4 a program, the last group short, or
    # of 70 tokens, 2 a program in 2 tiles; sources: 3 b texts), in chunks of 16 source tokens.
    # With 1, 2, 3 or 16 multiprocessors the source texts fall into 1 to 5 splits, several texts
    # a split. Every input is a view into a larger buffer whose tail holds huge values, so a
    # read past its end shows.
    monkeypatch.setattr(triton_host, "parallel_units", lambda x: units)
    g = torch.Generator().manual_seed(units)
    ba, bb = (n_sources, n_targets) if a2b else (n_targets, n_sources)
    d, spare = 24, 2
    mask = torch.rand(n_sources + spare, ls, generator=g) < 0.7
    mask[:, 0] = True
    weight = mask.float() / mask.float().sum(-1, keepdim=True)
    vectors = torch.randn(n_sources + spare, ls, d, generator=g).where(mask[..., None], 0.0).bfloat16()  # 0 padding
    # best and grad are (Ba, Bb, ...) as the forward pass writes them; their spare rows follow the last a text.
    picks = torch.randint(0, lt, (ba + spare, bb, ls), generator=g, dtype=torch.int16)
    grad = torch.randn(ba + spare, bb, generator=g)
    weight[n_sources:], vectors[n_sources:], picks[ba:], grad[ba:] = 1e3, 1e3, lt - 1, 1e3
    sources, w = vectors[:n_sources].to(DEVICE), weight[:n_sources].to(DEVICE)
    best, gr = picks[:ba].to(DEVICE), grad[:ba].to(DEVICE)
    config = {**triton_settings.backward_config(lt, d, torch.bfloat16, "both"), "ONEHOT_CHUNK": 16}
    got = triton_host.onehot_grad(sources, w, best, gr, n_targets, lt, a2b=a2b, config=config).cpu()
    want = torch.zeros(n_targets, lt, d, dtype=torch.float64)
    for i in range(n_sources):
        for j in range(n_targets):
            pair = (i, j) if a2b else (j, i)  # (a text, b text)
            for s_ in range(ls):
                if mask[i, s_]:
                    want[j, int(picks[pair][s_])] += float(grad[pair]) * float(weight[i, s_]) * vectors[i, s_].double()
    torch.testing.assert_close(got.double(), want.view(n_targets * lt, d), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", [TRITON])
def test_triton_float32_gradients_do_not_take_the_one_hot_kernel(backend, monkeypatch):
    # Tensor cores would take float32 vectors as TF32 (or be slow in IEEE float32): atomic adds or sorted sums instead.
    monkeypatch.setattr(triton_host, "onehot_grad", lambda *args, **kwargs: pytest.fail("one-hot kernel on float32"))
    a, am, b, bm = build((3, 4, 5, 16, torch.ones(3, 4, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool), 4),
                          torch.float32)
    a, b = a.to(DEVICE).requires_grad_(True), b.to(DEVICE).requires_grad_(True)
    for exact_order in (False, True):
        with deterministic(exact_order):
            torch.autograd.grad(maxsim_matrix(a, am.to(DEVICE), b, bm.to(DEVICE), backend=backend).sum(), (a, b))


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU: the interpreter runs programs one at a time, so no add races")
@pytest.mark.parametrize("backend", [TRITON])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])  # bf16: b2a's one-hot side
def test_triton_gradients_are_deterministic(backend, dtype):
    # A shape where atomics would race (64 texts of 300 tokens).
    ba, la, bb, lb, d = 64, 32, 64, 300, 128
    g = torch.Generator().manual_seed(3)
    a, am, b, bm = build((ba, la, lb, d, torch.rand(ba, la, generator=g) > 0.2, torch.rand(bb, lb, generator=g) > 0.2,
                           3), torch.float32)
    am[:, 0], bm[:, 0] = True, True
    a, b = a.to(DEVICE, dtype).requires_grad_(True), b.to(DEVICE, dtype).requires_grad_(True)
    am, bm = am.to(DEVICE), bm.to(DEVICE)
    with deterministic():
        runs = [torch.autograd.grad(maxsim_matrix(a, am, b, bm, backend=backend).sum(), (a, b)) for _ in range(2)]
        for first, second in zip(*runs):
            assert torch.equal(first, second)  # bit for bit: no atomics in the deterministic backward kernels
