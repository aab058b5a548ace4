"""benchmarks/retrieval.py resumed: a killed run keeps the systems it finished, a rerun runs only
the others and hands the stored negatives back by id, and results of other settings are refused.

No model runs: the systems, ``Task`` and ``compose_ours`` are fakes that record their calls and
return small rows."""

from __future__ import annotations

import json
import types

import pytest
from omegaconf import OmegaConf

from benchmarks import retrieval

CFG = OmegaConf.create({"model": {"model_name_or_path": "minilm", "lr": 2e-5}, "trainer": {"max_epochs": 1},
                        "data": {"batch_size": 8, "max_length": 32, "max_negatives_per_pair": 3},
                        "seed": 42})
CORPUS = ["d0", "d1", "d2", "d3"]
MINED = [[2, 3], [0]]  # what ours' zero-shot mines: corpus positions for the training queries q1, q2
SYSTEMS = ["ours zero-shot", "BM25", "bi-encoder zero-shot", "bi-encoder MNRL", "PyLate", "ours, trained"]


class Killed(Exception):
    """A run killed in the middle of a system."""


def _row(system: str) -> dict:
    return {"system": system, "ndcg@10": 50.0, "mrr@10": 40.0, "recall@100": 90.0, "train_pairs_per_second": None,
            "latency_ms_per_query": 2.0, "bytes_per_document": 1000}


class FakeDataModule:
    """The datamodule's parts that mining and resuming use: corpus ids and positions, training queries."""

    def __init__(self, corpus_ids: list[str]) -> None:
        self.corpus = types.SimpleNamespace(ids=corpus_ids, position={d: i for i, d in enumerate(corpus_ids)})
        self._train_queries = ["q1", "q2"]
        self.given: list[list[list[int]]] = []  # each add_hard_negatives call's positions

    def add_hard_negatives(self, mined: list[list[int]]) -> None:
        self.given.append(mined)


class Fakes:
    """The heavy parts of ``benchmarks.retrieval`` replaced; ``kill`` names a step that raises ``Killed``."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[str] = []
        self.kill: str | None = None
        self.corpus = list(CORPUS)  # the next Task's corpus order
        self.datamodules: list[FakeDataModule] = []
        monkeypatch.setattr(retrieval, "compose_ours", lambda overrides: CFG)
        monkeypatch.setattr(retrieval, "Task", self.task)
        monkeypatch.setattr(retrieval, "run_ours_zero_shot", self.zero_shot)
        monkeypatch.setattr(retrieval, "run_bm25", lambda task: self.step("bm25", _row("BM25")))
        monkeypatch.setattr(retrieval, "run_bi_encoder", lambda task, examples, settings: self.step(
            "bi-encoder", [_row("bi-encoder zero-shot"), _row("bi-encoder MNRL")]))
        monkeypatch.setattr(retrieval, "run_pylate",
                            lambda task, examples, settings: self.step("pylate", _row("PyLate")))
        monkeypatch.setattr(retrieval, "run_ours_trained", lambda overrides, zero: self.step(
            "ours-trained", {**_row("ours, trained"), "latency_ms_per_query": zero["latency_ms_per_query"]}))

    def step(self, name: str, result):
        self.calls.append(name)
        if name == self.kill:
            raise Killed(name)
        return result

    def task(self, cfg):
        datamodule = FakeDataModule(list(self.corpus))
        self.datamodules.append(datamodule)
        return types.SimpleNamespace(datamodule=datamodule, test_ids=["t1", "t2"], corpus_texts=self.corpus,
                                     examples=lambda seed, negatives: [{"query": "q", "positive": "p", "negative_1": "n"}] * 3)

    def zero_shot(self, task, cfg) -> dict:
        rows = self.step("ours-zero-shot", [_row("ours zero-shot")])
        return {"rows": rows, "negatives": retrieval.negatives_by_id(task.datamodule, MINED)}


@pytest.fixture
def fakes(monkeypatch) -> Fakes:
    return Fakes(monkeypatch)


def _main(tmp_path, *extra: str) -> dict:
    """Run the benchmark's ``main`` on the fakes; its JSON result."""
    out = tmp_path / "retrieval.json"
    retrieval.main(["--data", str(tmp_path / "scifact"), "--out", str(out), *extra])
    return json.loads(out.read_text())


def _finished(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "retrieval.work").iterdir())


def test_a_killed_run_keeps_its_finished_systems_and_a_rerun_runs_only_the_others(tmp_path, fakes, caplog):
    fakes.kill = "pylate"
    with pytest.raises(Killed):
        _main(tmp_path)
    assert fakes.calls == ["ours-zero-shot", "bm25", "bi-encoder", "pylate"]
    assert _finished(tmp_path) == ["bi-encoder.json", "bm25.json", "fingerprint.json", "ours-zero-shot.json"]
    assert not (tmp_path / "retrieval.json").exists()

    fakes.kill, fakes.calls = None, []
    with caplog.at_level("INFO", logger="bench"):
        result = _main(tmp_path)
    assert fakes.calls == ["pylate", "ours-trained"]
    assert [row["system"] for row in result["rows"]] == SYSTEMS
    assert result["resumed"] == ["ours-zero-shot", "bm25", "bi-encoder"]
    assert f"bm25: finished earlier, read from {tmp_path / 'retrieval.work' / 'bm25.json'}" in caplog.messages
    assert not list((tmp_path / "retrieval.work").glob("*.tmp"))

    fakes.calls = []  # a third run finds every system finished
    assert _main(tmp_path)["rows"] == result["rows"] and fakes.calls == []


def test_the_stored_negatives_go_back_to_the_datamodule_by_id(tmp_path, fakes):
    fakes.kill = "bm25"
    with pytest.raises(Killed):
        _main(tmp_path)
    stored = json.loads((tmp_path / "retrieval.work" / "ours-zero-shot.json").read_text())
    assert stored["negatives"] == {"q1": ["d2", "d3"], "q2": ["d0"]}
    assert fakes.datamodules[-1].given == [MINED]

    fakes.kill, fakes.calls = None, []
    fakes.corpus = CORPUS[::-1]  # other positions for the same documents: only ids can find them again
    _main(tmp_path)
    assert "ours-zero-shot" not in fakes.calls
    assert fakes.datamodules[-1].given == [[[1, 0], [3]]]


def test_other_settings_stop_with_the_changed_key_and_fresh_starts_over(tmp_path, fakes):
    _main(tmp_path)
    fakes.calls = []
    with pytest.raises(SystemExit) as refused:
        _main(tmp_path, "--override", "trainer.max_epochs=3")
    assert "override trainer.max_epochs" in str(refused.value) and "--fresh" in str(refused.value)
    assert fakes.calls == []

    result = _main(tmp_path, "--override", "trainer.max_epochs=3", "--fresh")
    assert fakes.calls == ["ours-zero-shot", "bm25", "bi-encoder", "pylate", "ours-trained"]
    assert result["resumed"] == [] and result["overrides"][-1] == "trainer.max_epochs=3"
    fingerprint = json.loads((tmp_path / "retrieval.work" / "fingerprint.json").read_text())
    assert fingerprint["overrides"][-1] == "trainer.max_epochs=3"


def test_a_skipped_system_is_neither_run_nor_read(tmp_path, fakes):
    _main(tmp_path, "--skip", "bi-encoder")
    assert "bi-encoder" not in fakes.calls
    fakes.calls = []
    result = _main(tmp_path, "--skip", "bm25")
    assert fakes.calls == ["bi-encoder"]
    assert result["resumed"] == ["ours-zero-shot", "pylate", "ours-trained"]
    assert "BM25" not in [row["system"] for row in result["rows"]]


def test_a_finished_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "bm25.json"
    retrieval.write_atomically(path, {"rows": [_row("BM25")]})
    with pytest.raises(TypeError):  # not serialisable: the earlier file stays
        retrieval.write_atomically(path, {"rows": [object()]})

    def killed_while_replacing(source, target):
        raise OSError("killed")

    monkeypatch.setattr(retrieval, "os", types.SimpleNamespace(replace=killed_while_replacing))
    with pytest.raises(OSError):
        retrieval.write_atomically(path, {"rows": []})
    assert json.loads(path.read_text()) == {"rows": [_row("BM25")]}
    assert [p.name for p in tmp_path.iterdir()] == ["bm25.json"]


def test_each_example_brings_distinct_mined_negatives_and_random_non_relevant_ones_where_too_few():
    corpus = [f"doc {i}" for i in range(30)]
    items = [types.SimpleNamespace(a_key=0, b_key=0, negatives=[(5, 0.9), (6, 0.8), (7, 0.7), (8, 0.6)]),
             types.SimpleNamespace(a_key=1, b_key=1, negatives=[(9, 0.5)])]
    dm = types.SimpleNamespace(datasets={"train": items}, _positives={0: {0}, 1: {1, 2}}, _train_queries=["q1", "q2"],
                               data=types.SimpleNamespace(queries={"q1": "one", "q2": "two"}))
    task = object.__new__(retrieval.Task)
    task.datamodule, task.corpus_texts = dm, corpus
    first, second = task.examples(seed=0, negatives=3)
    assert list(first) == ["query", "positive", "negative_1", "negative_2", "negative_3"]
    assert (first["query"], first["positive"], second["query"], second["positive"]) == ("one", "doc 0", "two", "doc 1")
    assert {first[f"negative_{n}"] for n in (1, 2, 3)} < {"doc 5", "doc 6", "doc 7", "doc 8"}  # 3 distinct mined
    second_negatives = [second[f"negative_{n}"] for n in (1, 2, 3)]
    assert second_negatives[0] == "doc 9" and len(set(second_negatives)) == 3  # the one mined, then random others
    assert not {"doc 1", "doc 2"} & set(second_negatives)  # never a relevant document
    assert task.examples(seed=0, negatives=3) == [first, second]  # seeded
