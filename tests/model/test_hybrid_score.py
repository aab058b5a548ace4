"""The hybrid score ``(1 - w) * MaxSim + w * pooled cosine`` (``pooled_weight``): scored by every path
of the model as the reference says, saved in exports and checkpoints, searched in an index, and said
in the model card and a warning where PyLate and sentence-transformers cannot follow."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from lightning_modules.errors import SettingsError
from lightning_modules.maxsim import maxsim_pairwise
from lightning_modules.model import LateInteractionModel, export_model
from tests.helpers.maxsim_reference import reference_pairwise, reference_pooled_matrix
from tests.helpers.models import tiny_model

A = ["A man is cutting a tomato.", "Two dogs run in the snow.", "A woman plays the violin on a stage tonight."]
B = ["A tomato is not being cut by a man.", "Dogs are running through snow.", "Nobody plays."]


def _hybrid(minilm_path, weight: float) -> LateInteractionModel:
    model = tiny_model(minilm_path)
    model.pooled_weight = weight
    return model


def _embedded(model, texts):
    """Each text embedded alone: no padding, no batching."""
    out = []
    for ids in model.tokenize(texts):
        with torch.no_grad():
            out.append(model.embed(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)))
    return out


@pytest.mark.parametrize("weight", [0.0, 0.4, 1.0])
def test_every_scoring_path_gives_the_references_hybrid(minilm_path, weight):
    model = _hybrid(minilm_path, weight)
    expected = []
    for a, b in zip(_embedded(model, A), _embedded(model, B)):
        maxsim = reference_pairwise(a.vectors, a.mask, b.vectors, b.mask, "both", "mean", None)
        pooled = reference_pooled_matrix(a.vectors, a.mask, b.vectors, b.mask)[0]
        expected.append(float((1 - weight) * maxsim + weight * pooled))
    expected = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(model.score(A, B).double(), expected, atol=1e-5, rtol=0)
    matrix = model.similarity_matrix(A, B)
    torch.testing.assert_close(matrix.diagonal().double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(matrix, model.similarity_matrix(A, B, chunk=1), atol=1e-6, rtol=0)
    found = model.index(B, dtype="float32").search(A, k=len(B))
    for row, (indices, scores) in enumerate(zip(found.indices, found.scores)):
        torch.testing.assert_close(torch.tensor(scores), matrix[row, indices], atol=1e-5, rtol=0)


def test_weight_zero_is_maxsim_alone_and_the_weight_changes_the_score(minilm_path):
    plain, hybrid = _hybrid(minilm_path, 0.0), _hybrid(minilm_path, 0.5)
    (a,), (b,) = _embedded(plain, A[:1]), _embedded(plain, B[:1])
    assert torch.equal(plain.score_pairs(a, b), maxsim_pairwise(a.vectors, a.mask, b.vectors, b.mask))
    assert not torch.allclose(plain.score(A, B), hybrid.score(A, B))
    assert hybrid.scoring_options() == {"direction": "both", "reduction": "mean", "temperature": None,
                                        "pooled_weight": 0.5}


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True, None])
def test_a_weight_outside_zero_one_is_a_settings_error(minilm_path, bad):
    from lightning_modules.encoder import EncoderOptions

    with pytest.raises(SettingsError, match=r"model.pooled_weight must be a number in \[0, 1\]"):
        LateInteractionModel.build(EncoderOptions(minilm_path, random_init=True), pooled_weight=bad)


def test_the_export_keeps_the_weight_and_says_what_peers_miss(minilm_path, tmp_path, caplog):
    model = _hybrid(minilm_path, 0.3)
    with caplog.at_level(logging.WARNING, logger="lightning_modules.model.saving"):
        folder = export_model(model, tmp_path / "m")
    assert "score with MaxSim alone" in caplog.text and "0.3" in caplog.text
    assert json.loads((folder / "maxsim_lightning.json").read_text())["pooled_weight"] == 0.3
    card = (folder / "README.md").read_text()
    assert "0.7 x MaxSim + 0.3 x the cosine of the two texts' mean token vectors" in card
    loaded = LateInteractionModel.from_pretrained(folder)
    assert loaded.pooled_weight == 0.3
    assert torch.equal(loaded.score(A, B), model.score(A, B))
    # An export written before the hybrid score has no key: MaxSim alone, and no word of it in the card.
    config = json.loads((folder / "maxsim_lightning.json").read_text())
    del config["pooled_weight"]
    (folder / "maxsim_lightning.json").write_text(json.dumps(config))
    assert LateInteractionModel.load(folder).pooled_weight == 0.0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lightning_modules.model.saving"):
        plain = export_model(_hybrid(minilm_path, 0.0), tmp_path / "plain")
    assert "MaxSim alone" not in caplog.text and "mean token vectors" not in (plain / "README.md").read_text()


def test_a_checkpoint_keeps_the_weight(minilm_path, tmp_path):
    from lightning_modules.module import MaxSimModule
    from tests.helpers.models import TINY

    module = MaxSimModule(minilm_path, projection_dim=16, random_init=True, config_overrides=TINY, pooled_weight=0.25)
    assert module.model.pooled_weight == 0.25
    saved = tmp_path / "hybrid.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, saved)
    loaded = LateInteractionModel.load(saved).eval()
    assert loaded.pooled_weight == 0.25
    assert torch.equal(loaded.score(A, B), module.model.eval().score(A, B))


def _cosent(predicted, gold, scale=20.0):
    """CoSENT written out: log(1 + sum over gold[i] > gold[j] of exp(scale * (pred[j] - pred[i])))."""
    terms = [math.exp(scale * (float(predicted[j]) - float(predicted[i])))
             for i in range(len(gold)) for j in range(len(gold)) if gold[i] > gold[j]]
    return math.log1p(math.fsum(terms))


@pytest.mark.parametrize("loss_score", ["mix", "views", "maxsim"])
def test_training_loss_of_the_mix_of_each_view_or_of_maxsim(minilm_path, loss_score):
    from lightning_modules.data.batches import ScoredPairsBatch
    from lightning_modules.module import MaxSimModule
    from tests.helpers.models import TINY

    module = MaxSimModule(minilm_path, projection_dim=16, random_init=True, config_overrides=TINY, pooled_weight=0.3,
                          loss_score=loss_score).eval()  # no dropout: the same vectors twice
    ids = [module.model.tokenize([text])[0] for text in A + B]
    length = max(map(len, ids))
    input_ids = torch.tensor([row + [0] * (length - len(row)) for row in ids])
    batch = ScoredPairsBatch(input_ids, (input_ids != 0).long(), scores=torch.tensor([0.9, 0.2, 0.5]))
    with torch.no_grad():
        loss = float(module._scored_loss(batch))
        a, b = _embedded(module.model, A), _embedded(module.model, B)
    maxsim = [float(reference_pairwise(x.vectors, x.mask, y.vectors, y.mask, "both", "mean", None)) for x, y in zip(a, b)]
    pooled = [float(reference_pooled_matrix(x.vectors, x.mask, y.vectors, y.mask)[0, 0]) for x, y in zip(a, b)]
    gold = [0.9, 0.2, 0.5]
    expected = {"views": 0.7 * _cosent(maxsim, gold) + 0.3 * _cosent(pooled, gold),
                "mix": _cosent([0.7 * m + 0.3 * p for m, p in zip(maxsim, pooled)], gold),
                "maxsim": _cosent(maxsim, gold)}
    assert loss == pytest.approx(expected[loss_score], abs=2e-4)
    assert len({round(value, 3) for value in expected.values()}) == 3  # the three differ: the test tells them apart


def test_an_unknown_loss_score_is_a_settings_error(minilm_path):
    from lightning_modules.module import MaxSimModule

    with pytest.raises(SettingsError, match=r"model.loss_score must be one of \('mix', 'views', 'maxsim'\)"):
        MaxSimModule(minilm_path, random_init=True, loss_score="pooled")
