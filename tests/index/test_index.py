"""The index: exact search against a brute-force reference and against evaluation's own ranking,
what it keeps on disk, an interrupted build continued to the same bytes, appending, and the
refusals (another model, other lengths, damaged or foreign files)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from lightning_modules.data.batches import TokenizedCorpus
from lightning_modules.errors import DataError, SettingsError
from lightning_modules.evaluation.corpus import latest_encodings, rank_corpus
from lightning_modules.index import Index, storage, write_index
from lightning_modules.index import index as index_module
from lightning_modules.index.index import as_corpus
from lightning_modules.model.settings import TextSettings
from tests.helpers.models import tiny_model

WORDS = ("cell protein gene virus heart brain tumour drug dose trial blood liver kidney lung immune "
         "signal enzyme receptor neuron muscle bone skin infection vaccine").split()


def _documents(count: int, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    return {f"d{i}": f"{i} " + " ".join(rng.choices(WORDS, k=rng.randint(3, 20))) for i in range(count)}


QUERIES = ["virus infection of the lung", "heart muscle", "drug dose trial", "bone"]


@pytest.fixture(scope="module")
def model(minilm_path):
    return tiny_model(minilm_path, text_settings=TextSettings(max_length=24, query_max_length=8, roles="asymmetric"))


@pytest.fixture(scope="module")
def documents():
    return _documents(70)


def test_exact_search_is_the_brute_force_ranking(model, documents):
    index = model.index(documents, dtype="float32")
    found = index.search(QUERIES, k=12)
    full = model.similarity_matrix(QUERIES, list(documents.values())).double()
    expected = torch.sort(full, dim=1, descending=True, stable=True)
    ids = list(documents)
    assert found.ids == [[ids[i] for i in row] for row in expected.indices[:, :12].tolist()]
    torch.testing.assert_close(torch.tensor(found.scores, dtype=torch.float64), expected.values[:, :12],
                               atol=1e-5, rtol=0)
    assert found.indices == expected.indices[:, :12].tolist()


def test_exact_search_ranks_as_evaluation_does(model, documents):
    """The same code as rank_corpus: the same documents in the same order, the same scores."""
    index = model.index(documents, dtype="float32")
    exclude = ["d3", None, "d7", None]  # BEIR's rule: a query never gets the document of its own id
    found = index.search(QUERIES, k=20, exclude=exclude)
    corpus = TokenizedCorpus(list(documents), model.tokenize(list(documents.values()), allow_empty=True))
    latest_encodings.pop(corpus, None)
    queries = [v.float() for v in model.encode(QUERIES, is_query=True)]
    scores, indices = rank_corpus(model, queries, corpus, depth=20, exclude=[3, None, 7, None],
                                  show_progress_bar=False)
    assert found.indices == indices.tolist()
    assert found.scores == scores.tolist()
    assert "d3" not in found.ids[0] and "d7" not in found.ids[2]


def test_float16_storage_changes_scores_only_to_float16_precision(model, documents):
    """Stored in float16, a document's score moves by at most ~1e-3: the ranking is float32's up to
    documents whose float32 scores lie that close."""
    ids = list(documents)
    full = model.similarity_matrix(QUERIES, list(documents.values()))
    half = model.index(documents).search(QUERIES, k=10)
    for row, (found, scores) in enumerate(zip(half.ids, half.scores)):
        exact = full[row, [ids.index(d) for d in found]]
        torch.testing.assert_close(torch.tensor(scores), exact, atol=2e-3, rtol=0)
        tenth = full[row].sort(descending=True).values[9]
        assert bool((exact >= tenth - 4e-3).all())  # nothing from further down than float16 can blur


def test_rank_takes_an_index_and_returns_ids(model, documents):
    index = model.index(documents)
    ranked = model.rank("heart muscle", index, top_k=3)
    found = index.search("heart muscle", k=3)
    assert [r["id"] for r in ranked] == found.ids[0]
    assert [r["text"] for r in ranked] == [documents[i] for i in found.ids[0]]
    positions = model.rank("heart muscle", model.index(list(documents.values())), top_k=3)
    assert "id" not in positions[0] and [r["index"] for r in positions] == found.indices[0]


def test_saved_index_loads_to_the_same_search(model, documents, tmp_path):
    index = model.index(documents)
    index.save(tmp_path / "ix", shard_size=16)
    manifest = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert manifest["documents"] == 70 and len(manifest["shards"]) == 5 and manifest["dtype"] == "float16"
    assert manifest["model"]["fingerprint"] == storage.model_fingerprint(model) and manifest["pending"] is None
    loaded = Index.load(tmp_path / "ix", model)
    assert loaded.ids == index.ids and loaded.texts == index.texts
    assert all(torch.equal(a, b) for a, b in zip(loaded.vectors, index.vectors))
    assert loaded.search(QUERIES, k=7) == index.search(QUERIES, k=7)
    with pytest.raises(SettingsError, match="already holds an index"):
        index.save(tmp_path / "ix")


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_killed_build_continues_to_the_same_index(model, documents, tmp_path, monkeypatch):
    corpus, _ = as_corpus(documents)
    write_index(model, corpus, tmp_path / "whole", shard_size=16, model_path="m", show_progress_bar=False)

    real_write_shard = storage.write_shard
    written = []

    def dies_on_the_third(*args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt  # as a kill between two shards
        written.append(real_write_shard(*args, **kwargs))
        return written[-1]

    monkeypatch.setattr(storage, "write_shard", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        write_index(model, corpus, tmp_path / "killed", shard_size=16, model_path="m", show_progress_bar=False)
    manifest = storage.read_manifest(tmp_path / "killed")
    assert len(manifest.shards) == 2 and manifest.pending == {"source": "(a dict)", "documents": 38}
    with pytest.raises(DataError, match="interrupted with 38 documents .* run the same python -m train.index"):
        Index.load(tmp_path / "killed", model)
    (tmp_path / "killed" / ".shard-00002.safetensors.abc.tmp").write_bytes(b"half a shard")  # what a kill leaves
    monkeypatch.setattr(storage, "write_shard", real_write_shard)
    report = write_index(model, corpus, tmp_path / "killed", shard_size=16, model_path="m", show_progress_bar=False)
    assert (report.added, report.adopted, report.held) == (38, 0, 32)
    assert _files(tmp_path / "killed") == _files(tmp_path / "whole")


def test_a_shard_written_whole_before_the_kill_is_kept(model, documents, tmp_path, monkeypatch):
    corpus, _ = as_corpus(documents)
    write_index(model, corpus, tmp_path / "whole", shard_size=32, model_path="m", show_progress_bar=False)
    real_write_manifest = storage.write_manifest
    calls = []

    def dies_after_the_first_shard(folder, manifest):
        calls.append(len(manifest.shards))
        if manifest.shards:  # the shard is on disk, the manifest does not list it yet
            raise KeyboardInterrupt
        real_write_manifest(folder, manifest)

    monkeypatch.setattr(storage, "write_manifest", dies_after_the_first_shard)
    with pytest.raises(KeyboardInterrupt):
        write_index(model, corpus, tmp_path / "killed", shard_size=32, model_path="m", show_progress_bar=False)
    monkeypatch.setattr(storage, "write_manifest", real_write_manifest)
    report = write_index(model, corpus, tmp_path / "killed", shard_size=32, model_path="m", show_progress_bar=False)
    assert (report.added, report.adopted) == (38, 32)
    assert _files(tmp_path / "killed") == _files(tmp_path / "whole")


def test_adding_documents_appends_shards_and_searches_as_one_index(model, documents, tmp_path):
    ids = list(documents)
    first = {i: documents[i] for i in ids[:40]}
    write_index(model, as_corpus(first)[0], tmp_path / "ix", shard_size=16, show_progress_bar=False)
    report = write_index(model, as_corpus(documents)[0], tmp_path / "ix", shard_size=16, show_progress_bar=False)
    assert (report.added, report.held, report.documents, report.shards) == (30, 40, 70, 3 + 2)
    again = write_index(model, as_corpus(documents)[0], tmp_path / "ix", shard_size=16, show_progress_bar=False)
    assert (again.added, again.held, again.shards) == (0, 70, 5)  # the same corpus again: nothing to do
    loaded = Index.load(tmp_path / "ix", model)
    assert loaded.ids == ids
    whole = model.index(documents)
    assert loaded.search(QUERIES, k=9) == whole.search(QUERIES, k=9)
    changed = {**documents, "d5": "a new text"}
    with pytest.raises(DataError, match="document 'd5' is already in .* with another text"):
        write_index(model, as_corpus(changed)[0], tmp_path / "ix", show_progress_bar=False)
    whole.add({"d70": "heart muscle cells"})
    assert whole.search("heart muscle cells", k=1).ids == [["d70"]]


def test_another_model_or_other_lengths_are_refused(model, documents, tmp_path, minilm_path):
    model.index(documents).save(tmp_path / "ix", model_path="/models/mine")
    torch.manual_seed(1)
    other = tiny_model(minilm_path, text_settings=model.text_settings)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    with pytest.raises(SettingsError, match=r"built by another model \(/models/mine\)"):
        Index.load(tmp_path / "ix", other)
    longer = tiny_model(minilm_path, text_settings=TextSettings(max_length=64, query_max_length=8, roles="asymmetric"))
    with pytest.raises(SettingsError, match="max_length=24 there, 64 here"):
        Index.load(tmp_path / "ix", longer)
    with pytest.raises(SettingsError, match="built by another model"):
        write_index(other, as_corpus(documents)[0], tmp_path / "ix")


def test_damaged_or_foreign_indexes_give_a_clear_error(model, documents, tmp_path):
    model.index(documents).save(tmp_path / "ix", shard_size=32)
    shard = tmp_path / "ix" / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="shard-00001.safetensors: its bytes are not those the index wrote"):
        Index.load(tmp_path / "ix", model)
    shard.unlink()
    with pytest.raises(DataError, match="shard-00001.safetensors: missing; the index is damaged"):
        Index.load(tmp_path / "ix", model)
    (tmp_path / "ix" / "index.json").write_text("{not json")
    with pytest.raises(DataError, match="index.json: unreadable .* damaged"):
        Index.load(tmp_path / "ix", model)
    (tmp_path / "ix" / "index.json").write_text(json.dumps({"format": "faiss"}))
    with pytest.raises(DataError, match="not a maxsim-lightning index"):
        Index.load(tmp_path / "ix", model)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not an index \\(no index.json\\)"):
        Index.load(tmp_path / "other", model)
    with pytest.raises(SettingsError, match="holds files and no index"):
        write_index(model, as_corpus(documents)[0], tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"  # never touched


def test_index_keeps_what_dtype_asks(model, documents):
    for dtype, torch_dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        assert model.index(documents, dtype=dtype).vectors[0].dtype == torch_dtype
    with pytest.raises(SettingsError, match="dtype='int8'"):
        model.index(documents, dtype="int8")


KILLED_BUILD = """
import os, signal, sys
from pathlib import Path
from lightning_modules.index import storage, write_index
from lightning_modules.index import index as index_module
from lightning_modules.index.index import as_corpus
from lightning_modules.model.settings import TextSettings
from tests.helpers.models import tiny_model
from tests.index.test_index import _documents

real = storage.write_shard
def write_then_die(folder, number, *args, **kwargs):
    shard = real(folder, number, *args, **kwargs)
    if number == 2:  # the shard is whole on disk, the manifest does not list it yet
        os.kill(os.getpid(), signal.SIGKILL)
    return shard
storage.write_shard = write_then_die
model = tiny_model(sys.argv[1], text_settings=TextSettings(max_length=24, query_max_length=8, roles="asymmetric"))
write_index(model, as_corpus(_documents(70))[0], Path(sys.argv[2]), shard_size=16, model_path="m",
            show_progress_bar=False)
"""


def test_a_build_killed_by_sigkill_continues_to_the_same_index(model, documents, tmp_path, minilm_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", KILLED_BUILD, minilm_path, str(tmp_path / "killed")], cwd=root,
                          capture_output=True, text=True)
    assert done.returncode == -9, done.stderr[-2000:]
    assert len(storage.read_manifest(tmp_path / "killed").shards) == 2  # shard 2 written, not listed
    corpus, _ = as_corpus(documents)
    report = write_index(model, corpus, tmp_path / "killed", shard_size=16, model_path="m", show_progress_bar=False)
    assert (report.held, report.adopted, report.added) == (32, 16, 22)
    write_index(model, corpus, tmp_path / "whole", shard_size=16, model_path="m", show_progress_bar=False)
    assert _files(tmp_path / "killed") == _files(tmp_path / "whole")


def test_adding_resuming_overwriting_and_a_foreign_manifest_at_their_edges(model, documents, tmp_path):
    """Edge cases: a list added to a list-built index, a rerun with another corpus while one is half
    added, a leftover shard whose texts changed, overwrite and other files, a second writer, and a
    manifest that names a file outside its folder."""
    listed = model.index(["heart muscle", "lung virus"])
    assert listed.add(["bone marrow"]) == 1 and listed.ids == ["0", "1", "2"]
    assert model.rank("bone", listed, top_k=1)[0]["index"] == 2 and model.rank("x", model.index([])) == []

    corpus, _ = as_corpus(documents)
    folder = tmp_path / "ix"
    write_index(model, as_corpus(dict(list(documents.items())[:20]))[0], folder, shard_size=16)
    manifest = storage.read_manifest(folder)
    manifest.pending = {"source": "a.jsonl", "documents": 5}
    storage.write_manifest(folder, manifest)
    with pytest.raises(SettingsError, match="adding a.jsonl was interrupted with 5 documents"):
        write_index(model, corpus, folder, shard_size=16)
    manifest.pending = None
    storage.write_manifest(folder, manifest)

    changed = {**documents, "d30": "a text changed after the kill"}
    leftover = storage.write_shard(folder, 2, list(documents)[20:36], list(documents.values())[20:36],
                                   [torch.zeros(3, 16)] * 16, "float16", storage.model_fingerprint(model))
    assert leftover.file == "shard-00002.safetensors"  # written whole, never listed: then the corpus changed
    report = write_index(model, as_corpus(changed)[0], folder, shard_size=16)
    assert report.adopted == 0 and Index.load(folder, model).texts[30] == "a text changed after the kill"

    (folder / "notes.txt").write_text("mine")
    with storage.writing_lock(folder):
        with pytest.raises(SettingsError, match="another python -m train.index is writing this index"):
            write_index(model, corpus, folder)
    index_module.prepare_folder(folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["index.lock", "notes.txt"]  # only the index's files went

    model.index(documents).save(tmp_path / "other")
    data = json.loads((tmp_path / "other" / "index.json").read_text())
    data["shards"][0]["file"] = "../secrets.safetensors"
    (tmp_path / "other" / "index.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="a shard file name or the dtype is not one an index writes"):
        Index.load(tmp_path / "other", model)
