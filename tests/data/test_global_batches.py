"""Exact global batches under several processes (lightning_modules/data/loading.py): every training step
is one global batch of the epoch's shared order, split evenly across the ranks, so that gathered
negatives (model.gather_across_devices) see the same batch one process would, length grouping
holds across ranks, and a resumed rank continues at the same step as the others."""

from __future__ import annotations

import random

import pytest

from lightning_modules.data.loading import EpochOrderSampler

WORLD, BATCH = 3, 4


def _lengths(n: int) -> list[int]:
    rng = random.Random(0)
    return [rng.randint(5, 200) for _ in range(n)]


def _steps(lengths, group_by_length: bool, epoch: int = 0, skip: int = 0) -> list[list[list[int]]]:
    """``steps[k][r]``: rank ``r``'s batch at step ``k``, as each rank's own sampler serves it."""
    shares = []
    for rank in range(WORLD):
        sampler = EpochOrderSampler(lengths, BATCH, group_by_length, seed=42, num_replicas=WORLD, rank=rank)
        sampler.set_epoch(epoch)
        sampler.skip_next(skip)
        share = list(sampler)
        shares.append([share[i : i + BATCH] for i in range(0, len(share), BATCH)])
    assert len({len(batches) for batches in shares}) == 1  # every rank takes as many steps
    return [list(step) for step in zip(*shares)]


@pytest.mark.parametrize("group_by_length", [False, True])
@pytest.mark.parametrize("n", [97, 96])  # with and without a last, smaller step
def test_each_step_is_one_global_batch_split_evenly(n, group_by_length):
    lengths = _lengths(n)
    sampler = EpochOrderSampler(lengths, BATCH, group_by_length, seed=42, num_replicas=WORLD, rank=0)
    order = sampler.global_order()
    order += order[: sampler.total_size - len(order)]  # the padding that evens out the shares
    steps = _steps(lengths, group_by_length)
    for k, step in enumerate(steps):
        assert len({len(batch) for batch in step}) == 1, f"step {k}: ranks hold {[len(b) for b in step]} items"
        served = [index for batch in step for index in batch]
        assert sorted(served) == sorted(order[k * WORLD * BATCH : (k + 1) * WORLD * BATCH])
        assert len(set(served)) == len(served), f"step {k} serves an item twice"
    assert {index for step in steps for batch in step for index in batch} == set(range(n))


def test_length_grouping_holds_across_ranks():
    """All ranks of a step hold texts of similar lengths: the global batch is grouped, not each shard."""
    lengths = _lengths(600)

    def spread(group_by_length: bool) -> float:
        steps = _steps(lengths, group_by_length)
        ranges = [max(lengths[i] for b in step for i in b) - min(lengths[i] for b in step for i in b) for step in steps]
        return sum(ranges) / len(ranges)

    assert spread(True) < 0.3 * spread(False)


def test_the_order_is_a_function_of_seed_and_epoch_and_a_resumed_rank_rejoins_its_step():
    lengths = _lengths(97)
    first, again, other = _steps(lengths, True), _steps(lengths, True), _steps(lengths, True, epoch=1)
    assert first == again and first != other
    resumed = _steps(lengths, True, skip=3 * BATCH)  # each rank skips the 3 batches it trained on
    assert resumed == first[3:]
