"""Layer-wise learning-rate decay (``model.layer_lr_decay``): each encoder layer's AdamW rate."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.errors import SettingsError
from lightning_modules.module import MaxSimModule, _parameter_groups, layer_depth
from tests.helpers.models import TINY  # two layers


def _module(minilm_path, **options):
    return MaxSimModule(minilm_path, projection_dim=16, random_init=True, config_overrides=TINY, **options)


def test_layer_depths_of_bert_and_other_layouts():
    assert layer_depth("embeddings.word_embeddings.weight", 6) == 6
    assert layer_depth("encoder.layer.0.attention.self.query.weight", 6) == 5
    assert layer_depth("encoder.layer.5.output.dense.bias", 6) == 0
    assert layer_depth("layers.2.attn.Wqkv.weight", 3) == 0  # ModernBERT-style names
    assert layer_depth("final_norm.weight", 3) == 0


def test_one_adamw_step_moves_each_layer_by_its_own_rate(minilm_path):
    """AdamW's first step moves every weight by about its rate (|m / sqrt(v)| = 1), whatever the gradient:
    the step itself shows each layer's rate, independently of how the groups were built."""
    module = _module(minilm_path, lr=1e-3, layer_lr_decay=0.5, projection_lr_multiplier=4.0, weight_decay=0.0)
    expected = {"embeddings.": 0.25e-3, "encoder.layer.0.": 0.5e-3, "encoder.layer.1.": 1e-3}
    groups = _parameter_groups(module.model, 1e-3, 0.0, 4.0, 0.5)
    assert groups[0]["lr"] == 1e-3  # train/lr logs the first group's rate: the top layer's
    optimizer = torch.optim.AdamW(groups, lr=1e-3, eps=1e-30)
    before = {name: p.detach().clone() for name, p in module.model.named_parameters()}
    texts = module.model.embed(torch.randint(1000, 2000, (3, 7)), torch.ones(3, 7, dtype=torch.long))
    (texts.vectors * torch.randn_like(texts.vectors)).sum().backward()
    optimizer.step()
    checked = set()
    for name, parameter in module.model.named_parameters():
        moved = (parameter.detach() - before[name]).abs()
        moved = moved[moved > 0]
        if not len(moved):
            continue  # no gradient reached it (an unused embedding row, say)
        short = name.removeprefix("encoder.backbone.")
        rate = 4e-3 if name.startswith("encoder.projection") else next(v for k, v in expected.items() if short.startswith(k))
        torch.testing.assert_close(moved.max(), torch.tensor(rate), rtol=1e-3, atol=0)
        checked.add(rate)
    assert checked == {0.25e-3, 0.5e-3, 1e-3, 4e-3}


def test_no_decay_is_one_rate_and_a_bad_decay_is_refused(minilm_path):
    module = _module(minilm_path, lr=1e-3)
    assert {group["lr"] for group in _parameter_groups(module.model, 1e-3, 0.01, 1.0)} == {1e-3}
    for bad in (0, 1.5, -0.5, "0.9", True):
        with pytest.raises(SettingsError, match=r"model.layer_lr_decay must be a number in \(0, 1\]"):
            _module(minilm_path, layer_lr_decay=bad)
