"""Token encoder: a Hugging Face encoder, an optional projection and L2 normalisation.

It turns a tokenised batch into one unit vector per token, ``(B, L, D)``, and a
boolean mask ``(B, L)`` of the tokens that take part in MaxSim matching.
"""

from __future__ import annotations

import logging
import string
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModel

from lightning_modules.errors import ModelLoadError, SettingsError
from lightning_modules.tokenization import load_failure_message, load_tokenizer, quiet_transformers

log = logging.getLogger(__name__)


@dataclass
class TokenEmbeddings:
    """Per-token output of the encoder.

    Attributes:
        vectors: ``(B, L, D)`` L2-normalised token vectors.
        mask: ``(B, L)`` bool, ``True`` for tokens that take part in matching.
        zero_padded: every masked token's vector is zero (``stack`` pads so): scoring can then
            skip the copy that zeroes them (the encoder's own output holds values there).
    """

    vectors: torch.Tensor
    mask: torch.Tensor
    zero_padded: bool = False

    def split(self, first: int) -> tuple[TokenEmbeddings, TokenEmbeddings]:
        """Split along the batch: rows ``[:first]`` and ``[first:]``."""
        return (
            TokenEmbeddings(self.vectors[:first], self.mask[:first], self.zero_padded),
            TokenEmbeddings(self.vectors[first:], self.mask[first:], self.zero_padded),
        )

    def select(self, rows: torch.Tensor) -> TokenEmbeddings:
        """Keep the texts at ``rows`` (an index or boolean tensor over the batch)."""
        return TokenEmbeddings(self.vectors[rows], self.mask[rows], self.zero_padded)

    @classmethod
    def stack(cls, vectors: list[torch.Tensor]) -> TokenEmbeddings:
        """A list of ``(L_i, D)`` tensors -> padded ``(N, max L_i, D)`` vectors and their mask."""
        padded = torch.nn.utils.rnn.pad_sequence(vectors, batch_first=True)
        lengths = torch.tensor([len(v) for v in vectors], device=padded.device)
        mask = torch.arange(padded.shape[1], device=padded.device)[None, :] < lengths[:, None]
        return cls(padded, mask, zero_padded=True)


@dataclass(frozen=True)
class EncoderOptions:
    """How a ``TokenEncoder`` is built: plain values, given flat in ``conf/model/*.yaml`` beside
    MaxSim's and training's settings (``MaxSimModule``) and recorded so in a checkpoint.

    Attributes:
        model_name_or_path: a local folder or a hub id (``AutoModel``).
        projection_dim: output size of a bias-free linear projection (128, as in
            ColBERT), or ``None`` to keep the encoder's hidden size without one.
            A projection to the hidden size starts as the identity; a smaller one
            starts as a random orthogonal projection.
        skip_special_tokens: leave the sentence markers ``[CLS]``/``[SEP]`` (``<s>``/``</s>``)
            out of matching. They are still encoded and attended to.
        skip_punctuation: leave tokens made only of punctuation out of matching.
        random_init: build the encoder from its config with random weights (tests,
            smoke runs) instead of loading pretrained weights.
        config_overrides: config values to change, e.g. a tiny ``hidden_size``.
        trust_remote_code: passed to ``from_pretrained``; off unless you ask.
    """

    model_name_or_path: str
    projection_dim: int | None = 128
    skip_special_tokens: bool = False
    skip_punctuation: bool = False
    random_init: bool = False
    config_overrides: dict[str, Any] | None = None
    trust_remote_code: bool = False

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], strict: bool = False) -> EncoderOptions:
        """The options among plain ``settings`` (a ``model`` config, a checkpoint's hyperparameters);
        the others are ignored, or with ``strict`` refused with a ``SettingsError`` that names them."""
        names = [field.name for field in fields(cls)]
        unknown = sorted(set(settings) - set(names))
        if strict and unknown:
            raise SettingsError(f"model: unknown setting(s) {unknown}, neither MaxSimModule arguments nor encoder "
                                f"options; the encoder's options: {names} (lightning_modules.encoder.EncoderOptions)")
        return cls(**{name: settings[name] for name in names if name in settings})


class TokenEncoder(nn.Module):
    """Hugging Face encoder -> optional linear projection -> L2 norm, per token, as ``options``
    (``EncoderOptions``) say.

    A text whose every token is excluded falls back to all its real tokens, so
    MaxSim is always defined.
    """

    def __init__(self, options: EncoderOptions) -> None:
        super().__init__()
        self.options = options
        self.tokenizer = load_tokenizer(options.model_name_or_path, options.trust_remote_code)
        self.backbone = _load_backbone(options)
        hidden, projection_dim = self.backbone.config.hidden_size, options.projection_dim
        self.projection = None if projection_dim is None else _make_projection(hidden, projection_dim)
        self.dim = hidden if projection_dim is None else projection_dim
        excluded = _excluded_token_ids(self.tokenizer, options.skip_special_tokens, options.skip_punctuation)
        self.register_buffer("excluded_ids", torch.tensor(sorted(excluded), dtype=torch.long), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TokenEmbeddings:
        """Encode ``input_ids (B, L)`` with ``attention_mask (B, L)`` into token vectors."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.projection is not None:
            hidden = self.projection(hidden)
        vectors = F.normalize(hidden, p=2, dim=-1)
        real = attention_mask.bool()
        mask = real & ~torch.isin(input_ids, self.excluded_ids)
        # A text made only of excluded tokens (".", say) keeps its real tokens.
        mask = torch.where(mask.any(dim=-1, keepdim=True), mask, real)
        return TokenEmbeddings(vectors, mask)


def _load_backbone(encoder: EncoderOptions) -> nn.Module:
    model_name_or_path, trust_remote_code = encoder.model_name_or_path, encoder.trust_remote_code
    options = {"trust_remote_code": trust_remote_code, **(encoder.config_overrides or {})}
    try:
        if encoder.random_init:
            config = AutoConfig.from_pretrained(model_name_or_path, **options)
            build = lambda **kw: (  # noqa: E731 - (model, no loading report), as from_pretrained below
                AutoModel.from_config(config, trust_remote_code=trust_remote_code, **kw), None)
        else:
            build = lambda **kw: AutoModel.from_pretrained(  # noqa: E731
                model_name_or_path, **options, **kw, output_loading_info=True)
        with quiet_transformers():
            try:
                # MaxSim never uses BERT's pooler: leave it out where the architecture allows
                # (fewer parameters, and none that DDP would find unused).
                backbone, loading = build(add_pooling_layer=False)
            except TypeError as error:
                if "add_pooling_layer" not in str(error):
                    raise
                backbone, loading = build()
    except (OSError, ValueError, SafetensorError) as error:
        raise ModelLoadError(load_failure_message(model_name_or_path, "model", error)) from error
    _report_loading(model_name_or_path, loading)
    return backbone


def _report_loading(model_name_or_path: str, loading: dict | None) -> None:
    """What transformers' load report said that matters, in one line each: weights the model
    has but the checkpoint lacked (they start random: a warning), and weights it ignored other
    than the pooler that MaxSim leaves out on purpose."""
    if not loading:
        return
    missing = sorted(loading.get("missing_keys") or [])
    ignored = sorted(key for key in loading.get("unexpected_keys") or [] if not key.startswith("pooler."))
    if missing:
        log.warning("%s: %d weights are not in the checkpoint and start random: %s", model_name_or_path,
                    len(missing), _first_few(missing))
    if ignored:
        log.info("%s: %d weights of the checkpoint are not used by this architecture: %s", model_name_or_path,
                 len(ignored), _first_few(ignored))


def _first_few(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def _make_projection(hidden: int, out_dim: int) -> nn.Linear:
    projection = nn.Linear(hidden, out_dim, bias=False)
    if out_dim == hidden:
        # Identity: training starts exactly where the pretrained encoder is.
        nn.init.eye_(projection.weight)
    else:
        # Orthonormal rows: a norm-preserving random subspace, not a random scaling.
        nn.init.orthogonal_(projection.weight)
    return projection


def _is_punctuation(token: str) -> bool:
    token = token.removeprefix("##").removeprefix("\u2581").removeprefix("\u0120")
    return bool(token) and all(ch in string.punctuation or unicodedata.category(ch).startswith("P") for ch in token)


def _excluded_token_ids(tokenizer, skip_special_tokens: bool, skip_punctuation: bool) -> set[int]:
    excluded: set[int] = set()
    if skip_special_tokens:
        # The sentence markers only ([CLS]/[SEP], <s>/</s>): [UNK] stands for a real word.
        markers = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
        excluded.update(i for i in markers if i is not None)
    if skip_punctuation:
        excluded.update(i for token, i in tokenizer.get_vocab().items() if _is_punctuation(token))
    # Padding needs no entry: the attention mask already removes it.
    return excluded
