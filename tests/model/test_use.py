"""Using a trained model from the shell: ``train.evaluate`` and ``train.score``."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from scipy.stats import pearsonr, spearmanr

import lightning_modules.evaluation.sts as sts_module
from lightning_modules.errors import DataError
from lightning_modules.evaluation.sts import evaluate_sts
from lightning_modules.maxsim import maxsim_pairwise
from lightning_modules.model import LateInteractionModel
from tests.helpers.cli import run_module
from tests.helpers.models import tiny_model
from tests.helpers.precision import FP32_TOOL, FP32_TRAINING
from tests.helpers.tables import write_rows
from train.tasks import MTEB_STS, resolve_sts_task


def _stsb_folder(stsb_dir, folder, n=40):
    """A small STS-B-shaped folder: the first n rows of each split."""
    folder.mkdir()
    for split in ("train", "validation", "test"):
        with (stsb_dir / f"{split}.csv").open(encoding="utf-8") as f:
            rows = list(csv.DictReader(f))[:n]
        write_rows(folder / f"{split}.csv", rows, ["sentence1", "sentence2", "score"])
    return folder


def _process(*args, cwd):
    """A real ``python -m ...``: once per tool, for the wiring; the other calls run in-process."""
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_evaluate_matches_pair_by_pair_scoring_and_scipy(tmp_path, minilm_path, stsb_dir):
    model = tiny_model(minilm_path)
    folder = _stsb_folder(stsb_dir, tmp_path / "stsb")
    result = evaluate_sts(model, dict([resolve_sts_task(str(folder))]))
    rows = list(csv.DictReader((folder / "test.csv").open(encoding="utf-8")))
    predicted = []
    with torch.no_grad():
        for row in rows:  # one pair at a time: no batching, no padding
            (ids_a,), (ids_b,) = model.tokenize([row["sentence1"]], True), model.tokenize([row["sentence2"]])
            a = model.embed(torch.tensor([ids_a]), torch.ones(1, len(ids_a), dtype=torch.long))
            b = model.embed(torch.tensor([ids_b]), torch.ones(1, len(ids_b), dtype=torch.long))
            predicted.append(float(maxsim_pairwise(a.vectors, a.mask, b.vectors, b.mask)))
    gold = [float(row["score"]) for row in rows]
    task = result["tasks"]["stsb"]
    assert task["pairs"] == len(rows) == 40
    assert task["spearman"] == pytest.approx(100 * spearmanr(predicted, gold).statistic, abs=0.01)
    assert task["pearson"] == pytest.approx(100 * pearsonr(predicted, gold).statistic, abs=0.01)
    assert result["mean"] == {"spearman": task["spearman"], "pearson": task["pearson"]}


@pytest.mark.parametrize("pooled_weight", [0.0, 0.5])  # MaxSim alone, and the hybrid score
def test_evaluate_on_the_export_reproduces_the_runs_test_spearman(compose_cfg, tmp_path, stsb_dir, pooled_weight,
                                                                  monkeypatch):
    from train.pipeline import run

    folder = _stsb_folder(stsb_dir, tmp_path / "stsb", n=60)
    cfg = compose_cfg(["+experiment=sts", "model=tiny", f"data.data_dir='{folder}'", "data.hub_id=null", "~logger",
                       "trainer.max_epochs=1", "++trainer.enable_progress_bar=false",
                       f"model.pooled_weight={pooled_weight}", FP32_TRAINING], tmp_path / "run")
    results = run(cfg)
    assert LateInteractionModel.load(tmp_path / "run" / "model").pooled_weight == pooled_weight
    done = run_module("train.evaluate", f"model={tmp_path / 'run' / 'model'}", f"tasks=[{folder}]",
                      f"out={tmp_path / 'eval.json'}", FP32_TOOL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert abs(evaluation["tasks"]["stsb"]["spearman"] - results["test/spearman"]) <= 0.01
    assert "mean" in done.stdout and "stsb" in done.stdout
    # Another mix than the model's own, as one tries a weight on validation: the model scores with it.
    seen = []

    def spy(model, tables, batch_size=64):
        seen.append((model.pooled_weight, [spec.split for spec in tables.values()]))
        return evaluate_sts(model, tables, batch_size)

    monkeypatch.setattr(sts_module, "evaluate_sts", spy)  # train.evaluate imports it when run
    other = run_module("train.evaluate", f"model={tmp_path / 'run' / 'model'}", f"tasks=[{folder}]",
                       "split=validation", "pooled_weight=0.25", f"out={tmp_path / 'mix.json'}", cwd=tmp_path)
    assert other.returncode == 0, other.stderr[-3000:]
    assert seen == [(0.25, ["validation"])]
    refused = run_module("train.evaluate", f"model={tmp_path / 'run' / 'model'}", f"tasks=[{folder}]",
                         "pooled_weight=2", cwd=tmp_path)
    assert refused.returncode == 2 and "model.pooled_weight must be a number in [0, 1]" in refused.stderr


def test_evaluate_a_plain_encoder_zero_shot_and_refuse_bad_tasks(tmp_path, minilm_path, stsb_dir):
    folder = _stsb_folder(stsb_dir, tmp_path / "stsb", n=30)
    de = tmp_path / "de.jsonl"
    write_rows(de, [{"sentence1": "Ein Hund läuft.", "sentence2": "Ein Hund rennt.", "score": 4.5},
                    {"sentence1": "Ein Mann isst.", "sentence2": "Es regnet.", "score": 0.2},
                    {"sentence1": "Kinder spielen.", "sentence2": "Kinder spielen draußen.", "score": 4.0}])
    done = run_module("train.evaluate", f"model={minilm_path}", f"tasks=[{folder},{de}]", "out=null", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.split()}
    assert lines["stsb"][1] == "30" and float(lines["stsb"][2]) > 50  # MiniLM ranks STS-B pairs well zero-shot
    assert lines["de"][1] == "3"
    bad = run_module("train.evaluate", f"model={minilm_path}", f"tasks=[{tmp_path}]", cwd=tmp_path)
    assert bad.returncode == 2 and "must hold test.csv" in bad.stderr and "Traceback" not in bad.stderr


def test_mteb_names_resolve_to_their_hub_datasets(tmp_path):
    name, spec = resolve_sts_task("STSBenchmark")
    assert name == "STSBenchmark" and spec.path == MTEB_STS["STSBenchmark"] and spec.split == "test"
    with pytest.raises(DataError, match="no score column"):
        no_score = write_rows(tmp_path / "pairs.csv", [{"sentence1": "a", "sentence2": "b"}])
        evaluate_sts(None, dict([resolve_sts_task(str(no_score))]))


def test_score_two_texts_and_a_file(tmp_path, minilm_path):
    from lightning_modules.model import export_model

    model = tiny_model(minilm_path)
    folder = export_model(model, tmp_path / "m")
    # Any text, as the shell passes it: an apostrophe, brackets, a comma, "=", "${...}"; here
    # with MiniLM itself, zero-shot, whose loading transformers reports at length.
    a, b = "The man's guitar [new], costs ${5}", "Someone plays music = joy, isn't it?"
    done = _process("train.score", f"model={minilm_path}", f"a={a}", f"b={b}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    zero_shot = LateInteractionModel.load(minilm_path)
    expected = float(zero_shot.score([a], [b])[0])
    assert done.stdout.strip() == f"{expected:.4f}"  # stdout is the score alone: it pipes
    assert expected != pytest.approx(float(zero_shot.score(["The man"], [b])[0]), abs=1e-4)  # the whole text
    # stderr says what happened, without transformers' progress bars and colour-coded load report.
    assert "evaluating its token vectors zero-shot" in done.stderr
    for noise in ("LOAD REPORT", "Loading weights", "\x1b[", "it/s]"):
        assert noise not in done.stderr, done.stderr
    # Hydra's own quoting (what the README showed before) still works.
    quoted = run_module("train.score", f"model={folder}", "a='A man\\'s guitar.'", "b=Music.", cwd=tmp_path)
    assert float(quoted.stdout.strip()) == pytest.approx(float(model.score(["A man's guitar."], ["Music."])[0]),
                                                         abs=1e-4)

    rows = [{"id": i, "query": f"question {i}", "positive": f"an answer to {i}"} for i in range(5)]
    for suffix in (".csv", ".jsonl"):
        source = write_rows(tmp_path / f"in{suffix}", rows)
        done = run_module("train.score", f"model={folder}", f"input={source}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        scored = tmp_path / f"in.scored{suffix}"
        if suffix == ".csv":
            written = list(csv.DictReader(scored.open(encoding="utf-8")))
        else:
            written = [json.loads(line) for line in scored.read_text().splitlines()]
        assert [str(r["id"]) for r in written] == [str(r["id"]) for r in rows]  # every row, in order
        expected = model.score([r["query"] for r in rows], [r["positive"] for r in rows]).tolist()
        assert [float(r["maxsim_score"]) for r in written] == pytest.approx(expected, abs=1e-5)
        again = run_module("train.score", f"model={folder}", f"input={source}", cwd=tmp_path)
        assert again.returncode == 2 and "already exists" in again.stderr

    empty = write_rows(tmp_path / "empty.csv", [{"query": "q", "positive": "p"}, {"query": "q2", "positive": " "}])
    done = run_module("train.score", f"model={folder}", f"input={empty}", cwd=tmp_path)
    assert done.returncode == 2 and f"{empty}, line 3, column 'positive': empty text" in done.stderr
    assert not (tmp_path / "empty.scored.csv").exists()
    unnamed = write_rows(tmp_path / "cols.csv", [{"left": "q", "right": "p"}])
    done = run_module("train.score", f"model={folder}", f"input={unnamed}", cwd=tmp_path)
    # The tool's own keys, not training's (data.columns...).
    assert done.returncode == 2 and "columns.text_a=... columns.text_b=..." in done.stderr
    assert "data.columns" not in done.stderr
    neither = run_module("train.score", f"model={folder}", cwd=tmp_path)
    assert neither.returncode == 2 and "give two texts" in neither.stderr


@pytest.mark.parametrize("tool", ["train.score", "train.evaluate"])
def test_a_model_that_is_not_there_names_the_tools_own_key(tmp_path, tool):
    missing = tmp_path / "nope"
    args = ["a=x", "b=y"] if tool == "train.score" else ["tasks=[STSBenchmark]"]
    done = run_module(tool, f"model={missing}", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert f"error: model={missing}: no such folder or file" in done.stderr
    # Not the training key, and no announcement of a zero-shot evaluation that cannot happen.
    assert "model_name_or_path" not in done.stderr and "zero-shot" not in done.stdout + done.stderr


def test_a_hub_id_that_cannot_load_names_the_tools_own_key(monkeypatch):
    from lightning_modules.errors import ModelLoadError

    def offline(name, *args, **kwargs):  # what from_pretrained raises without a hub, at once
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files of {name}")

    monkeypatch.setattr("lightning_modules.tokenization.AutoTokenizer.from_pretrained", offline)
    with pytest.raises(ModelLoadError, match="point model= at a local folder") as raised:
        LateInteractionModel.load("someone/not-a-cached-model")
    assert "model_name_or_path" not in str(raised.value) and "couldn't connect" in str(raised.value)


def test_score_reads_a_semicolon_csv_and_writes_it_back_alike(tmp_path, minilm_path):
    from lightning_modules.model import export_model

    model = tiny_model(minilm_path)
    folder = export_model(model, tmp_path / "m")
    source = tmp_path / "excel.csv"
    source.write_bytes("\ufeffquery;positive\r\nA man, a plan;A canal\r\n".encode("utf-8"))  # as Excel saves it
    done = run_module("train.score", f"model={folder}", f"input={source}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    written = (tmp_path / "excel.scored.csv").read_text(encoding="utf-8").splitlines()
    expected = float(model.score(["A man, a plan"], ["A canal"])[0])
    assert written[0] == "query;positive;maxsim_score"
    text_a, text_b, score = written[1].split(";")
    assert (text_a, text_b) == ("A man, a plan", "A canal") and float(score) == pytest.approx(expected, abs=1e-5)
