"""Approximate search: its candidates against a loop over faiss's own hits, exact scores for what it
returns, exact search's ranking when every document is a candidate, and the nearest-neighbour
index kept beside an index on disk and reused."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.errors import SettingsError
from lightning_modules.index import ApproximateSettings, Index
from lightning_modules.index.approximate import TokenIVF, default_lists
from lightning_modules.model.settings import TextSettings
from tests.helpers.models import tiny_model
from tests.index.test_index import QUERIES, _documents

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def model(minilm_path):
    return tiny_model(minilm_path, text_settings=TextSettings(max_length=24, query_max_length=8, roles="asymmetric"))


@pytest.fixture(scope="module")
def index(model):
    return model.index(_documents(120, seed=1))


def test_candidates_are_the_best_estimated_from_the_hits(index):
    settings = ApproximateSettings(lists=8, probe=2, token_hits=5, rerank=7)
    ivf = index.approximate_index(settings)
    queries = [q.float() for q in index.model.encode(QUERIES, is_query=True)]
    found = ivf.candidates(queries, settings)
    for query, candidates in zip(queries, found):
        similarities, hits = ivf.ivf.search(query.numpy(), settings.token_hits)
        estimates = {}
        documents = {int(ivf.token_document[h]) for row in hits for h in row if h >= 0}
        for document in documents:  # a query token's best hit in the document, else its weakest hit
            total = 0.0
            for row_sims, row_hits in zip(similarities, hits):
                hit = [(float(s), int(h)) for s, h in zip(row_sims, row_hits) if h >= 0]
                in_document = [s for s, h in hit if ivf.token_document[h] == document]
                total += max(in_document) if in_document else min(s for s, _ in hit)
            estimates[document] = total
        expected = sorted(estimates, key=lambda d: (-estimates[d], d))[: settings.rerank]
        got = candidates.tolist()
        assert len(got) == min(settings.rerank, len(documents))
        # the same documents, best estimated first (float sums may order near-ties otherwise)
        assert sorted(got) == sorted(expected) or [estimates[d] for d in got] == pytest.approx(
            [estimates[d] for d in expected], abs=1e-5)


def test_approximate_scores_are_exact_scores_and_every_candidate_gives_exact_search(index):
    exact = index.search(QUERIES, k=10)
    everything = ApproximateSettings(lists=8, probe=8, token_hits=10_000, rerank=10_000)
    every = index.search(QUERIES, k=10, mode="approximate", approximate=everything)
    # (the scores to rounding: a sub-block of candidates is multiplied in other shapes than a whole block)
    assert every.ids == exact.ids and every.scores == [pytest.approx(s, abs=1e-6) for s in exact.scores]
    few = index.search(QUERIES, k=3, mode="approximate", approximate=ApproximateSettings(lists=8, probe=1,
                                                                                          token_hits=2, rerank=5))
    full = index.search(QUERIES, k=len(index))
    for row in range(len(QUERIES)):
        assert 1 <= len(few.ids[row]) <= 3
        exact_score = dict(zip(full.ids[row], full.scores[row]))
        assert few.scores[row] == pytest.approx([exact_score[d] for d in few.ids[row]], abs=1e-6)  # scored exactly
        assert few.scores[row] == sorted(few.scores[row], reverse=True)


def test_the_nearest_neighbour_index_is_kept_on_disk_and_reused(model, index, tmp_path, monkeypatch):
    index.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix", model)
    settings = ApproximateSettings(lists=8)
    first = loaded.search(QUERIES, k=5, mode="approximate", approximate=settings)
    assert len(list((tmp_path / "ix" / "approximate").glob("ivf-8-*.faiss"))) == 1

    def no_building(*args, **kwargs):
        raise AssertionError("built again")

    monkeypatch.setattr(TokenIVF, "_build", staticmethod(no_building))
    again = Index.load(tmp_path / "ix", model)
    assert again.search(QUERIES, k=5, mode="approximate", approximate=settings) == first


def test_knobs_are_checked_and_lists_default_to_the_square_root():
    assert default_lists(1_000_000) == 1024 and default_lists(1_242_251) == 1024 and default_lists(100) == 2
    with pytest.raises(SettingsError, match="search.rerank=0"):
        ApproximateSettings(rerank=0)
    with pytest.raises(SettingsError, match="search.lists=0"):
        ApproximateSettings(lists=0)


def test_too_many_lists_for_the_tokens_say_how_many_fit(index):
    with pytest.raises(SettingsError, match="search.lists=100000: too many"):
        index.approximate_index(ApproximateSettings(lists=100_000))


def test_small_corpora_and_k_beyond_rerank(model, index):
    tiny = model.index(["heart", "lung"])  # fewer token vectors than one k-means list wants
    assert tiny.search("heart", k=2, mode="approximate").ids[0] == tiny.search("heart", k=2).ids[0]
    found = index.search(QUERIES, k=20, mode="approximate", approximate=ApproximateSettings(lists=8, rerank=5))
    assert all(len(ids) == 20 for ids in found.ids)  # k documents need k candidates scored
