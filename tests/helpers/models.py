"""A tiny random BERT with MiniLM's vocabulary: real tokenisation, seconds to build and run."""

from __future__ import annotations

import torch

from lightning_modules.encoder import EncoderOptions, TokenEncoder
from lightning_modules.model import LateInteractionModel

# Config overrides that shrink MiniLM's architecture (its vocabulary and tokenizer stay).
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_model(minilm_path: str, projection_dim: int | None = 16, **options) -> LateInteractionModel:
    """A seeded tiny ``LateInteractionModel`` in eval mode; ``text_settings`` and encoder options pass through."""
    torch.manual_seed(0)
    settings = options.pop("text_settings", None)
    encoder = TokenEncoder(EncoderOptions(minilm_path, projection_dim=projection_dim, random_init=True,
                                          config_overrides=TINY, **options))
    return LateInteractionModel(encoder, text_settings=settings).eval()
