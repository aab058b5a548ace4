"""Cross-device negatives and GradCache under two gloo processes: the update must equal one process
training on the concatenated global batch (lightning_modules/losses/cross_device.py,
lightning_modules/gradcache.py).

The reference is the plain single-process loss over the global batch, built by the same collator
from all items: it shares no code with the gather, the padding or the cross-rank masking under test.
"""

from __future__ import annotations

import copy
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_modules import gradcache
from lightning_modules.data.batches import ContrastiveItem
from lightning_modules.data.collate import ContrastiveCollator
from lightning_modules.gradcache import GradCache
from lightning_modules.losses import UnequalBatchesError, cross_device_infonce
from lightning_modules.module import MaxSimModule
from lightning_modules.tokenization import pad_token_ids
from tests.helpers.models import TINY

WORLD = 2
WORKER_TIMEOUT_S = 600  # about 40 s on a quiet 2-core machine
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
NO_DROPOUT = {**TINY, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
DROPOUT = {**TINY, "hidden_dropout_prob": 0.3, "attention_probs_dropout_prob": 0.3}


def _tokens(generator: torch.Generator, length: int) -> list[int]:
    return [101, *torch.randint(1000, 5000, (length - 2,), generator=generator).tolist(), 102]


CASES = ("no hard negatives", "ragged", "negatives on one rank", "one pair a rank")


def _items(case: str) -> list[list[ContrastiveItem]]:
    """Two ranks' pairs. ``ragged``: four pairs a rank; rank 1 holds longer documents (ragged lengths),
    another positive of rank 0's query 0 (the same query text on both ranks), fewer hard negatives than
    rank 0 (ragged counts), and a hard negative that is a known positive of rank 0's query 1 (a false
    negative across ranks). ``no hard negatives``: the same pairs without them; ``negatives on one
    rank``: rank 1's dropped; ``one pair a rank``: query 0 on both ranks, each with a positive."""
    g = torch.Generator().manual_seed(7)
    docs = {key: _tokens(g, 6 + key % 5 + (8 if key >= 20 else 0)) for key in range(40)}
    queries = {key: _tokens(g, 4 + key % 3) for key in range(10)}

    def item(query: int, doc: int, negatives: list[int] = ()) -> ContrastiveItem:
        return ContrastiveItem(queries[query], docs[doc], query, doc, [(key, docs[key]) for key in negatives])

    if case == "one pair a rank":
        return [[item(0, 1, [10])], [item(0, 21)]]
    rank0 = [item(0, 1, [10, 11]), item(1, 2, [12]), item(2, 3, [13, 14]), item(3, 4)]
    rank1 = [item(0, 21), item(5, 22, [2]), item(6, 23, [15]), item(7, 24)]
    if case in ("no hard negatives", "negatives on one rank"):
        rank1 = [ContrastiveItem(i.a, i.b, i.a_key, i.b_key) for i in rank1]
    if case == "no hard negatives":
        rank0 = [ContrastiveItem(i.a, i.b, i.a_key, i.b_key) for i in rank0]
    return [rank0, rank1]


def _collator(items: list[list[ContrastiveItem]]) -> ContrastiveCollator:
    positives: dict[int, set[int]] = {}
    for item in (i for rank in items for i in rank):
        positives.setdefault(item.a_key, set()).add(item.b_key)
    return ContrastiveCollator(pad_token_id=0, positives=positives, max_negatives=8)


def _module(minilm_path: str, symmetric: bool, overrides: dict = NO_DROPOUT, **options) -> MaxSimModule:
    """Symmetric InfoNCE with symmetric MaxSim (the pairs default), one-way with ColBERT's a2b."""
    torch.manual_seed(0)
    return MaxSimModule(minilm_path, direction="both" if symmetric else "a2b", infonce_symmetric=symmetric,
                        random_init=True, projection_dim=16, config_overrides=overrides, **options)


def _gradients(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def _assert_same_gradients(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and len(want) > 0
    for name, expected in want.items():
        torch.testing.assert_close(got[name], expected, **TOLERANCE, msg=lambda m, name=name: f"{name}: {m}")


def _average_over_ranks(gradients: dict) -> dict:
    for tensor in gradients.values():
        dist.all_reduce(tensor)
        tensor /= WORLD
    return gradients


class _Step(torch.nn.Module):
    """What Lightning's DDP wraps: a module whose forward is the training loss."""

    def __init__(self, module: MaxSimModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch):
        return self.module._contrastive_loss(batch)


def _train_step_in_ddp(module: MaxSimModule, batch, seed: int | None = None) -> None:
    """One backward pass of ``module``'s contrastive loss through PyTorch's DDP, which averages the
    gradients. The DDP object lives only here: freed while the process group is still alive, its
    reducer does not take the group's last reference with it. (Freed last, at the worker's exit,
    the gloo group's destructor can deadlock with its own threads over the GIL.)"""
    step = torch.nn.parallel.DistributedDataParallel(_Step(module))
    if seed is not None:  # after DDP's construction, which draws random numbers
        torch.manual_seed(seed)
    step(batch).backward()


def _worker(rank: int, init_file: str, minilm_path: str, errors: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for case in CASES:
            items = _items(case)
            collate = _collator(items)
            local, whole = collate(items[rank]), collate(items[0] + items[1])
            for symmetric in (False, True):
                reference = _module(minilm_path, symmetric)
                want_loss = reference._contrastive_loss(whole)
                want_loss.backward()
                want = _gradients(reference)

                # Gathered documents: loss averaged over ranks, gradients averaged as DDP does.
                gathered = _module(minilm_path, symmetric, gather_across_devices=True)
                loss = gathered._contrastive_loss(local)
                loss.backward()
                mean_loss = loss.detach().clone()
                dist.all_reduce(mean_loss)
                torch.testing.assert_close(mean_loss / WORLD, want_loss.detach(), **TOLERANCE)
                _assert_same_gradients(_average_over_ranks(_gradients(gathered)), want)

                # GradCache with gathering, inside DDP: DDP's own reduction of the attached gradients.
                cached = _module(minilm_path, symmetric, gather_across_devices=True,
                                 gradcache={"mini_batch_size": 3, "token_budget": None})
                _train_step_in_ddp(cached, local)
                _assert_same_gradients(_gradients(cached), want)

        # GradCache with dropout on, gathered, in DDP: the plain gathered step with the encoder run
        # mini-batch by mini-batch (the same dropout masks) is its reference.
        items = _items("ragged")
        collate = _collator(items)
        local = collate(items[rank])
        reference = _module(minilm_path, True, overrides=DROPOUT, gather_across_devices=True).train()
        cached = copy.deepcopy(reference)
        cached.gradcache = GradCache(mini_batch_size=3, token_budget=40)
        torch.manual_seed(100 + rank)
        _chunked_reference(reference, local, cached.gradcache).backward()
        want = _average_over_ranks(_gradients(reference))
        _train_step_in_ddp(cached, local, seed=100 + rank)
        _assert_same_gradients(_gradients(cached), want)

        # Without the gather, each rank's loss ignores the other's documents: the comparison above can fail.
        items = _items("ragged")
        collate = _collator(items)
        alone = _module(minilm_path, True)
        alone._contrastive_loss(collate(items[rank])).backward()
        reference = _module(minilm_path, True)
        reference._contrastive_loss(collate(items[0] + items[1])).backward()
        averaged, want = _average_over_ranks(_gradients(alone)), _gradients(reference)
        assert any(not torch.allclose(averaged[n], want[n], **TOLERANCE) for n in want)

        # Unequal numbers of pairs: the same clear error on every rank, no rank left waiting.
        short = collate(items[rank][: 4 - rank])
        with pytest.raises(UnequalBatchesError, match=r"the processes hold \[4, 3\] pairs"):
            _module(minilm_path, False, gather_across_devices=True)._contrastive_loss(short)
    except BaseException:
        Path(errors).with_suffix(f".{rank}").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_global_batch(tmp_path, minilm_path):
    """Loss and every parameter's gradient, gathered under 2 processes (with DDP and GradCache too),
    equal one process on the concatenated batch: with and without hard negatives, one-way and
    symmetric InfoNCE, ragged lengths and negative counts, false negatives across ranks."""
    errors = tmp_path / "errors"
    workers = mp.spawn(_worker, args=(str(tmp_path / "init"), minilm_path, str(errors)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    try:
        while not workers.join(timeout=5):
            if time.monotonic() > deadline:  # a hang fails the test instead of the whole run
                for process in workers.processes:
                    process.kill()
                pytest.fail(f"the two workers did not finish within {WORKER_TIMEOUT_S} s")
    except mp.ProcessException:
        reports = "\n".join(p.read_text() for p in sorted(tmp_path.glob("errors.*")))
        pytest.fail(f"a worker failed:\n{reports}")


def test_one_process_gather_is_plain_infonce(minilm_path):
    """With one process the cross-device loss reduces to the plain InfoNCE over the batch."""
    items = _items("ragged")
    batch = _collator(items)(items[0] + items[1])
    for symmetric in (False, True):
        module = _module(minilm_path, symmetric)
        sizes = [batch.num_pairs, batch.input_ids.shape[0] - batch.num_pairs]
        queries, candidates = (module.model.embed(i, m) for i, m in zip(batch.input_ids.split(sizes),
                                                                        batch.attention_mask.split(sizes)))
        got = cross_device_infonce(module.pair_infonce, module.model.score_matrix, queries, candidates,
                                   batch.column_keys, batch.positive_keys)
        want = module.pair_infonce(module.model.score_matrix(queries, candidates), mask=batch.false_negatives)
        torch.testing.assert_close(got, want, **TOLERANCE)


# ---- GradCache in one process ----------------------------------------------------------------------


def _chunked_reference(module: MaxSimModule, batch, plan: GradCache):
    """The plain step with the encoder run mini-batch by mini-batch as ``plan`` splits the sides, all
    with a graph: the same dropout masks as GradCache's mini-batches draw (one call per mini-batch, in
    the same order), but none of its caching. A plain step over whole sides draws other masks, so it
    cannot be the reference."""
    pairs = batch.num_pairs
    sizes = [pairs, batch.input_ids.shape[0] - pairs]
    sides = []
    for ids, mask in zip(batch.input_ids.split(sizes), batch.attention_mask.split(sizes)):
        length = int(mask.any(dim=0).nonzero().max()) + 1
        rows = plan.rows_per_chunk(length)
        parts = [module.model.embed(i, m) for i, m in zip(ids[:, :length].split(rows), mask[:, :length].split(rows))]
        sides.append(type(parts[0])(torch.cat([p.vectors for p in parts]), torch.cat([p.mask for p in parts])))
    return module._objective_of_contrastive(batch)(*sides)


def _reference_and_cached(minilm_path, plan: GradCache, overrides: dict = DROPOUT, **options):
    reference = _module(minilm_path, True, overrides=overrides, **options).train()
    cached = copy.deepcopy(reference)  # the same weights
    cached.gradcache = plan
    return reference, cached


@pytest.mark.parametrize("plan", [GradCache(mini_batch_size=1), GradCache(mini_batch_size=3),
                                  GradCache(token_budget=40)], ids=["1 text", "3 texts", "40 tokens"])
def test_gradcache_equals_the_plain_step_with_dropout_on(minilm_path, plan):
    items = _items("ragged")
    batch = _collator(items)(items[0] + items[1])
    reference, cached = _reference_and_cached(minilm_path, plan)
    torch.manual_seed(123)
    want_loss = _chunked_reference(reference, batch, plan)
    want_loss.backward()
    after_reference = torch.rand(1)
    torch.manual_seed(123)
    loss = cached._contrastive_loss(batch)
    loss.backward()
    torch.testing.assert_close(loss.detach(), want_loss.detach(), **TOLERANCE)
    _assert_same_gradients(_gradients(cached), _gradients(reference))
    assert torch.equal(torch.rand(1), after_reference)  # the step leaves the random state as the plain one does


def test_gradcache_without_its_random_replay_gets_other_gradients(minilm_path, monkeypatch):
    """The replay's restored random state is what makes the equality above hold."""
    items = _items("ragged")
    batch = _collator(items)(items[0] + items[1])
    plan = GradCache(mini_batch_size=3)
    reference, cached = _reference_and_cached(minilm_path, plan)
    torch.manual_seed(123)
    _chunked_reference(reference, batch, plan).backward()
    monkeypatch.setattr(gradcache, "set_rng_states", lambda states: None)
    torch.manual_seed(123)
    cached._contrastive_loss(batch).backward()
    got, want = _gradients(cached), _gradients(reference)
    assert any(not torch.allclose(got[n], want[n], **TOLERANCE) for n in want)


def test_gradcache_under_bf16_autocast_trains_every_weight(minilm_path):
    """Under autocast (Lightning's bf16-mixed), the replay must not reuse the first pass's weight casts,
    made without a graph: every parameter gets its gradient, as in the plain step, to bf16's precision."""
    items = _items("ragged")
    batch = _collator(items)(items[0] + items[1])
    plan = GradCache(mini_batch_size=3)
    reference, cached = _reference_and_cached(minilm_path, plan, overrides=NO_DROPOUT)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _chunked_reference(reference, batch, plan).backward()
        cached._contrastive_loss(batch).backward()
    got, want = _gradients(cached), _gradients(reference)
    assert got.keys() == want.keys() == {n for n, p in cached.named_parameters() if p.requires_grad}
    for name, expected in want.items():
        torch.testing.assert_close(got[name], expected, rtol=0.05, atol=0.05 * expected.abs().max().item(),
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_gradcache_loss_scale_is_taken_out_again(minilm_path):
    """fp16's GradScaler scale multiplies the replayed gradients and is divided out before they are
    handed on: the same gradients as without it (Lightning's backward pass applies the scale itself)."""
    items = _items("ragged")
    batch = _collator(items)(items[0] + items[1])
    plan = GradCache(mini_batch_size=3)
    plain, scaled = _reference_and_cached(minilm_path, plan, overrides=NO_DROPOUT)
    plain.gradcache = plan
    plain._contrastive_loss(batch).backward()
    scaled._loss_scale = lambda: 2.0**16
    scaled._contrastive_loss(batch).backward()
    _assert_same_gradients(_gradients(scaled), _gradients(plain))
    # What Lightning does to the returned loss (1 / accumulate_grad_batches, the fp16 scale) reaches
    # the attached gradients: half the loss, half the gradients. (AdamW would hide a missed factor.)
    halved = copy.deepcopy(scaled)
    halved.zero_grad()
    (0.5 * halved._contrastive_loss(batch)).backward()
    _assert_same_gradients(_gradients(halved), {name: 0.5 * g for name, g in _gradients(plain).items()})


def test_gradcache_trains_scored_pairs_and_distillation_as_the_plain_step(minilm_path):
    """Every kind of training batch goes through the same path; without dropout, mini-batches change
    nothing, so the plain step over the whole batch is the reference."""
    from lightning_modules.data.batches import DistillationBatch, ScoredPairsBatch

    g = torch.Generator().manual_seed(3)
    texts = [_tokens(g, 5 + i % 7) for i in range(12)]
    ids, mask = pad_token_ids(texts, 0)
    batches = [
        (ScoredPairsBatch(ids, mask, scores=torch.rand(6, generator=g)), {"infonce_weight": 1.0,
                                                                          "infonce_min_score": 0.3}),
        (DistillationBatch(ids, mask, teacher_scores=torch.randn(4, 2, generator=g)), {}),
    ]
    for batch, options in batches:
        reference, cached = _reference_and_cached(minilm_path, GradCache(mini_batch_size=2), NO_DROPOUT, **options)
        step = reference._losses[type(batch)]
        want_loss = step(batch)
        want_loss.backward()
        loss = cached._losses[type(batch)](batch)
        loss.backward()
        torch.testing.assert_close(loss.detach(), want_loss.detach(), **TOLERANCE)
        _assert_same_gradients(_gradients(cached), _gradients(reference))


def test_gradcache_settings():
    assert GradCache.from_settings(None) is None
    assert GradCache.from_settings({"mini_batch_size": None, "token_budget": None}) is None
    assert GradCache.from_settings({"mini_batch_size": 4}).rows_per_chunk(100) == 4
    assert GradCache(token_budget=1000).rows_per_chunk(180) == 5
    assert GradCache(mini_batch_size=4, token_budget=1000).rows_per_chunk(500) == 2
    assert GradCache(token_budget=10).rows_per_chunk(500) == 1  # at least one text
    for bad in ({"mini_batch_size": 0}, {"token_budget": -5}, {"mini_batch_size": 2.5}):
        with pytest.raises(ValueError, match="must be a positive integer"):
            GradCache.from_settings(bad)
    with pytest.raises(ValueError, match="unknown key"):
        GradCache.from_settings({"mini_batch": 4})
    with pytest.raises(ValueError, match="must be a mapping"):
        GradCache.from_settings(8)
