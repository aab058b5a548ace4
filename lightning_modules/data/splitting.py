"""Hold out a validation split, and keep pairs from leaking across splits."""

from __future__ import annotations

import math

import torch

from lightning_modules.data.pairs import PairExamples, ReadReport, pair_key


# A hold-out never takes more than this share of the training file, whatever its floor asks.
MAX_HOLDOUT_SHARE = 0.2


def holdout_target(n_pairs: int, fraction: float, min_pairs: int, max_pairs: int | None) -> int:
    """How many of ``n_pairs`` to hold out: ``fraction`` of them, raised to ``min_pairs`` (a
    validation set too small to rank checkpoints by is worse than a few training pairs fewer)
    but by that raise never past ``MAX_HOLDOUT_SHARE`` of the pairs; at most ``max_pairs``, at
    least one."""
    floor = min(min_pairs, math.floor(MAX_HOLDOUT_SHARE * n_pairs))
    target = max(math.floor(fraction * n_pairs), floor)
    if max_pairs is not None:
        target = min(target, max_pairs)
    return max(1, target)


def holdout_split(
    examples: PairExamples, fraction: float, max_pairs: int | None, seed: int, symmetric: bool = True,
    min_pairs: int = 1,
) -> tuple[list[int], list[int]]:
    """Seeded train/validation indices that share no ``text_a`` and no pair.

    Whole groups of pairs with the same ``text_a`` go to one side, so no text_a
    (hence no identical pair) is on both. The validation side gets about
    ``holdout_target(...)`` pairs (``fraction``, raised to ``min_pairs``, capped), at
    least one group. With ``symmetric``, a validation pair whose reverse ``(b, a)`` is in
    training moves to training too.

    Returns ``(train_indices, validation_indices)``, each sorted.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"validation_max_pairs must be at least 1 (or null), got {max_pairs}")
    if min_pairs < 1:
        raise ValueError(f"validation_min_pairs must be at least 1, got {min_pairs}")
    groups: dict[str, list[int]] = {}
    for index, text in enumerate(examples.text_a):
        groups.setdefault(text.strip(), []).append(index)
    if len(groups) < 2:
        raise ValueError("cannot hold out validation pairs: every pair has the same text_a")
    target = holdout_target(len(examples), fraction, min_pairs, max_pairs)
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
    keys = list(groups)
    validation: list[int] = []
    for position in order:
        if len(validation) >= target:
            break
        group = groups[keys[position]]
        if len(validation) + len(group) > target:
            continue  # a big group would overshoot: try smaller ones
        validation.extend(group)
    if not validation:  # every group is larger than the target: the smallest (with two or more groups,
        validation = list(min(groups.values(), key=len))  # at most half the pairs)
    taken = set(validation)
    train = [i for i in range(len(examples)) if i not in taken]
    if symmetric:
        train_pairs = {pair_key(examples.text_a[i], examples.text_b[i], True) for i in train}
        moved = [i for i in validation if pair_key(examples.text_a[i], examples.text_b[i], True) in train_pairs]
        validation = [i for i in validation if i not in set(moved)]
        train = sorted(train + moved)
    return train, sorted(validation)


def drop_leaked_pairs(
    train: PairExamples, report: ReadReport, held: PairExamples, held_name: str, symmetric: bool
) -> PairExamples:
    """Remove from ``train`` the pairs that also appear in ``held`` (validation or test), counting them."""
    held_keys = {pair_key(a, b, symmetric) for a, b in zip(held.text_a, held.text_b)}
    keep = []
    for index, (a, b) in enumerate(zip(train.text_a, train.text_b)):
        if pair_key(a, b, symmetric) in held_keys:
            report.drop(f"pair also in {held_name}", train.where[index])
        else:
            keep.append(index)
    return train.subset(keep) if len(keep) < len(train) else train
