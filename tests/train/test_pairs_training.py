"""``+experiment=pairs`` end to end with the tiny model: each supervision, its metrics, bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from sklearn.metrics import roc_auc_score

from lightning_modules.datamodules import PairsDataModule
from lightning_modules.evaluation.metrics import best_threshold_metrics, metrics_at_threshold
from lightning_modules.module import MaxSimModule
from tests.helpers.cli import run_module
from tests.helpers.memory import saved_bytes
from tests.helpers.models import TINY
from tests.helpers.precision import FP32_TRAINING
from tests.helpers.tables import write_rows
from train.pipeline import run


def _stsb_rows(stsb_dir, split, n):
    with (stsb_dir / f"{split}.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))[:n]


def _binary_rows(rows):
    return [{"text1": r["sentence1"], "text2": r["sentence2"], "label": int(float(r["score"]) >= 4)} for r in rows]


def _overrides(train, *extra):
    return ["+experiment=pairs", "model=tiny", f"data.train='{train}'", "~logger", "trainer.max_epochs=2",
            "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false", *extra]


def _reload(results, cfg):
    module = MaxSimModule.load_from_checkpoint(results["best_checkpoint"], weights_only=True).eval()
    datamodule = PairsDataModule(**{k: v for k, v in cfg.data.items() if not k.startswith("_")})
    datamodule.setup("fit")
    return module, datamodule


def _scores_and_targets(module, loader, key):
    scores, targets = [], []
    with torch.no_grad():
        for batch in loader:
            scores.append(module(batch.input_ids, batch.attention_mask))
            targets.append(getattr(batch, key))
    return torch.cat(scores), torch.cat(targets)


@pytest.mark.training
def test_binary_pairs_report_auc_and_apply_validation_thresholds_on_test(compose_cfg, tmp_path, stsb_dir):
    train = write_rows(tmp_path / "train.csv", _binary_rows(_stsb_rows(stsb_dir, "train", 200)))
    test = write_rows(tmp_path / "test.csv", _binary_rows(_stsb_rows(stsb_dir, "test", 80)))
    cfg = compose_cfg(_overrides(train, f"data.test='{test}'", "data.validation_fraction=0.3",
                                 FP32_TRAINING), tmp_path / "run")  # as the recomputation below
    results = run(cfg)
    assert results["monitor"] == "val/auc"
    for key in ("val/auc", "val/f1", "val/accuracy", "val/f1_threshold", "test/auc", "test/f1", "test/accuracy"):
        assert key in results and key in results["zero_shot"] or key.endswith("threshold"), key
    assert results["data"]["supervision"] == "binary"
    assert results["data"]["train"]["rows_read"] == 200 and results["data"]["train"]["held_out"] > 0

    # Recompute from the best checkpoint, outside Lightning: thresholds come from validation...
    module, datamodule = _reload(results, cfg)
    val_scores, val_labels = _scores_and_targets(module, datamodule.val_dataloader(), "labels")
    best = best_threshold_metrics(val_scores, val_labels)
    assert module.evaluator.decision_thresholds.tolist() == pytest.approx([best["f1_threshold"], best["accuracy_threshold"]],
                                                                abs=1e-5)
    assert results["val/f1_threshold"] == pytest.approx(best["f1_threshold"], abs=1e-4)
    # ... and the test figures are at those thresholds, AUC as scikit-learn computes it.
    test_scores, test_labels = _scores_and_targets(module, datamodule.test_dataloader(), "labels")
    assert results["test/auc"] == pytest.approx(100 * roc_auc_score(test_labels.numpy(), test_scores.numpy()), abs=0.01)
    at = metrics_at_threshold(test_scores, test_labels, best["f1_threshold"])
    assert results["test/f1"] == pytest.approx(100 * at["f1"], abs=0.01)
    assert (tmp_path / "run" / "results.json").is_file()


@pytest.mark.training
def test_triplets_train_contrastively_and_report_retrieval(compose_cfg, tmp_path, stsb_dir):
    rows = [r for r in _stsb_rows(stsb_dir, "train", 600) if float(r["score"]) >= 3.5]
    triplets = [{"anchor": r["sentence1"], "positive": r["sentence2"], "negative": rows[(i + 5) % len(rows)]["sentence2"]}
                for i, r in enumerate(rows)]
    train = write_rows(tmp_path / "train.jsonl", triplets)
    cfg = compose_cfg(_overrides(train, "data.validation_fraction=0.1", "data.mine_negatives=2"), tmp_path / "run")
    results = run(cfg)
    assert results["monitor"] == "val/mrr@10"
    assert {"val/mrr@10", "val/recall@1", "val/recall@10"} <= set(results) & set(results["zero_shot"])
    assert "test/mrr@10" not in results  # no test data: no test pass
    notes = " ".join(results["data"]["train"]["notes"])
    assert "mining added" in notes

    # MRR@10 of the best checkpoint, scored one pair at a time: no padding, no chunking.
    module, datamodule = _reload(results, cfg)
    validation = datamodule.examples["validation"]
    queries = list(dict.fromkeys(validation.text_a))
    corpus = list(dict.fromkeys(validation.text_b + [n for ns in validation.negatives for n in ns]))
    tokenizer = datamodule.tokenizer
    scores = torch.zeros(len(queries), len(corpus))
    with torch.no_grad():
        for q, query in enumerate(queries):
            for c, text in enumerate(corpus):
                encoded = tokenizer([query, text], padding=True, truncation=True, max_length=128, return_tensors="pt")
                scores[q, c] = module(encoded["input_ids"], encoded["attention_mask"])
    relevant = [{corpus.index(b) for a, b in zip(validation.text_a, validation.text_b) if a == query} for query in queries]
    # Each query's ranking by a Python sort (ties: the earlier text first); MRR@10 and Recall@1.
    rankings = [sorted(range(len(corpus)), key=lambda c: (-float(scores[q, c]), c)) for q in range(len(queries))]
    first_hits = [next((rank for rank, c in enumerate(ranking[:10], 1) if c in relevant[q]), None)
                  for q, ranking in enumerate(rankings)]
    mrr = sum(1 / rank for rank in first_hits if rank) / len(queries)
    recall_at_1 = sum((ranking[0] in relevant[q]) / len(relevant[q]) for q, ranking in enumerate(rankings)) / len(queries)
    assert results["val/mrr@10"] == pytest.approx(100 * mrr, abs=0.01)
    assert results["val/recall@1"] == pytest.approx(100 * recall_at_1, abs=0.01)


@pytest.mark.training
def test_question_passage_pairs_train_as_retrieval_with_the_data_path_alone(compose_cfg, tmp_path, stsb_dir):
    rows = [{"question": r["sentence1"], "passage": r["sentence2"]}
            for r in _stsb_rows(stsb_dir, "train", 300) if float(r["score"]) >= 3.5]
    train = write_rows(tmp_path / "qa.csv", rows)
    cfg = compose_cfg(["+experiment=retrieval_pairs", f"data.train='{train}'", "model=tiny", "~logger",
                       "trainer.max_epochs=1", "++trainer.enable_progress_bar=false"], tmp_path / "run")
    assert (cfg.model.direction, cfg.data.roles, cfg.data.eval_corpus) == ("a2b", "asymmetric", "all")
    results = run(cfg)
    assert results["data"]["supervision"] == "contrastive" and results["monitor"] == "val/mrr@10"
    # Validation ranks against every passage of the data, training's included.
    datamodule = _reload(results, cfg)[1]
    assert len(datamodule.corpora["validation"]) == len({r["passage"].strip() for r in rows})
    assert {"val/mrr@10", "val/ndcg@10", "val/recall@1"} <= set(results)


@pytest.mark.training
def test_graded_pairs_in_tsv_with_a_declared_range(compose_cfg, tmp_path, stsb_dir):
    rows = [{"sentence1": r["sentence1"], "sentence2": r["sentence2"], "score": 20 * float(r["score"])}
            for r in _stsb_rows(stsb_dir, "train", 150)]
    train = write_rows(tmp_path / "train.tsv", rows)
    cfg = compose_cfg(_overrides(train, "data.score_range=[0,100]", "trainer.max_epochs=1"), tmp_path / "run")
    results = run(cfg)
    assert results["monitor"] == "val/spearman" and "val/spearman" in results["zero_shot"]


@pytest.mark.training
def test_cli_bad_pairs_file_ends_in_one_clear_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text1,text2,label\na,b,1\nc,d,maybe\n", encoding="utf-8")
    done = run_module("train", *_overrides(bad), f"hydra.run.dir='{tmp_path / 'run'}'", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"error: {bad}, line 3, column 'label': label 'maybe' is not 0 or 1" in done.stderr
    assert "Traceback" not in done.stderr
    done = run_module("train", "+experiment=pairs", "model=tiny", f"hydra.run.dir='{tmp_path / 'r2'}'", cwd=tmp_path)
    assert done.returncode == 2 and "error: no training data: python -m train +experiment=pairs data.train=FILE" in (
        done.stderr)


def test_results_json_counts_what_was_dropped(compose_cfg, tmp_path, capsys):
    rows = [{"query": f"q{i % 30}", "positive": f"p{i}"} for i in range(90)]
    rows += [{"query": "q1", "positive": "p1"}, {"query": " ", "positive": "p"}]
    train = write_rows(tmp_path / "t.jsonl", rows)
    cfg = compose_cfg(_overrides(train, "++trainer.fast_dev_run=true"), tmp_path / "run")
    run(cfg)
    data = json.loads((tmp_path / "run" / "results.json").read_text())["data"]
    assert data["train"]["rows_read"] == 92
    assert data["train"]["dropped"] == {"empty or whitespace-only text": 1, "duplicate pair": 1}
    assert data["train"]["kept"] + data["train"]["held_out"] == 90
    assert data["validation"]["rows_read"] == data["train"]["held_out"]
    # 90 pairs hold out fewer than validation_min_pairs: said in results.json and under the summary.
    [warning] = data["warnings"]
    assert f"only {data['train']['held_out']} validation pairs held out of 90" in warning
    assert f"warning: {warning}" in capsys.readouterr().out


@pytest.mark.training
@pytest.mark.slow  # two trainings, one under two processes (half a minute); the sharded ranking itself is
# checked with two processes in the default run (tests/evaluation/test_corpus_ranking.py)
def test_retrieval_evaluation_under_two_processes_sees_the_whole_corpus(tmp_path, stsb_dir):
    """Each process embeds its shard of the validation texts; the metric must be that of the whole set."""
    rows = [{"anchor": r["sentence1"], "positive": r["sentence2"]} for r in _stsb_rows(stsb_dir, "train", 300)]
    train = write_rows(tmp_path / "train.jsonl", rows)
    results = {}
    for name, trainer in (("one", "default"), ("two", "ddp_sim")):
        run_dir = tmp_path / name
        overrides = [*_overrides(train, f"trainer={trainer}", "trainer.max_epochs=1", "data.validation_fraction=0.2"),
                     f"hydra.run.dir='{run_dir}'"]
        if trainer == "default":
            done = run_module("train", *overrides, cwd=tmp_path)
        else:  # DDP starts its second process from the command line: a real one
            done = subprocess.run([sys.executable, "-m", "train", *overrides], cwd=tmp_path, capture_output=True,
                                  text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        results[name] = json.loads((run_dir / "results.json").read_text())
    # The same untrained model (seed 42) on the same 60 validation pairs: the same figures.
    assert results["two"]["zero_shot"] == results["one"]["zero_shot"]


# ----------------------------------------------------------------------------
# The contrastive step at large batches: each side at its own length, gradient checkpointing
# ----------------------------------------------------------------------------



def _contrastive_batch():
    """Short queries and long documents, padded together by the collator to the longest document."""
    from lightning_modules.data.batches import ContrastiveItem
    from lightning_modules.data.collate import ContrastiveCollator

    items = [ContrastiveItem([101, 2000 + i, 102], [101, *range(3000 + 10 * i, 3000 + 10 * i + 5 + 2 * i), 102],
                             a_key=i, b_key=i, negatives=[(100 + i, [101, 4000 + i, 4100 + i, 102])]) for i in range(5)]
    return items, ContrastiveCollator(0, {i: {i} for i in range(5)}, max_negatives=1)(items)


def _tiny_module(minilm_path, **options):
    """In training mode (Hugging Face checkpoints layers only there), without dropout: runs compare exactly."""
    torch.manual_seed(0)
    no_dropout = {**TINY, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    return MaxSimModule(minilm_path, projection_dim=8, random_init=True, config_overrides=no_dropout, **options)


def test_contrastive_loss_encodes_each_text_as_if_alone(minilm_path):
    # The reference embeds every text on its own, with no padding at all; the module encodes
    # queries and candidates at their own padded lengths. Cutting a real token, or scoring
    # padding, would move the scores.
    items, batch = _contrastive_batch()
    module = _tiny_module(minilm_path)
    model = module.model
    widths = []
    embed = model.embed
    model.embed = lambda ids, mask: widths.append(tuple(ids.shape)) or embed(ids, mask)
    got = module._contrastive_loss(batch)
    model.embed = embed
    # Queries at their own length (3 tokens), not padded to the longest candidate (15).
    longest = max(len(i.b) for i in items)
    assert widths == [(5, 3), (10, longest)], widths
    with torch.no_grad():
        alone = [model.embed(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).vectors[0]
                 for ids in [i.a for i in items] + [i.b for i in items] + [i.negatives[0][1] for i in items]]
    from lightning_modules.encoder import TokenEmbeddings

    a, candidates = TokenEmbeddings.stack(alone[:5]), TokenEmbeddings.stack(alone[5:])
    want = module.pair_infonce(model.score_matrix(a, candidates), mask=batch.false_negatives)
    torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_step_for_less_kept_memory(minilm_path):
    _, batch = _contrastive_batch()
    results = []
    for checkpointing in (False, True):
        module = _tiny_module(minilm_path, gradient_checkpointing=checkpointing)
        backbone = module.model.encoder.backbone
        switched = getattr(backbone, "is_activation_checkpointing", None)  # transformers 5; 4 says "gradient"
        assert (backbone.is_gradient_checkpointing if switched is None else switched) == checkpointing
        params = [p for p in module.parameters() if p.requires_grad]
        kept = saved_bytes(lambda: module._contrastive_loss(batch))
        loss = module._contrastive_loss(batch)
        results.append((kept, loss.detach(), torch.autograd.grad(loss, params)))
    (kept_plain, loss_plain, grads_plain), (kept_ckpt, loss_ckpt, grads_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss_plain)
    for mine, theirs in zip(grads_ckpt, grads_plain):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-7)
    assert kept_ckpt < kept_plain / 2, (kept_ckpt, kept_plain)
