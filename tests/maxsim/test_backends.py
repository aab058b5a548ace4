"""Properties every backend shares with dense: padding never read, ties, bf16, memory of the
lean backends (chunked, triton), autocast, in-place scores, frozen sides, empty batches, and
the LightningModule's training step through ``model.maxsim.backend``."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from lightning_modules.maxsim import maxsim_matrix, maxsim_pairwise
from tests.helpers.maxsim_inputs import (
    DIRECTIONS,
    REDUCTIONS,
    DEVICE,
    TRITON,
    TOL,
    deterministic,
    random_vectors,
    build,
    untied_inputs,
    ok_inputs,
    lean,
    triton_matrix,
)
from tests.helpers.maxsim_reference import reference_pairwise, reference_matrix
from tests.helpers.memory import saved_bytes


@pytest.mark.parametrize(
    "fn, exact_order",
    [(maxsim_pairwise, False), (partial(maxsim_matrix, backend="dense"), False),
     (partial(maxsim_matrix, backend="chunked"), False),
     pytest.param(triton_matrix, False, marks=TRITON.marks),
     pytest.param(triton_matrix, True, marks=TRITON.marks)],
    ids=["pairwise", "matrix-dense", "matrix-chunked", "matrix-triton", "matrix-triton-deterministic"],
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("temperature", [None, 0.1])
def test_garbage_in_masked_tokens_changes_nothing(fn, exact_order, direction, reduction, temperature):
    g = torch.Generator().manual_seed(11)
    am = torch.tensor([[1, 0, 1, 0, 1], [0, 0, 1, 1, 0]], dtype=torch.bool)
    bm = torch.tensor([[0, 1, 1], [1, 0, 0]], dtype=torch.bool)
    a_real = random_vectors((2, 5, 4), torch.ones(2, 5, dtype=torch.bool), 1, torch.float32)
    b_real = random_vectors((2, 3, 4), torch.ones(2, 3, dtype=torch.bool), 2, torch.float32)
    opts = dict(direction=direction, reduction=reduction, temperature=temperature)

    def run(a_pad, b_pad):
        a = torch.where(am[..., None], a_real, a_pad).requires_grad_(True)
        b = torch.where(bm[..., None], b_real, b_pad).requires_grad_(True)
        with deterministic(exact_order):  # the triton backward's path is chosen when it runs
            out = fn(a, am, b, bm, **opts)
            out.sum().backward()
        return out.detach(), a.grad, b.grad

    base, ga0, gb0 = run(torch.zeros(2, 5, 4), torch.zeros(2, 3, 4))
    # Large values, and what a broken encoder or an uninitialised buffer may leave there.
    for scale in (1e3, -1e3, float("inf"), float("nan")):
        out, ga, gb = run(scale * torch.randn(2, 5, 4, generator=g), scale * torch.rand(2, 3, 4, generator=g))
        assert torch.equal(out, base), (out, base)
        # The real tokens' gradients do not depend on padding, and padding gets none. Bit for bit,
        # except from a GPU's atomic adds (triton, not deterministic): the order of the adds, so
        # the last bits of the sums, vary from run to run on the same inputs (on an H200, up to
        # 4 of 24 elements, by at most 1.2e-7); leaked padding (1e3, inf, NaN) would be far beyond 1e-6.
        atomic = fn is triton_matrix and not exact_order and DEVICE == "cuda"
        tolerance = dict(rtol=1e-6, atol=1e-6) if atomic else dict(rtol=0, atol=0)
        torch.testing.assert_close(ga, ga0, **tolerance)
        torch.testing.assert_close(gb, gb0, **tolerance)
        assert torch.equal(ga[~am], torch.zeros_like(ga[~am]))
        assert torch.equal(gb[~bm], torch.zeros_like(gb[~bm]))
    # ... and it still equals the reference (which never looks at masked tokens).
    want_fn = reference_pairwise if fn is maxsim_pairwise else reference_matrix
    torch.testing.assert_close(
        base.double(), want_fn(a_real, am, b_real, bm, direction, reduction, temperature), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("backend", ["dense", "chunked", TRITON])
def test_empty_batches_give_empty_score_matrices(backend):
    a, am, b, bm = (x.to(DEVICE) if backend == "triton" else x for x in ok_inputs(ba=2, bb=3))
    for x, xm, y, ym, shape in ((a[:0], am[:0], b, bm, (0, 3)), (a, am, b[:0], bm[:0], (2, 0))):
        x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        scores = maxsim_matrix(x, xm, y, ym, backend=backend)
        assert scores.shape == shape
        grads = torch.autograd.grad(scores.sum(), (x, y), allow_unused=True)
        assert all(g is None or not g.any() for g in grads)


@pytest.mark.parametrize("backend", ["chunked", TRITON])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_ties_negative_cosines_single_tokens_and_batch_of_one(direction, backend):
    dtype = torch.float64 if backend == "chunked" else torch.float32
    atol = 1e-12 if dtype == torch.float64 else 1e-6
    # b's tokens 0 and 2 are the same vector: a tie for every token of a. Every cosine is negative.
    a = torch.nn.functional.normalize(torch.tensor([[[1.0, 0.2], [0.8, 0.6]]], dtype=dtype), dim=-1)
    tied = torch.nn.functional.normalize(torch.tensor([-1.0, -0.1], dtype=dtype), dim=0)
    b = torch.stack([tied, -torch.nn.functional.normalize(torch.tensor([0.1, 1.0], dtype=dtype), dim=0), tied])[None]
    am, bm = torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool)
    for x, xm, y, ym in ((a, am, b, bm), (a[:, :1], am[:, :1], b[:, :1], bm[:, :1])):  # and length-1 texts
        x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        got = lean(backend, x, xm, y, ym, direction, "mean")
        want = maxsim_matrix(x, xm, y, ym, direction=direction, backend="dense")
        torch.testing.assert_close(got, want, rtol=0, atol=atol)
        torch.testing.assert_close(got.double(), reference_matrix(x, xm, y, ym, direction, "mean", None),
                                   rtol=0, atol=atol)
        assert float(got) < 0
        (ga, gb), (wa, wb) = torch.autograd.grad(got.sum(), (x, y)), torch.autograd.grad(want.sum(), (x, y))
        torch.testing.assert_close(ga, wa, rtol=0, atol=atol)  # the tied vectors are equal: same gradient for a
        # A tie is a valid subgradient either way: these backends give it to one token, the dense max
        # splits it; what the tied tokens receive in total is the same.
        if y.shape[1] == 3:
            torch.testing.assert_close(gb[0, 0] + gb[0, 2], wb[0, 0] + wb[0, 2], rtol=0, atol=atol)
            torch.testing.assert_close(gb[0, 1], wb[0, 1], rtol=0, atol=atol)


@pytest.mark.parametrize("backend", ["chunked", TRITON])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bf16_inputs_stay_within_bf16_rounding_of_float32(reduction, backend):
    L, D = 6, 16
    am = torch.tensor([[1, 1, 1, 1, 0, 1], [1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    bm = torch.tensor([[1, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    a = random_vectors((3, L, D), am, 31, torch.float32, garbage=0.0).requires_grad_(True)
    b = random_vectors((3, L, D), bm, 32, torch.float32, garbage=0.0).requires_grad_(True)
    full = maxsim_matrix(a, am, b, bm, reduction=reduction, backend="dense")
    a16, b16 = a.detach().bfloat16().requires_grad_(True), b.detach().bfloat16().requires_grad_(True)
    low = lean(backend, a16, am, b16, bm, "both", reduction)
    assert low.dtype == torch.float32  # maxima summed in float32
    # As in test_bf16_autocast: 1e-2 per cosine from bf16's 8-bit significand, times L for a sum.
    torch.testing.assert_close(low, full, rtol=0, atol=1e-2 * (L if reduction == "sum" else 1))
    # Gradients: a sum of a few unit vectors, each rounded to bf16 (relative 2^-8 = 4e-3 per
    # component) and times a weight; 2e-2 absolute leaves room for a rounding-flipped argmax
    # only where two cosines are within bf16's resolution, which these seeds do not have.
    weights = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    for mine, theirs in zip(torch.autograd.grad(low, (a16, b16), weights), torch.autograd.grad(full, (a, b), weights)):
        assert mine.dtype == torch.bfloat16
        torch.testing.assert_close(mine.float(), theirs, rtol=0, atol=2e-2 * (L if reduction == "sum" else 1))


# Triton's CPU interpreter takes most of a minute on this shape: `slow` there (a GPU runs it in seconds).
@pytest.mark.parametrize("backend", ["chunked", pytest.param(*TRITON.values, marks=[*TRITON.marks, pytest.mark.slow],
                                                           id="triton")])
def test_lean_backends_keep_a_fraction_of_the_dense_memory_for_backward(backend):
    # The CPU case: B = 128 texts, 32 x 180 tokens, D = 128 (here B = 32 to stay fast:
    # the ratio grows with Lb and does not depend on B).
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(32, 32, 128, generator=g), dim=-1).to(DEVICE).requires_grad_(True)
    b = torch.nn.functional.normalize(torch.randn(32, 180, 128, generator=g), dim=-1).to(DEVICE).requires_grad_(True)
    am = torch.ones(32, 32, dtype=torch.bool, device=DEVICE)
    bm = torch.ones(32, 180, dtype=torch.bool, device=DEVICE)
    dense = saved_bytes(lambda: maxsim_matrix(a, am, b, bm, backend="dense"))
    lean = saved_bytes(lambda: maxsim_matrix(a, am, b, bm, backend=backend))
    similarity_tensor = 32 * 32 * 32 * 180 * 4
    assert dense >= similarity_tensor  # autograd keeps at least the (B, B, La, Lb) similarities
    # What is kept: the inputs, int32 (chunked) or int16 (triton) indices of the best matches,
    # (B, B, La + Lb), per-token weights (B, La + Lb), and (chunked, whose inputs have their
    # padding zeroed first) the bool masks.
    assert lean <= a.numel() * 4 + b.numel() * 4 + 32 * 32 * (32 + 180) * 4 + 32 * (32 + 180) * (4 + 1)
    assert lean * 10 <= dense, (lean, dense)


@pytest.mark.parametrize("backend", ["chunked", TRITON])
def test_lean_backends_follow_autocast_like_dense(backend):
    # Under bf16 autocast the dense einsum multiplies in bf16; the triton kernels and chunked's
    # products into its buffer (which autocast does not reach) cast their float32 inputs the
    # same way (token vectors leave F.normalize in float32 even then).
    a, am, b, bm = build((4, 6, 9, 32, torch.ones(4, 6, dtype=torch.bool), torch.ones(3, 9, dtype=torch.bool), 5),
                          torch.float32)
    a, am, b, bm = a.to(DEVICE), am.to(DEVICE), b.to(DEVICE), bm.to(DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        got = maxsim_matrix(a, am, b, bm, backend=backend)
        dense = maxsim_matrix(a, am, b, bm, backend="dense")
    # The dense einsum rounds each cosine to bf16 (8 bits: 4e-3 near 1) before the max; the
    # kernels keep the float32 sum of the bf16 products. Mean of maxima: within that rounding.
    # (chunked rounds as dense does, but its products may sum in another order.)
    torch.testing.assert_close(got, dense.float(), rtol=0, atol=8e-3)
    assert not torch.equal(got, maxsim_matrix(a, am, b, bm, backend=backend))  # it did take the bf16 path
    # ... and exactly what the kernels give the same inputs cast to bf16 by hand.
    torch.testing.assert_close(got, maxsim_matrix(a.bfloat16(), am, b.bfloat16(), bm, backend=backend), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["chunked", TRITON])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_scores_may_be_changed_in_place_before_backward(direction, backend):
    # A loss may scale the score matrix in place (scores *= scale): nothing autograd keeps may be that tensor.
    a, am, b, bm = build((3, 4, 5, 16, torch.ones(3, 4, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool), 9),
                          torch.float32)
    a, b = a.to(DEVICE).requires_grad_(True), b.to(DEVICE).requires_grad_(True)
    am, bm = am.to(DEVICE), bm.to(DEVICE)
    scores = maxsim_matrix(a, am, b, bm, direction=direction, backend=backend)
    scores.mul_(20.0)
    got = torch.autograd.grad(scores.sum(), (a, b))
    want = torch.autograd.grad(20.0 * maxsim_matrix(a, am, b, bm, direction=direction, backend="dense").sum(), (a, b))
    for mine, theirs in zip(got, want):
        torch.testing.assert_close(mine, theirs, **TOL[torch.float32])


@pytest.mark.parametrize("backend", ["chunked", TRITON])
@pytest.mark.parametrize("exact_order", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("frozen", ["a", "b"])
def test_lean_backward_against_a_frozen_side(frozen, exact_order, backend):
    # Queries trained against a precomputed (frozen) corpus, and the reverse: only one gradient.
    a, am, b, bm = build((4, 5, 7, 16, torch.ones(4, 5, dtype=torch.bool), torch.ones(3, 7, dtype=torch.bool), 8),
                          torch.float32)
    am[1, 3:], bm[2, :2] = False, False
    side = "b" if frozen == "a" else "a"
    on = {"a": a.to(DEVICE), "b": b.to(DEVICE)}
    trained = on[side] = on[side].requires_grad_(True)
    am, bm = am.to(DEVICE), bm.to(DEVICE)
    with deterministic(exact_order):
        scores = maxsim_matrix(on["a"], am, on["b"], bm, backend=backend)
        (got,) = torch.autograd.grad(scores.sum(), trained)
    (want,) = torch.autograd.grad(maxsim_matrix(on["a"], am, on["b"], bm, backend="dense").sum(), trained)
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    with torch.no_grad():  # nothing to differentiate: the same scores
        torch.testing.assert_close(maxsim_matrix(on["a"], am, on["b"], bm, backend=backend), scores.detach())


@pytest.mark.parametrize("backend", ["dense", "chunked", TRITON])
def test_float64_stays_float64_under_autocast(backend):
    # Autocast leaves float64 alone (the dense einsum stays float64), and so must the
    # backends that cast for it themselves (triton hands float64 to chunked).
    a, am, b, bm = (x.to(DEVICE) for x in untied_inputs(100, 2, 3, 3, 4, 3))  # float64
    a.requires_grad_(True)
    want = maxsim_matrix(a, am, b, bm, backend=backend)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        got = maxsim_matrix(a, am, b, bm, backend=backend)
        (grad,) = torch.autograd.grad(got.sum(), a)
    assert got.dtype == grad.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["chunked", TRITON])
def test_contrastive_training_step_is_the_same_with_either_backend(minilm_path, backend):
    """The LightningModule's InfoNCE step through model.maxsim.backend: same loss and gradients as dense."""
    from pytorch_lightning.utilities import move_data_to_device

    from lightning_modules.data.batches import ContrastiveItem
    from lightning_modules.data.collate import ContrastiveCollator
    from lightning_modules.module import MaxSimModule

    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    items = [ContrastiveItem([101, 2000 + i, 102], [101, 3000 + i, 3100 + i, 102], a_key=i, b_key=i,
                             negatives=[(100 + i, [101, 4000 + i, 102])]) for i in range(6)]
    batch = ContrastiveCollator(0, {i: {i} for i in range(6)}, max_negatives=1)(items)
    batch = move_data_to_device(batch, DEVICE)  # as Lightning moves a batch: every tensor field
    results = []
    for name in ("dense", backend):
        torch.manual_seed(0)
        module = MaxSimModule(minilm_path, projection_dim=8, random_init=True, config_overrides=tiny,
                              maxsim={"backend": name}).to(DEVICE)
        module.eval()  # no dropout: both runs see the same network
        loss = module._contrastive_loss(batch)
        grads = torch.autograd.grad(loss, [p for p in module.parameters() if p.requires_grad])
        results.append((loss.detach(), grads))
    (loss_d, grads_d), (loss_c, grads_c) = results
    torch.testing.assert_close(loss_c, loss_d, rtol=1e-5, atol=1e-6)
    for gc, gd in zip(grads_c, grads_d):
        torch.testing.assert_close(gc, gd, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ["dense", "chunked"])
@pytest.mark.parametrize("direction", ["a2b", "both"])
def test_zero_padded_sides_skip_the_zeroing_and_score_the_same(backend, direction, monkeypatch):
    """Texts stacked by TokenEmbeddings.stack are zero-padded and say so; scoring them without the
    zeroing copy gives the very scores of the copy, and a side that holds garbage in its padding
    is still zeroed when it does not claim to be zero-padded."""
    from lightning_modules.encoder import TokenEmbeddings

    torch.manual_seed(0)
    texts = [torch.nn.functional.normalize(torch.randn(n, 8), dim=-1) for n in (3, 7, 1, 5)]
    a, b = TokenEmbeddings.stack(texts[:2]), TokenEmbeddings.stack(texts)
    assert a.zero_padded and b.select(torch.tensor([1, 2])).zero_padded and b.split(1)[1].zero_padded
    plain = maxsim_matrix(a.vectors, a.mask, b.vectors, b.mask, direction=direction, backend=backend)
    from lightning_modules.maxsim import dispatch

    zeroed = []
    monkeypatch.setattr(dispatch, "zero_masked", lambda x, mask: zeroed.append(x) or x.masked_fill(~mask[..., None], 0))
    fast = maxsim_matrix(a.vectors, a.mask, b.vectors, b.mask, direction=direction, backend=backend,
                         a_zero_padded=True, b_zero_padded=True)
    assert torch.equal(plain, fast) and zeroed == []  # no copy made
    garbage = b.vectors.masked_fill(~b.mask[..., None], 3.0)  # the encoder's output holds values there
    assert torch.equal(maxsim_matrix(a.vectors, a.mask, garbage, b.mask, direction=direction, backend=backend,
                                     a_zero_padded=True), plain)
