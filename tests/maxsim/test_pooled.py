"""The pooled view of the hybrid score against a float64 reference written with ``math`` only."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.maxsim import maxsim_pairwise
from lightning_modules.maxsim.pooled import mean_pooled, mix_scores, pooled_cosine_matrix, pooled_cosine_pairwise
from tests.helpers.maxsim_inputs import random_vectors
from tests.helpers.maxsim_reference import reference_pairwise, reference_pooled_matrix


def _batch(seed: int, texts: int, length: int, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit token vectors at unmasked positions (at least one a text), huge values or NaN at masked ones."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(texts, length, generator=g) < 0.6
    mask[:, 0] |= ~mask.any(dim=1)
    vectors = random_vectors((texts, length, dim), mask, seed, torch.float64, garbage=1e6)
    vectors[~mask] = torch.where(torch.rand(int((~mask).sum()), dim, generator=g) < 0.1, float("nan"), vectors[~mask])
    return vectors, mask


@pytest.mark.parametrize("seed", range(4))
def test_pooled_cosines_match_the_reference_and_never_read_masked_tokens(seed):
    a, a_mask = _batch(seed, texts=3, length=6)
    b, b_mask = _batch(seed + 100, texts=4, length=5)
    expected = reference_pooled_matrix(a, a_mask, b, b_mask)
    matrix = pooled_cosine_matrix(a, a_mask, b, b_mask)
    assert matrix.dtype == torch.float64 and torch.isfinite(matrix).all()
    torch.testing.assert_close(matrix, expected, atol=1e-12, rtol=0)
    pairs = pooled_cosine_pairwise(a, a_mask, b[:3], b_mask[:3])
    torch.testing.assert_close(pairs, expected.diagonal(), atol=1e-12, rtol=0)


def test_float32_and_bfloat16_inputs_give_float32_cosines():
    a, a_mask = _batch(7, texts=2, length=6)
    for dtype, tolerance in ((torch.float32, 1e-6), (torch.bfloat16, 2e-2)):
        pooled = pooled_cosine_pairwise(a.to(dtype), a_mask, a.flip(0).to(dtype), a_mask.flip(0))
        assert pooled.dtype == torch.float32
        torch.testing.assert_close(pooled.double(), pooled_cosine_pairwise(a, a_mask, a.flip(0), a_mask.flip(0)),
                                   atol=tolerance, rtol=0)


def test_the_pooled_vector_is_the_unit_mean_and_a_text_matches_itself():
    a, a_mask = _batch(3, texts=3, length=7)
    pooled = mean_pooled(a, a_mask)
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(3, dtype=torch.float64))
    mean = torch.stack([a[i][a_mask[i]].mean(dim=0) for i in range(3)])
    torch.testing.assert_close(pooled, mean / mean.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(pooled_cosine_pairwise(a, a_mask, a, a_mask), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_mixing_weights_maxsim_and_the_pooled_cosine(weight):
    a, a_mask = _batch(11, texts=3, length=6)
    b, b_mask = _batch(12, texts=3, length=4)
    maxsim = maxsim_pairwise(a, a_mask, b, b_mask)
    mixed = mix_scores(maxsim, pooled_cosine_pairwise(a, a_mask, b, b_mask), weight)
    expected = ((1 - weight) * reference_pairwise(a, a_mask, b, b_mask, "both", "mean", None)
                + weight * reference_pooled_matrix(a, a_mask, b, b_mask).diagonal())
    torch.testing.assert_close(mixed, expected, atol=1e-12, rtol=0)
    assert mix_scores(maxsim.float(), torch.zeros(3, dtype=torch.bfloat16), weight).dtype == torch.float32
