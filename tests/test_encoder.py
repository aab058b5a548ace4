"""TokenEncoder on the packaged all-MiniLM-L6-v2: vectors, projection, masks, load errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from lightning_modules.encoder import EncoderOptions, TokenEncoder
from lightning_modules.errors import ModelLoadError

TEXTS = ["A man is playing a guitar.", "Hello, world.", "Two dogs run through the snow, fast."]
TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


def _batch(encoder: TokenEncoder, texts=TEXTS) -> dict[str, torch.Tensor]:
    batch = encoder.tokenizer(texts, padding=True, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _encode(encoder: TokenEncoder, batch):
    encoder.eval()
    with torch.no_grad():
        return encoder(batch["input_ids"], batch["attention_mask"])


@pytest.fixture(scope="module")
def plain(minilm_path) -> TokenEncoder:
    return TokenEncoder(EncoderOptions(minilm_path, projection_dim=None))


@pytest.fixture(scope="module")
def batch(plain):
    return _batch(plain)


def _tiny(minilm_path, **flags) -> TokenEncoder:
    """MiniLM's tokenizer with a tiny random encoder: masks depend only on token ids, not on weights."""
    return TokenEncoder(EncoderOptions(minilm_path, random_init=True, config_overrides=TINY, **flags))


def test_vectors_shape_and_unit_norm_at_real_tokens(plain, batch):
    out = _encode(plain, batch)
    b, length = batch["input_ids"].shape
    assert out.vectors.shape == (b, length, 384)
    assert plain.dim == 384
    assert out.mask.shape == (b, length) and out.mask.dtype == torch.bool
    real = batch["attention_mask"].bool()
    assert not real.all(), "the test batch should contain padding"
    norms = out.vectors[real].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    # Without skipping, every real token takes part in matching, and no padding does.
    assert torch.equal(out.mask, real)


def test_matches_transformers_last_hidden_state(plain, batch, minilm_path):
    # Independent reference: the same weights loaded by transformers directly, normalised by hand.
    reference_model = AutoModel.from_pretrained(minilm_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    reference_batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(reference_batch["input_ids"], batch["input_ids"])
    with torch.no_grad():
        hidden = reference_model(**reference_batch).last_hidden_state
    expected = hidden / hidden.norm(dim=-1, keepdim=True)
    out = _encode(plain, batch)
    real = batch["attention_mask"].bool()
    assert torch.allclose(out.vectors[real], expected[real], atol=1e-5)
    # Guard: a different model would not pass (the comparison is not vacuous).
    assert not torch.allclose(out.vectors[real][1:], expected[real][:-1], atol=1e-2)


def test_projection_to_hidden_size_starts_as_identity(minilm_path, plain, batch):
    projected = TokenEncoder(EncoderOptions(minilm_path, projection_dim=384))
    assert projected.projection is not None
    assert torch.equal(projected.projection.weight, torch.eye(384))
    real = batch["attention_mask"].bool()
    a, b = _encode(plain, batch), _encode(projected, batch)
    assert torch.allclose(a.vectors[real], b.vectors[real], atol=1e-6)


def test_projection_128(minilm_path, batch):
    projected = TokenEncoder(EncoderOptions(minilm_path, projection_dim=128))
    out = _encode(projected, batch)
    assert projected.dim == 128
    assert out.vectors.shape == (*batch["input_ids"].shape, 128)
    real = batch["attention_mask"].bool()
    norms = out.vectors[real].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    # Orthonormal rows: W W^T = I.
    weight = projected.projection.weight
    assert torch.allclose(weight @ weight.T, torch.eye(128), atol=1e-5)


def test_skip_special_tokens_masks_cls_and_sep(minilm_path):
    encoder = _tiny(minilm_path, skip_special_tokens=True)
    batch = _batch(encoder)
    out = _encode(encoder, batch)
    ids, real = batch["input_ids"], batch["attention_mask"].bool()
    tok = encoder.tokenizer
    special = (ids == tok.cls_token_id) | (ids == tok.sep_token_id)
    assert special.sum() == 2 * len(TEXTS)
    assert not out.mask[special].any()
    assert torch.equal(out.mask, real & ~special)
    punctuation = torch.isin(ids, torch.tensor(tok.convert_tokens_to_ids([".", ","])))
    assert out.mask[punctuation].all()  # punctuation is kept unless asked


def test_skip_punctuation_masks_periods_and_commas(minilm_path):
    encoder = _tiny(minilm_path, skip_punctuation=True)
    batch = _batch(encoder)
    out = _encode(encoder, batch)
    ids, real = batch["input_ids"], batch["attention_mask"].bool()
    tok = encoder.tokenizer
    period, comma = tok.convert_tokens_to_ids([".", ","])
    punctuation = (ids == period) | (ids == comma)
    assert int((ids == comma).sum()) == 2 and int((ids == period).sum()) == 3
    assert torch.equal(out.mask, real & ~punctuation)
    special = (ids == tok.cls_token_id) | (ids == tok.sep_token_id)
    assert out.mask[special].all()  # special tokens are kept unless asked
    # Words are never treated as punctuation.
    words = tok.convert_tokens_to_ids(["man", "guitar", "hello", "dogs"])
    assert out.mask[torch.isin(ids, torch.tensor(words))].all()


def test_text_of_only_excluded_tokens_keeps_its_real_tokens(minilm_path):
    encoder = _tiny(minilm_path, skip_special_tokens=True, skip_punctuation=True)
    batch = _batch(encoder, ["...", "A word, here.", ", ."])
    out = _encode(encoder, batch)
    real = batch["attention_mask"].bool()
    for row in (0, 2):  # only [CLS], punctuation and [SEP]
        assert out.mask[row].any()
        assert torch.equal(out.mask[row], real[row])
    # The normal text still loses its special tokens and punctuation.
    tokens = encoder.tokenizer.convert_ids_to_tokens(batch["input_ids"][1][out.mask[1]].tolist())
    assert tokens == ["a", "word", "here"]


@pytest.mark.parametrize("path", ["./no/such/model", "/no/such/model_dir"])
def test_missing_local_path_raises_model_load_error(path):
    with pytest.raises(ModelLoadError) as info:
        TokenEncoder(EncoderOptions(path))
    message = str(info.value)
    assert path.lstrip(".") in message
    assert "model.model_name_or_path" in message
