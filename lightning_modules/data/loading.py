"""DataLoaders shared by the DataModules: training order and loader settings."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler
from transformers.trainer_pt_utils import LengthGroupedSampler


def training_sampler(lengths: list[int], batch_size: int, group_by_length: bool, trainer) -> Sampler:
    """A shuffled order of the training items; with ``group_by_length``, batches of similar lengths.

    Length grouping shuffles, then sorts by length inside mega-batches of 50 batches,
    so batches stay random in content but cheap in padding.
    """
    generator = _shared_generator(trainer)
    if group_by_length:
        return LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)
    return torch.utils.data.RandomSampler(range(len(lengths)), generator=generator)


def _shared_generator(trainer) -> torch.Generator | None:
    """Under several processes, every rank must draw the same order before Lightning
    shards it; the global RNG can drift between ranks (dropout draws as many numbers
    as a batch has elements), so use a generator seeded alike on every rank by
    ``seed_everything``. One process keeps the global RNG."""
    if trainer is None or trainer.world_size == 1:
        return None
    return torch.Generator().manual_seed(torch.initial_seed())


def make_loader(data, batch_size: int, collate, num_workers: int, sampler: Sampler | None = None) -> DataLoader:
    return DataLoader(
        data,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
