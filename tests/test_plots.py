"""Token heatmaps, score scatters and retrieval pictures: ``lightning_modules.plots``,
``python -m train.explain`` and the ``EvaluationPlots`` callback, with the tiny random model."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import create_autospec

import matplotlib.image
import pytest
import torch
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.trainer.states import TrainerFn
from scipy.stats import spearmanr

from lightning_modules.callbacks import evaluation_plots
from lightning_modules.callbacks.evaluation_plots import _log_images, _queries_to_draw, _validation_pairs, _wanted
from lightning_modules.data.batches import QueryBatch, TokenizedCorpus
from lightning_modules.encoder import EncoderOptions, TokenEncoder
from lightning_modules.evaluation import CorpusRetrievalEvaluator
from lightning_modules.evaluation.metrics import ranking_metrics
from lightning_modules.model import export_model
from lightning_modules.model import LateInteractionModel, TextSettings
from lightning_modules.plots import (
    DPI,
    MAX_INCHES,
    draw_query_metric_change,
    draw_relevant_rank,
    draw_score_scatter,
    draw_token_heatmap,
    query_metric_change_figure,
    rank_bins,
    relevant_rank_figure,
    score_scatter_figure,
    token_heatmap_figure,
    token_similarity,
    token_similarity_from_ids,
)
from train.pipeline import run
from tests.helpers.beir import write_beir
from tests.helpers.cli import run_module
from tests.helpers.models import TINY

REPO_ROOT = Path(__file__).resolve().parents[1]
A = "A man is playing a guitar on stage."
B = "Someone plays music, loudly!"


@pytest.fixture(scope="module")
def encoder(minilm_path) -> TokenEncoder:
    """Random tiny encoder that leaves [CLS]/[SEP] and punctuation out of matching, so masks have holes."""
    torch.manual_seed(0)
    return TokenEncoder(EncoderOptions(minilm_path, projection_dim=16, random_init=True, config_overrides=TINY,
                                       skip_special_tokens=True, skip_punctuation=True))


def _model(encoder, direction="both", text_settings=None) -> LateInteractionModel:
    return LateInteractionModel(encoder, direction=direction, text_settings=text_settings).eval()


def _read_png(path: Path):
    """The image as an ``(H, W, channels)`` array; fails unless ``path`` is a readable PNG."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return matplotlib.image.imread(path)


# ---- token_similarity -----------------------------------------------------------------------------


@pytest.mark.parametrize("direction, asymmetric", [("both", False), ("a2b", True), ("b2a", False)])
def test_token_similarity_matches_a_brute_force_loop(encoder, direction, asymmetric):
    markers = TextSettings(roles="asymmetric", query_marker="[unused0]", document_marker="[unused1]")
    model = _model(encoder, direction, markers if asymmetric else None)
    match = token_similarity(model, A, B)

    def token_vectors(text, is_query):
        ids = model.tokenize([text], is_query=is_query)[0]
        with torch.no_grad():
            embedded = model.embed(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
        return ids, embedded.vectors[0].tolist(), embedded.mask[0].tolist()

    ids_a, va, mask_a = token_vectors(A, True)
    ids_b, vb, mask_b = token_vectors(B, False)
    assert match.tokens_a == encoder.tokenizer.convert_ids_to_tokens(ids_a)
    assert match.tokens_b == encoder.tokenizer.convert_ids_to_tokens(ids_b)
    if asymmetric:  # each side tokenised as its role: the markers are there
        assert match.tokens_a[1] == "[unused0]" and match.tokens_b[1] == "[unused1]"
    assert match.mask_a.tolist() == mask_a and match.mask_b.tolist() == mask_b
    assert not all(mask_a) and not all(mask_b)  # [CLS], [SEP] and punctuation are out

    expected = [[sum(x * y for x, y in zip(u, v)) for v in vb] for u in va]
    assert match.similarity.shape == (len(ids_a), len(ids_b))
    for i in range(len(ids_a)):
        for j in range(len(ids_b)):
            assert abs(match.similarity[i, j].item() - expected[i][j]) < 1e-5, (i, j)
    for i in range(len(ids_a)):
        best = max((j for j in range(len(ids_b)) if mask_b[j]), key=lambda j: expected[i][j])
        assert match.best_b_for_a[i].item() == best, i
    for j in range(len(ids_b)):
        best = max((i for i in range(len(ids_a)) if mask_a[i]), key=lambda i: expected[i][j])
        assert match.best_a_for_b[j].item() == best, j

    assert match.score == pytest.approx(model.score([A], [B])[0].item(), abs=1e-5)
    assert match.direction == direction


def test_token_similarity_uses_eval_mode_and_restores_the_mode(encoder):
    model = _model(encoder).train()  # the MiniLM config has dropout 0.1: train mode is random
    first, second = token_similarity(model, A, B), token_similarity(model, A, B)
    assert model.training
    assert torch.equal(first.similarity, second.similarity)
    model.eval()
    assert torch.equal(token_similarity(model, A, B).similarity, first.similarity)


def test_token_similarity_rejects_an_empty_text(encoder):
    with pytest.raises(ValueError, match="empty"):
        token_similarity(_model(encoder), A, "   ")


# ---- drawing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["both", "a2b", "b2a"])
def test_heatmap_labels_markers_and_title(encoder, direction):
    match = token_similarity(_model(encoder, direction), A, B)
    figure = token_heatmap_figure(match, title="pair 0")
    axes = figure.axes[0]
    assert axes.get_title() == f"pair 0\nMaxSim {match.score:.4f} ({direction}, mean)"
    assert [t.get_text() for t in axes.get_xticklabels()] == match.tokens_b
    assert [t.get_text() for t in axes.get_yticklabels()] == match.tokens_a
    # Tokens left out of matching have grey labels, the others do not.
    assert [t.get_color() == "grey" for t in axes.get_yticklabels()] == (~match.mask_a).tolist()
    assert [t.get_color() == "grey" for t in axes.get_xticklabels()] == (~match.mask_b).tolist()

    # One marker per matching token, at its best match, for the directions the score uses.
    markers = {c.get_label(): c.get_offsets().tolist() for c in axes.collections if c.get_label().startswith("best")}
    rows = [i for i, m in enumerate(match.mask_a.tolist()) if m]
    columns = [j for j, m in enumerate(match.mask_b.tolist()) if m]
    expected = {}
    if direction != "b2a":
        expected["best match of a's token (row)"] = [[match.best_b_for_a[i].item(), i] for i in rows]
    if direction != "a2b":
        expected["best match of b's token (column)"] = [[j, match.best_a_for_b[j].item()] for j in columns]
    assert markers == expected


def test_heatmap_png_grows_with_the_texts_up_to_a_cap(encoder, tmp_path):
    model = _model(encoder)
    short = _read_png(draw_token_heatmap(token_similarity(model, "Hi.", "Hello."), tmp_path / "short.png"))
    match = token_similarity(model, A, B)
    medium = _read_png(draw_token_heatmap(match, tmp_path / "sub" / "medium.png"))  # folder created
    words = ("the quick brown fox jumps over the lazy dog " * 20).split()
    long_match = token_similarity(model, " ".join(words[:58]), " ".join(words[:58]))
    assert len(long_match.tokens_a) == len(long_match.tokens_b) == 60  # with [CLS] and [SEP]
    long = _read_png(draw_token_heatmap(long_match, tmp_path / "long.png"))
    huge = _read_png(draw_token_heatmap(token_similarity(model, " ".join(words), B), tmp_path / "huge.png"))

    for image in (short, medium, long, huge):
        assert image.ndim == 3 and image.shape[2] in (3, 4)
        assert image.shape[0] >= 300 and image.shape[1] >= 300  # never a postage stamp
        assert image.std() > 0.05  # not blank
    assert medium.shape[0] > short.shape[0] and medium.shape[1] > short.shape[1]
    assert long.shape[0] > medium.shape[0] and long.shape[1] > medium.shape[1]
    # 60 tokens a side fit under the cap, with readable cells (at least 0.25 in per token).
    assert long.shape[0] / 60 >= 0.25 * DPI and long.shape[1] / 60 >= 0.25 * DPI
    assert huge.shape[0] == MAX_INCHES * DPI  # 128 tokens: capped


def test_score_scatter_png_and_spearman_in_the_title(tmp_path):
    generator = torch.Generator().manual_seed(0)
    gold = torch.rand(50, generator=generator)
    predicted = gold + 0.3 * torch.randn(50, generator=generator)
    rho = spearmanr(predicted.numpy(), gold.numpy()).statistic
    title = score_scatter_figure(predicted, gold, "validation").axes[0].get_title()
    assert title == f"validation\n50 pairs, Spearman {100 * rho:.2f}"
    assert len(score_scatter_figure(predicted, gold, "v").axes[0].collections[0].get_offsets()) == 50

    image = _read_png(draw_score_scatter(predicted, gold, tmp_path / "plots" / "scatter.png", "validation"))
    assert image.shape[:2] == (600, 660)
    # Spearman is undefined for constant gold scores: no Spearman then, and no crash.
    assert "Spearman" not in score_scatter_figure([0.1, 0.2], [1.0, 1.0], "v").axes[0].get_title()
    with pytest.raises(ValueError, match="same length"):
        score_scatter_figure([0.1, 0.2], [1.0], "v")


# ---- python -m train.explain ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(encoder, tmp_path_factory) -> Path:
    return export_model(_model(encoder), tmp_path_factory.mktemp("export") / "tiny")


def test_cli_draws_the_heatmap_and_prints_the_score(exported, tmp_path):
    out = tmp_path / "new" / "heat.png"
    a = "The man's guitar, on stage [live]"  # an apostrophe and brackets, as typed in a shell
    done = run_module("train.explain", f"model={exported}", f"a={a}", f"b='{B}'", f"out={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = LateInteractionModel.from_pretrained(str(exported)).score([a], [B])[0].item()
    assert f"MaxSim {expected:.4f} (both, mean)" in done.stdout
    assert str(out) in done.stdout
    assert _read_png(out).shape[0] >= 300


@pytest.mark.parametrize("case", ["blank text", "not our model"])
def test_cli_bad_input_exits_2_with_one_line(exported, tmp_path, case):
    overrides = {
        "blank text": [f"model={exported}", f"a={A}", "b= "],
        "not our model": [f"model={tmp_path}", f"a={A}", f"b={A}"],  # a folder without maxsim_lightning.json
    }[case]
    done = run_module("train.explain", *overrides, f"out={tmp_path / 'heat.png'}", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert ("b is empty" if case == "blank text" else "is not a maxsim-lightning export") in lines[0]
    assert not (tmp_path / "heat.png").exists()


# ---- the EvaluationPlots callback -----------------------------------------------------------------


def test_plots_are_wanted_during_fit_and_zero_shot_only():
    def trainer(fn, step=0, sanity=False):
        return SimpleNamespace(state=SimpleNamespace(fn=fn), global_step=step, sanity_checking=sanity)

    assert _wanted(trainer(TrainerFn.FITTING, step=4))
    assert _wanted(trainer(TrainerFn.VALIDATING, step=0))  # the zero-shot line
    assert not _wanted(trainer(TrainerFn.FITTING, sanity=True))
    assert not _wanted(trainer(TrainerFn.VALIDATING, step=4))  # would overwrite fit's pictures
    assert not _wanted(trainer(TrainerFn.TESTING))


def test_validation_pairs_are_the_first_pair_items_and_none_for_retrieval():
    from lightning_modules.data.batches import PairItem, QueryItem
    from lightning_modules.datamodules import LateInteractionDataModule

    datamodule = LateInteractionDataModule()
    datamodule.datasets["validation"] = [PairItem([101, i, 102], [101, i + 1, 102], i / 10) for i in range(5)]
    assert _validation_pairs(datamodule, 2) == [
        ([101, 0, 102], [101, 1, 102], 0.0),
        ([101, 1, 102], [101, 2, 102], 0.1),
    ]
    datamodule.datasets["validation"] = [QueryItem([101, 5, 102], "q0", {0: 1})]  # retrieval: queries, no pairs
    assert _validation_pairs(datamodule, 3) == []
    assert _validation_pairs(SimpleNamespace(datasets={"validation": [PairItem([1], [2], 0.5)]}), 3) == []
    assert _validation_pairs(None, 3) == []


def test_images_go_to_wandb_loggers_only(tmp_path):
    wandb = create_autospec(WandbLogger, instance=True)
    csv = create_autospec(CSVLogger, instance=True)
    _log_images([csv, wandb], "val/scatter", [tmp_path / "s.png"], step=8)
    wandb.log_image.assert_called_once_with(key="val/scatter", images=[str(tmp_path / "s.png")], step=8)
    assert csv.method_calls == []


@pytest.mark.training
def test_training_run_saves_scatters_and_heatmaps(compose_cfg, tmp_path, stsb_dir):
    cfg = compose_cfg(
        [
            "+experiment=sts", "model=tiny", f"data.data_dir='{stsb_dir}'", "data.hub_id=null",
            "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false", "~logger",
            "trainer.max_epochs=1", "data.limit_train_pairs=32", "data.limit_eval_pairs=32",
        ],
        tmp_path,
    )
    assert cfg.callbacks.evaluation_plots.num_pairs == 3
    results = run(cfg)
    assert results["steps"] == 2  # 32 pairs, batches of 16
    # The zero-shot validation (step 0) and fit's one validation (step 2); the test passes draw nothing.
    expected = {f"val_scatter_step{s:06d}.png" for s in (0, 2)}
    expected |= {f"val_pair{k}_step{s:06d}.png" for k in range(3) for s in (0, 2)}
    written = {p.name for p in (tmp_path / "plots").iterdir()}
    assert written == expected
    for name in written:
        assert not math.isnan(_read_png(tmp_path / "plots" / name).mean())
    # Training moved the weights: the pictures of step 0 and step 2 differ.
    before, after = (_read_png(tmp_path / "plots" / f"val_pair0_step{s:06d}.png") for s in (0, 2))
    assert before.shape != after.shape or (before != after).any()


# ---- retrieval: per-query pictures, the evaluator's per-query results, the callback -----------------


def test_query_metric_change_counts_better_worse_and_unchanged(tmp_path):
    before = {"q0": 0.0, "q1": 0.5, "q2": 1.0, "q3": 0.3, "q4": 0.2}
    after = {"q0": 1.0, "q1": 0.5, "q2": 0.0, "q3": 0.6, "q4": 0.2, "q5": 0.9}  # q5: no zero-shot value, left out
    counts = draw_query_metric_change(after, before, tmp_path / "plots" / "ndcg.png", "validation")
    assert counts == {"queries": 5, "better": 2, "worse": 1, "unchanged": 2}
    assert _read_png(tmp_path / "plots" / "ndcg.png").std() > 0.05

    axes = query_metric_change_figure(after, before, "validation")[0].axes[0]
    assert axes.get_title() == "validation\n5 queries: 2 better, 1 worse, 2 unchanged"
    points = {c.get_label(): c.get_offsets().tolist() for c in axes.collections}  # (before, after) per query
    assert points == {"better (2)": [[0.0, 1.0], [0.3, 0.6]], "worse (1)": [[1.0, 0.0]],
                      "unchanged (2)": [[0.5, 0.5], [0.2, 0.2]]}

    # No zero-shot validation: the trained model alone, and the title says so.
    figure, counts = query_metric_change_figure(after, None, "validation")
    assert counts == {"queries": 6}
    assert figure.axes[0].get_title() == "validation\n6 queries, no zero-shot validation to compare with"
    assert sum(patch.get_height() for patch in figure.axes[0].patches) == 6


def test_relevant_rank_bins_and_counts(tmp_path):
    assert rank_bins(100) == [(1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 20), (21, 50), (51, 100)]
    assert rank_bins(7) == [(1, 1), (2, 2), (3, 3), (4, 5), (6, 7)]
    after = [1, 1, 2, 5, 7, 100, None]
    before = [3, None, None, 60, 1, 1, 2]
    counts = draw_relevant_rank(after, before, tmp_path / "rank.png", "validation")
    assert counts == {"labels": ["1", "2", "3", "4-5", "6-10", "11-20", "21-50", "51-100", ">100"],
                      "after": [2, 1, 0, 1, 1, 0, 0, 1, 1], "before": [2, 1, 1, 0, 0, 0, 0, 1, 2]}
    assert _read_png(tmp_path / "rank.png").std() > 0.05

    figure, _ = relevant_rank_figure(after, before, "validation")
    axes = figure.axes[0]
    assert axes.get_title() == "validation\n7 queries; at rank 1: 2 -> 2, beyond 100: 2 -> 1"
    assert [[bar.get_height() for bar in bars] for bars in axes.containers] == [counts["before"], counts["after"]]
    figure, counts = relevant_rank_figure(after, None, "validation", depth=10)
    assert counts == {"labels": ["1", "2", "3", "4-5", "6-10", ">10"], "after": [2, 1, 0, 1, 1, 2]}
    assert figure.axes[0].get_title().endswith("no zero-shot validation")


def test_queries_to_draw_alternate_most_improved_and_most_worsened():
    before = {"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.5, "e": 0.2}
    after = {"a": 0.9, "b": 0.1, "c": 0.6, "d": 0.5, "e": 0.2}
    assert _queries_to_draw(after, before, 4) == ["a", "b", "c", "e"]  # then unchanged, the worst first
    assert _queries_to_draw(after, before, 0) == []
    assert _queries_to_draw(after, None, 2) == ["b", "e"]  # no zero-shot: the worst after training


def test_retrieval_evaluator_keeps_each_querys_results(encoder):
    model = _model(encoder, direction="a2b")
    documents = ["Insulin resistance in liver cells.", "Tumor growth in mice.", "Vitamin D and bone density.",
                 "Virus entry into immune cells.", "Statins and heart risk.", "Gene expression in the brain."]
    queries = {"q0": "insulin in the liver", "q1": "bone density and vitamins", "q2": "heart risk of statins"}
    judged = [{0: 1}, {2: 1, 3: 1}, {4: 2}]
    corpus = TokenizedCorpus([f"d{i}" for i in range(6)], model.tokenize(documents, is_query=False))
    ids = model.tokenize(list(queries.values()), is_query=True)
    width = max(map(len, ids))
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    evaluator = CorpusRetrievalEvaluator()
    with torch.no_grad():
        evaluator.update(model, QueryBatch(input_ids, mask, list(queries), judged, corpus))
        metrics = evaluator.compute(model, "val")

    # Brute force: each query's MaxSim against every document, best first.
    order = [sorted(range(6), key=lambda d: -token_similarity_from_ids(model, q, corpus.token_ids[d]).score)
             for q in ids]
    assert metrics == pytest.approx(ranking_metrics(torch.tensor(order), judged))
    split = evaluator.last_split
    assert split.split == "val" and split.corpus is corpus and list(split.queries) == ["q0", "q1", "q2"]
    for row, query in enumerate(split.queries.values()):
        assert query.token_ids == ids[row]
        assert query.top_document == order[row][0]
        assert query.relevant_rank == 1 + min(order[row].index(d) for d in judged[row])
    for name, value in metrics.items():  # the averages are those of the per-query results
        assert value == pytest.approx(sum(q.metrics[name] for q in split.queries.values()) / 3)
    assert CorpusRetrievalEvaluator._first_relevant_rank([4, -1], {3: 1}) is None  # beyond the ranking depth
    assert CorpusRetrievalEvaluator._first_relevant_rank([4, 3, 3], {3: 1, 4: 0}) == 2


@pytest.fixture
def tiny_beir(tmp_path) -> Path:
    topics = ["insulin resistance in liver cells", "tumor growth in mouse models", "vitamin D and bone density",
              "virus entry into immune cells", "statin dose and heart risk", "gene expression in the brain"]
    corpus = [{"_id": f"d{i}", "title": f"Study {i}", "text": f"We report on {topics[i % 6]}, case {i}."}
              for i in range(30)]
    queries = [{"_id": f"q{i}", "text": f"Is there evidence about {topics[i % 6]} (claim {i})?"} for i in range(36)]
    qrels = {"train": [(f"q{i}", f"d{i}", 1) for i in range(30)],
             "test": [(f"q{i}", f"d{i - 30}", 1) for i in range(30, 36)]}
    return write_beir(tmp_path / "beir", corpus, queries, qrels)


@pytest.mark.training
@pytest.mark.parametrize("zero_shot", [True, False])
def test_retrieval_run_saves_per_query_pictures(compose_cfg, tmp_path, tiny_beir, monkeypatch, zero_shot):
    drawn = []  # what each per-query nDCG picture counted
    draw = evaluation_plots.draw_query_metric_change
    monkeypatch.setattr(evaluation_plots, "draw_query_metric_change", lambda *a, **k: drawn.append(draw(*a, **k)))
    cfg = compose_cfg(
        ["+experiment=scifact", "model=tiny", f"data.path={tiny_beir}", "data.validation_min_queries=5",
         "data.negatives_from=none", f"zero_shot={zero_shot}", "encoding_cache.enabled=false", "export=false",
         "~logger", "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false"],
        tmp_path / "run",
    )
    run(cfg)
    plots = tmp_path / "run" / "plots"
    written = {p.name for p in plots.iterdir()}
    assert written == {"retrieval_per_query_ndcg.png", "retrieval_relevant_rank.png",
                       *(f"retrieval_heatmap_{k}.png" for k in range(3))}
    for name in written:
        assert _read_png(plots / name).std() > 0.05
    # Fit's one validation of the 5 held-out queries, against the zero-shot one where there was one.
    assert len(drawn) == 1 and drawn[0]["queries"] == 5
    assert set(drawn[0]) == ({"queries", "better", "worse", "unchanged"} if zero_shot else {"queries"})
    assert not zero_shot or drawn[0]["better"] + drawn[0]["worse"] + drawn[0]["unchanged"] == 5


def test_a_hybrid_models_score_is_described_by_its_two_views(minilm_path):
    from tests.helpers.models import tiny_model

    model = tiny_model(minilm_path)
    model.pooled_weight = 0.25
    match = token_similarity(model, "A man is cutting a tomato.", "No tomato is cut.")
    expected = model.score(["A man is cutting a tomato."], ["No tomato is cut."])[0]
    assert match.score == pytest.approx(float(expected), abs=1e-6)
    assert match.score == pytest.approx(0.75 * match.maxsim + 0.25 * match.pooled, abs=1e-6)
    assert match.describe_score() == (f"score {match.score:.4f} = 0.75 x MaxSim {match.maxsim:.4f} (both, mean) "
                                      f"+ 0.25 x pooled cosine {match.pooled:.4f}")
