"""The on-disk encoding cache: a second run reuses it exactly; a changed weight, length, corpus or
precision misses it; a truncated or foreign file is ignored with a warning; it stays within its size."""

from __future__ import annotations

import logging
import os
import threading

import pytest
import torch

from lightning_modules.data.batches import TokenizedCorpus
from lightning_modules.evaluation.corpus import corpus_work, rank_corpus
from lightning_modules.evaluation.encoding_cache import EncodingCache, use_cache
from tests.evaluation.test_corpus_ranking import _texts
from tests.helpers.models import tiny_model


@pytest.fixture(scope="module")
def model(minilm_path):
    model = tiny_model(minilm_path)
    model.direction = "a2b"
    return model


@pytest.fixture
def documents():
    return _texts(40, seed=3, length=30)


@pytest.fixture
def queries(model):
    return model.encode(_texts(6, seed=4, length=8), is_query=True)


@pytest.fixture
def cache(tmp_path):
    cache = EncodingCache(tmp_path / "cache", max_bytes=2**30)
    use_cache(cache)
    corpus_work.reset()
    yield cache
    use_cache(None)


def _corpus(model, documents, max_length=None):
    """A fresh corpus object, as a new run builds it (its in-memory encoding empty)."""
    ids = model.tokenize(documents)
    if max_length is not None:
        ids = [row[:max_length] for row in ids]
    return TokenizedCorpus([f"d{i}" for i in range(len(documents))], ids)


def _rank(model, queries, corpus):
    return rank_corpus(model, queries, corpus, depth=10, show_progress_bar=False)


def _uncached(model, queries, corpus, cache):
    """The same ranking computed without any cache (the reference)."""
    use_cache(None)
    try:
        return _rank(model, queries, TokenizedCorpus(corpus.ids, corpus.token_ids))
    finally:
        use_cache(cache)


def test_a_second_run_takes_the_encoding_and_ranking_from_disk(model, documents, queries, cache, monkeypatch):
    first = _rank(model, queries, _corpus(model, documents))
    assert corpus_work.passes_encoded == 1 and corpus_work.queries_scored == len(queries)
    assert {p.name.split("-")[0] for p in cache.directory.iterdir()} == {"encoding", "ranking"}

    def never(*args, **kwargs):
        raise AssertionError("encoded again despite the cache")

    monkeypatch.setattr(model, "embed_token_ids", never)
    second = _rank(model, queries, _corpus(model, documents))
    assert corpus_work.passes_from_cache == 1 and corpus_work.queries_from_cache == len(queries)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    monkeypatch.undo()
    # Other queries at the same weights: the encoding is reused, the ranking computed (and right).
    others = queries[:3]
    scored = _rank(model, others, _corpus(model, documents))
    assert corpus_work.passes_from_cache == 2 and corpus_work.queries_scored == len(queries) + 3
    reference = _uncached(model, others, _corpus(model, documents), cache)
    assert torch.equal(scored[0], reference[0]) and torch.equal(scored[1], reference[1])


@pytest.mark.parametrize("change", ["weight", "length", "corpus", "precision"])
def test_a_changed_weight_length_corpus_or_precision_misses(model, documents, queries, cache, change, minilm_path):
    _rank(model, queries, _corpus(model, documents))
    assert corpus_work.passes_encoded == 1
    changed_model, max_length = model, None
    if change == "weight":
        changed_model = tiny_model(minilm_path)
        changed_model.direction = "a2b"
        with torch.no_grad():
            changed_model.encoder.projection.weight[0, 0] += 1e-3
    elif change == "length":
        max_length = 12
    elif change == "corpus":
        documents = documents[:-1] + ["an entirely different last document"]
    else:
        changed_model = tiny_model(minilm_path)
        changed_model.direction = "a2b"
        changed_model.inference_precision = "bf16"
    corpus = _corpus(changed_model, documents, max_length)
    scores, indices = _rank(changed_model, queries, corpus)
    assert corpus_work.passes_encoded == 2 and corpus_work.passes_from_cache == 0
    expected = _uncached(changed_model, queries, corpus, cache)
    assert torch.equal(scores, expected[0]) and torch.equal(indices, expected[1])


@pytest.mark.parametrize("damage", ["truncated", "foreign", "garbage"])
def test_a_damaged_or_foreign_file_is_ignored_with_a_warning(model, documents, queries, cache, damage, caplog):
    first = _rank(model, queries, _corpus(model, documents))
    entry = next(cache.directory.glob("encoding-*"))
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    elif damage == "foreign":  # a whole, valid file of another entry, under this entry's name
        cache.save("encoding", "another", {"vectors": torch.zeros(3, model.encoder.dim), "lengths": torch.tensor([3])})
        os.replace(cache.path("encoding", "another"), entry)
    else:
        entry.write_bytes(b"not a safetensors file at all")
    for ranking in cache.directory.glob("ranking-*"):
        ranking.unlink()  # so that the scores below come from the re-encoded corpus
    with caplog.at_level(logging.WARNING):
        scores, indices = _rank(model, queries, _corpus(model, documents))
    assert any(entry.name in r.getMessage() and "Ignoring" in r.getMessage() for r in caplog.records)
    assert corpus_work.passes_encoded == 2
    assert torch.equal(scores, first[0]) and torch.equal(indices, first[1])
    # It was replaced by a good entry: the next run reads it.
    _rank(model, queries, _corpus(model, documents))
    assert corpus_work.passes_from_cache == 1


def test_entries_of_the_wrong_shape_are_ignored(model, documents, queries, cache, caplog):
    """A file with the right key but shapes that do not fit (written by a bug, say) is not trusted."""
    corpus = _corpus(model, documents)
    _rank(model, queries, corpus)
    entry = next(cache.directory.glob("encoding-*"))
    key = entry.name.removeprefix("encoding-").removesuffix(".safetensors")
    cache.save("encoding", key, {"vectors": torch.zeros(5, model.encoder.dim), "lengths": torch.tensor([5])})
    with caplog.at_level(logging.WARNING):
        _rank(model, queries[:2], _corpus(model, documents))
    assert any("do not fit" in r.getMessage() for r in caplog.records)
    assert corpus_work.passes_encoded == 2


def test_the_least_recently_used_entries_go_past_the_size_limit(tmp_path):
    cache = EncodingCache(tmp_path, max_bytes=3 * 4000 + 1000)  # room for three entries of 4,000 bytes
    for i, name in enumerate(letter * 40 for letter in "abcd"):  # keys as digests are: 40 hex digits
        cache.save("encoding", name, {"x": torch.zeros(1000)})
        os.utime(cache.path("encoding", name), (1000 + i, 1000 + i))
        if name[0] == "c":
            assert cache.load("encoding", "a" * 40) is not None  # read: now the most recently used
    cache.evict()
    assert sorted(p.name.split("-")[1][0] for p in tmp_path.glob("*.safetensors")) == ["a", "c", "d"]
    cache.save("encoding", "huge", {"x": torch.zeros(10_000)})  # larger than the whole cache: not written
    assert not cache.path("encoding", "huge").exists()


def test_runs_racing_for_one_entry_leave_a_whole_file(tmp_path):
    cache = EncodingCache(tmp_path, max_bytes=2**30)
    values = [torch.full((50_000,), float(i)) for i in range(8)]
    threads = [threading.Thread(target=cache.save, args=("encoding", "same", {"x": v})) for v in values]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    loaded = cache.load("encoding", "same")["x"]
    assert any(torch.equal(loaded, v) for v in values)
    assert [p.name for p in tmp_path.iterdir()] == [cache.path("encoding", "same").name]  # no temporary files left


def test_without_a_cache_nothing_is_written(model, documents, queries, tmp_path):
    use_cache(None)
    corpus_work.reset()
    _rank(model, queries, _corpus(model, documents))
    assert corpus_work.passes_encoded == 1 and not any(tmp_path.iterdir())


def test_a_ranking_is_keyed_by_the_corpus_positions_of_its_shard(model, documents, queries, cache, monkeypatch):
    """Process 0 of 2 holds documents 0, 2, 4, ...; a one-process run over exactly those documents
    encodes the same tokens (a cache hit) but must return its own positions, not the shard's."""
    from lightning_modules.evaluation import corpus as corpus_module

    monkeypatch.setattr(corpus_module, "process_shard", lambda: (0, 2))
    # The merge with the other process's list: here, the shard's own list twice.
    monkeypatch.setattr(corpus_module.dist, "all_gather_object", lambda out, obj: out.__setitem__(slice(None), [obj] * len(out)))
    _rank(model, queries, _corpus(model, documents))
    monkeypatch.undo()
    halved = _corpus(model, documents[0::2])
    scores, indices = _rank(model, queries, halved)
    assert corpus_work.passes_from_cache == 1  # the same documents' vectors, reused
    expected = _uncached(model, queries, halved, cache)
    assert torch.equal(indices, expected[1]) and torch.equal(scores, expected[0])
    assert int(indices.max()) < len(halved)


def test_a_failed_write_is_a_warning_and_leaves_no_temporary_file(tmp_path, monkeypatch, caplog):
    from safetensors import SafetensorError

    from lightning_modules.evaluation import encoding_cache

    def full_disk(tensors, path, metadata=None):
        open(path, "wb").write(b"half")
        raise SafetensorError("No space left on device (os error 28)")

    monkeypatch.setattr(encoding_cache, "save_file", full_disk)
    cache = EncodingCache(tmp_path, max_bytes=2**30)
    with caplog.at_level(logging.WARNING):
        cache.save("encoding", "k", {"x": torch.zeros(10)})
    assert any("Could not write" in r.getMessage() for r in caplog.records)
    assert list(tmp_path.iterdir()) == []


def test_eviction_leaves_other_files_alone_and_clears_stale_temporaries(tmp_path):
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"x" * 5000)
    stale, fresh = tmp_path / ".encoding-abc.tmp", tmp_path / ".encoding-def.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (1000, 1000))
    os.utime(other, (1000, 1000))
    cache = EncodingCache(tmp_path, max_bytes=4500)  # the entry fits; the other file would not
    cache.save("encoding", "a" * 40, {"x": torch.zeros(1000)})
    assert other.exists() and fresh.exists() and not stale.exists()
    assert cache.path("encoding", "a" * 40).exists()
