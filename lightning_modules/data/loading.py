"""DataLoaders shared by the DataModules: a training order that a checkpoint can resume exactly.

The training order of an epoch is a pure function of the seed and the epoch (not of the global
RNG), sharded across processes by this module's own sampler, and the training loader records how
many batches of the epoch it has served and the RNG states of every process. Lightning saves
that record in every checkpoint (a loader with ``state_dict``/``load_state_dict`` is "stateful"
to its fit loop) and hands it back on resume, before the epoch's first batch is drawn: the
resumed epoch serves exactly the batches the killed run had not trained on, and draws the same
random numbers (dropout, sampled negatives) as the uninterrupted run would have.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from lightning_modules.data.collate import QueryCollator
from lightning_modules.distributed import rank, world_size


class EpochOrderSampler(DistributedSampler):
    """Shuffled training indices for one process, a function of ``(seed, epoch)`` only.

    With ``group_by_length``, batches of similar lengths: shuffle, then sort by length inside
    mega-batches of up to 50 global batches, so batches stay random in content but cheap in
    padding. Under ``num_replicas`` processes every rank builds the same global order and takes
    every ``num_replicas``-th index (padding the order with its first indices to an equal share,
    as ``DistributedSampler`` does). Being a ``DistributedSampler``, Lightning keeps it as it is
    instead of wrapping it, and calls ``set_epoch`` before each epoch.

    ``skip_next(n)`` makes the next iteration start after the first ``n`` indices of this rank's
    share: how a resumed epoch skips what was already trained on, without loading it.
    """

    def __init__(
        self, lengths: list[int], batch_size: int, group_by_length: bool, seed: int,
        num_replicas: int = 1, rank: int = 0,
    ) -> None:
        super().__init__(range(len(lengths)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.lengths = lengths
        self.batch_size = batch_size
        self.group_by_length = group_by_length
        self._skip = 0

    def skip_next(self, count: int) -> None:
        self._skip = count

    def global_order(self) -> list[int]:
        """Every index of the epoch, in the order all ranks share."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.group_by_length:
            global_batch = self.batch_size * self.num_replicas
            return get_length_grouped_indices(self.lengths, global_batch, generator=generator)
        return torch.randperm(len(self.lengths), generator=generator).tolist()

    def __iter__(self):
        order = self.global_order()
        order += order[: self.total_size - len(order)]  # an equal share for every rank
        share = order[self.rank : self.total_size : self.num_replicas]
        skip, self._skip = self._skip, 0
        return iter(share[skip:])


class ResumableLoader(DataLoader):
    """A training DataLoader whose position inside the epoch survives a checkpoint.

    ``state_dict()`` (called by Lightning's fit loop on every process when a checkpoint is
    written) gives the epoch, the batches served in it, and the RNG states of every process
    (gathered, so that rank 0's file holds them all). ``load_state_dict`` (called on resume
    before the first batch) makes the next iteration of that same epoch skip the served batches,
    then restore this process's RNG states before the first new batch is collated. Lightning
    draws no batch ahead of the one it trains on from a loader with a length, so "served" is
    "trained on".

    Exact for ``num_workers=0`` (the default): worker processes draw their own random numbers,
    which are reseeded per epoch, not per batch.
    """

    def __init__(self, dataset, sampler: EpochOrderSampler, collate_fn, **kwargs) -> None:
        if not isinstance(dataset, _Indexed):  # Lightning may rebuild the loader from these arguments
            dataset, collate_fn = _Indexed(dataset), _WithIndices(collate_fn)
        # Its own generator: creating an iterator (each epoch) then draws no number from the
        # global RNG, which a resumed run would otherwise draw once more than the original did.
        kwargs.setdefault("generator", torch.Generator())
        super().__init__(dataset, sampler=sampler, collate_fn=collate_fn, **kwargs)
        self._served = 0
        self._epoch_served = sampler.epoch
        self._resume: dict | None = None

    def __iter__(self):
        # Lazily: Lightning creates the epoch's iterator before it calls the sampler's
        # set_epoch, and the first batch is drawn after it.
        return self._serve()

    def _serve(self):
        sampler = self.sampler
        resume, self._resume = self._resume, None
        # A checkpoint written at an epoch's end resumes at the start of the next epoch.
        served = resume["batches_served"] if resume and resume["epoch"] == sampler.epoch else 0
        sampler.skip_next(served * self.batch_size)
        self.generator.manual_seed(sampler.seed + sampler.epoch)  # worker seeds: per epoch
        batches = super().__iter__()
        self._epoch_served, self._served = sampler.epoch, served
        if resume is not None:
            set_rng_states(resume["rng"][rank()])
        for batch in batches:
            self._served += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self._epoch_served, "batches_served": self._served, "rng": _gather(rng_states())}

    def load_state_dict(self, state: dict) -> None:
        if len(state["rng"]) != world_size():
            raise RuntimeError(
                f"this checkpoint was written by {len(state['rng'])} processes and is resumed by "
                f"{world_size()}: an exact resume needs the same number (trainer.devices, trainer.num_nodes)"
            )
        self._resume = state


class _Indexed(Dataset):
    """The items of ``data`` with their positions: ``(index, item)``."""

    def __init__(self, data) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return index, self.data[index]


class _WithIndices:
    """Collate the items, and record their positions on the batch (``TokenBatch.item_indices``)."""

    def __init__(self, collate) -> None:
        self.collate = collate

    def __call__(self, indexed: list) -> object:
        batch = self.collate([item for _, item in indexed])
        batch.item_indices = tuple(index for index, _ in indexed)
        return batch


def training_loader(
    data, lengths: list[int], batch_size: int, collate, num_workers: int, group_by_length: bool, trainer,
) -> ResumableLoader:
    """The training loader of a DataModule: shuffled (length-grouped) batches, sharded over the
    trainer's processes, resumable. The order's seed is torch's initial seed, which
    ``seed_everything`` sets alike on every process (and again, to the same value, on resume)."""
    world = trainer.world_size if trainer is not None else 1
    rank = trainer.global_rank if trainer is not None else 0
    sampler = EpochOrderSampler(lengths, batch_size, group_by_length, torch.initial_seed(), world, rank)
    return ResumableLoader(data, sampler, batch_size=batch_size, collate_fn=collate, num_workers=num_workers,
                           persistent_workers=num_workers > 0)


def describe_items(where: list[str], indices: list[int], shown: int = 8) -> str:
    """``where`` (one place per training item: file and line, an id) of the items at ``indices``."""
    places = [where[i] if 0 <= i < len(where) else f"training item {i}" for i in indices]
    more = f"; ... ({len(places)} in all)" if len(places) > shown else ""
    return "; ".join(places[:shown]) + more


def query_loader(items: list, pad_token_id: int, corpus, batch_size: int) -> DataLoader:
    """The evaluation loader of retrieval queries (``QueryItem``) ranked against ``corpus``
    (a ``TokenizedCorpus``): shortest first, so that a batch pads little.

    In this process, always: a worker would send each batch back with its own copy of the corpus,
    and the one shared encoding of it (validation, test, mining) would be lost. Padding a few
    pre-tokenised queries needs no worker anyway."""
    ordered = sorted(items, key=lambda item: len(item.ids))
    return make_loader(ordered, batch_size, QueryCollator(pad_token_id, corpus), num_workers=0)


def make_loader(data, batch_size: int, collate, num_workers: int) -> DataLoader:
    """An evaluation loader: the items in the order given."""
    return DataLoader(data, batch_size=batch_size, collate_fn=collate, num_workers=num_workers,
                      persistent_workers=num_workers > 0)


def rng_states() -> dict:
    """This process's random states: torch (CPU and every CUDA device), NumPy and Python's."""
    # Plain values and tensors only: checkpoints load with torch.load(weights_only=True).
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    numpy = states["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _gather(value) -> list:
    if world_size() == 1:
        return [value]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered
