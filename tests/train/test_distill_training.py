"""Score distillation end to end: the DataModule, the module's distillation step against pair-by-pair
scoring, ``python -m train +experiment=distill`` with the tiny model, and ``python -m train.teacher_scores``."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_modules.data.batches import DistillationBatch
from lightning_modules.data.distillation import write_teacher_scores
from lightning_modules.datamodules import DistillationDataModule
from lightning_modules.errors import DataError
from lightning_modules.losses import KLDistillationLoss
from lightning_modules.model import LateInteractionModel
from lightning_modules.module import MaxSimModule
from lightning_modules.tokenization import pad_token_ids
from tests.helpers.beir import write_beir
from tests.helpers.cli import run_module
from tests.helpers.models import TINY
from tests.helpers.precision import FP32_TOOL

TOPICS = ["insulin resistance in liver cells", "tumor growth in mouse models", "vitamin D and bone density",
          "virus entry into immune cells", "statin dose and heart risk", "gene expression in the brain"]


@pytest.fixture
def distill_data(tmp_path):
    """A BEIR folder (30 documents; queries q0-q39, dev q20-q29, test q30-q39) and teacher scores of
    q0-q19 over 6 candidates each, the first the query's own document."""
    corpus = [{"_id": f"d{i}", "title": f"Study {i}", "text": f"We report on {TOPICS[i % 6]}, case {i}."}
              for i in range(30)]
    queries = [{"_id": f"q{i}", "text": f"Is there evidence about {TOPICS[i % 6]} (claim {i})?"} for i in range(40)]
    qrels = {"dev": [(f"q{i}", f"d{i % 30}", 1) for i in range(20, 30)],
             "test": [(f"q{i}", f"d{i % 30}", 1) for i in range(30, 40)]}
    folder = write_beir(tmp_path / "beir", corpus, queries, qrels)
    rows = [(f"q{i}", [f"d{(i + j * 5) % 30}" for j in range(6)], [2.0 - 0.3 * j for j in range(6)]) for i in range(20)]
    scores = write_teacher_scores(tmp_path / "scores.jsonl", rows)
    return folder, scores


def test_the_datamodule_tokenises_only_the_candidates_and_keeps_evaluation_queries_out(distill_data, minilm_path,
                                                                                      tmp_path):
    folder, scores = distill_data
    # q20 (a dev query) is scored too: with the same text in the evaluation folder, it must not train.
    extra = [(r["query_id"], r["document_ids"], r["scores"]) for r in map(json.loads, scores.read_text().splitlines())]
    extra.append(("q20", [f"d{j}" for j in range(6)], [1.0] * 6))
    scores = write_teacher_scores(tmp_path / "with_dev.jsonl", extra)
    datamodule = DistillationDataModule(str(folder / "queries.jsonl"), str(folder / "corpus.jsonl"), str(scores),
                                        str(folder), minilm_path, n_ways=4, batch_size=5)
    datamodule.setup("fit")
    assert len(datamodule.datasets["train"]) == 20 and len(datamodule.train_corpus) == 30
    assert [len(datamodule.datasets[s]) for s in ("validation", "test")] == [10, 10]
    report = datamodule.report_dict()
    assert (report["scores"]["rows"], report["scores"]["candidates"], report["scores"]["problems"]) == (21, 126, 0)
    assert report["held_out_evaluation_queries"] == 1 and "'q20'" in report["warnings"][0]
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.teacher_scores.shape == (5, 4) and batch.input_ids.shape[0] == 5 + 5 * 4
    # A file with a bad row stops setup with the reader's message.
    bad = write_teacher_scores(tmp_path / "bad.jsonl", [("q1", ["d1", "nope", "d2", "d3"], [1.0, 2.0, 3.0, 4.0])])
    broken = DistillationDataModule(str(folder), str(folder), str(bad), str(folder), minilm_path, n_ways=4)
    with pytest.raises(DataError, match=r"bad\.jsonl, line 1: 1 document ids not in .*corpus\.jsonl: 'nope'"):
        broken.setup("fit")


def test_the_distillation_step_scores_each_query_against_its_own_candidates_only(minilm_path):
    module = MaxSimModule(minilm_path, direction="a2b", random_init=True, config_overrides=TINY, projection_dim=16,
                          distillation_normalize_scores=False, distillation_student_temperature=0.1,
                          distillation_teacher_temperature=0.1).eval()
    queries = [[101, 2054, 2003, 102], [101, 7592, 102]]
    documents = [[101, 2000 + i, 2100 + i, 2200 + i, 102][: 3 + i % 3] for i in range(6)]  # query 0: 0-2, query 1: 3-5
    input_ids, attention_mask = pad_token_ids(queries + documents, 0)
    teacher = torch.tensor([[1.0, 0.5, 0.0], [0.2, 0.9, 0.1]])
    got = module._distillation_loss(DistillationBatch(input_ids, attention_mask, teacher_scores=teacher))
    # Reference: every (query, document) pair encoded alone, unpadded, and scored by itself.
    def alone(ids: list[int]):
        return module.model.embed(*pad_token_ids([ids], 0))

    with torch.no_grad():
        scores = torch.tensor([[float(module.model.score_pairs(alone(queries[q]), alone(documents[3 * q + j])))
                                for j in range(3)] for q in range(2)])
    want = KLDistillationLoss(0.1, 0.1, normalize_scores=False)(scores, teacher)
    torch.testing.assert_close(got.detach(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.training
def test_the_distill_experiment_trains_tests_and_exports_from_the_command_line(distill_data, tmp_path):
    folder, scores = distill_data
    run_dir = tmp_path / "run"
    done = run_module("train", "+experiment=distill", "model=tiny", f"data.queries='{folder}/queries.jsonl'",
                      f"data.corpus='{folder}/corpus.jsonl'", f"data.scores='{scores}'", f"data.eval_path='{folder}'",
                      "data.n_ways=4", "data.batch_size=5", "~logger", "++trainer.enable_progress_bar=false",
                      "++trainer.enable_model_summary=false", "encoding_cache.enabled=false",
                      f"hydra.run.dir='{run_dir}'", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["monitor"] == "val/ndcg@10"
    for name in ("val/ndcg@10", "test/ndcg@10", "test/recall@10"):
        assert 0 <= results[name] <= 100
    assert results["data"]["scores"]["rows"] == 20 and results["data"]["train_queries"] == 20
    assert results["data"]["evaluation"]["queries"] == {"validation": 10, "test": 10}
    settings = json.loads((run_dir / "model" / "maxsim_lightning.json").read_text())
    assert settings["direction"] == "a2b" and settings["text"]["roles"] == "asymmetric"
    # A bad scores file: one paragraph naming the file and row, exit status 2.
    bad = write_teacher_scores(tmp_path / "bad.jsonl", [("q1", ["d1", "d2", "d3", "d4"], [1.0, float("nan"), 0, 0])])
    failed = run_module("train", "+experiment=distill", "model=tiny", f"data.queries='{folder}'",
                        f"data.corpus='{folder}'", f"data.scores='{bad}'", f"data.eval_path='{folder}'",
                        "data.n_ways=4", "~logger", f"hydra.run.dir='{tmp_path / 'failed'}'", cwd=tmp_path)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert f"error: {bad}: 1 of its 1 rows cannot be used" in failed.stderr
    assert f"{bad}, line 1: 1 scores are not finite (position 1: nan)" in failed.stderr


def test_teacher_scores_writes_each_querys_exact_ranking(distill_data, tmp_path, minilm_path):
    folder, _ = distill_data
    out = tmp_path / "teacher.jsonl"
    done = run_module("train.teacher_scores", f"model={minilm_path}", f"queries={folder}", f"corpus={folder}",
                      f"out={out}", "k=5", FP32_TOOL, cwd=tmp_path)  # as the search below
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["query_id"] for r in rows] == [f"q{i}" for i in range(40)]
    assert all(len(r["document_ids"]) == len(r["scores"]) == 5 and r["scores"] == sorted(r["scores"], reverse=True)
               for r in rows)
    # The same ranking as the model's own exact search.
    model = LateInteractionModel.load(minilm_path).eval()
    found = model.index(str(folder)).search("Is there evidence about tumor growth in mouse models (claim 31)?", k=5)
    assert rows[31]["document_ids"] == found.ids[0]
    assert rows[31]["scores"] == pytest.approx(found.scores[0], abs=1e-4)
    # The file trains as it is: read back against the same folder, its 20 evaluation queries held out.
    datamodule = DistillationDataModule(str(folder), str(folder), str(out), str(folder), minilm_path, n_ways=5)
    datamodule.setup("fit")
    assert len(datamodule.datasets["train"]) == 20 and datamodule.report_dict()["held_out_evaluation_queries"] == 20
    missing = run_module("train.teacher_scores", f"model={minilm_path}", f"queries={folder}", f"out={out}",
                         cwd=tmp_path)
    assert missing.returncode == 2 and "give the documents as corpus=FILE" in missing.stderr
