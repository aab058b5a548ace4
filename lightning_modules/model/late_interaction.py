"""The late-interaction model: a token encoder plus a MaxSim head. A plain ``nn.Module``.

Two levels of use: ``embed`` / ``score_pairs`` / ``score_matrix`` on token tensors
(training), and ``encode`` / ``score`` / ``similarity_matrix`` / ``rank`` on texts
(inference, after ``LateInteractionModel.from_pretrained``), and ``index`` to search a corpus
encoded once (``lightning_modules.index``). It saves itself
(``save_pretrained``: PyLate's directory format) and loads itself (``from_pretrained``: an
export or a training checkpoint) through ``lightning_modules.model.saving``, without Lightning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_modules.encoder import EncoderOptions, TokenEmbeddings, TokenEncoder
from lightning_modules.errors import InputError, ModelLoadError, SettingsError
from lightning_modules.index import DEFAULT_DTYPE, Index
from lightning_modules.maxsim import BACKENDS, CHUNK_BUDGET_BYTES, engine_settings, maxsim_matrix, maxsim_pairwise
from lightning_modules.maxsim.pooled import mix_scores, pooled_cosine_matrix, pooled_cosine_pairwise
from lightning_modules.model import saving
from lightning_modules.model.settings import TextSettings
from lightning_modules.precision import inference_autocast
from lightning_modules.progress import progress
from lightning_modules.tokenization import load_failure_message, pad_token_ids, tokenize_texts

log = logging.getLogger(__name__)

# Inputs longer than this many texts show a progress bar (unless told otherwise).
PROGRESS_THRESHOLD = 1024


class LateInteractionModel(nn.Module):
    """Encode texts into token vectors and compare them with MaxSim.

    Args:
        encoder: a ``TokenEncoder``.
        direction: ``"both"`` (symmetric, for STS), ``"a2b"`` (ColBERT) or ``"b2a"``.
        reduction: ``"mean"`` (bounded in [-1, 1]) or ``"sum"`` (ColBERT).
        temperature: ``None`` for the hard max, or the smooth-max temperature.
        backend: how ``score_matrix`` computes MaxSim, one of ``maxsim.BACKENDS``: ``"auto"``,
            ``"dense"``, ``"chunked"``, ``"triton"`` or ``"late-interaction-kernels"`` (see
            ``lightning_modules.maxsim``).
        chunk_budget_bytes: the chunked backend's budget for a block's largest tensor.
        text_settings: tokenisation of raw texts for ``encode``/``score``/...
        pooled_weight: ``w`` in [0, 1] of the hybrid score ``(1 - w) * MaxSim + w * cos``, ``cos`` the
            cosine of the texts' mean token vectors (``lightning_modules.maxsim.pooled``); 0 (default):
            MaxSim alone.

    ``inference_precision`` (``"32"``, ``"bf16"`` or ``"16"``; an attribute, not saved) is the
    precision of the encodings and scoring without gradients (``embed_token_ids`` and what
    builds on it, corpus ranking): a training run sets it from ``trainer.precision``
    (``lightning_modules.precision``); token vectors come out in that precision.
    """

    def __init__(
        self,
        encoder: TokenEncoder,
        direction: str = "both",
        reduction: str = "mean",
        temperature: float | None = None,
        text_settings: TextSettings | None = None,
        backend: str = "auto",
        chunk_budget_bytes: int = CHUNK_BUDGET_BYTES,
        pooled_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.direction = direction
        self.reduction = reduction
        self.temperature = temperature
        self.text_settings = text_settings or TextSettings()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.chunk_budget_bytes = chunk_budget_bytes
        self.pooled_weight = check_pooled_weight(pooled_weight)
        self.inference_precision = "32"

    @classmethod
    def build(
        cls,
        encoder: EncoderOptions,
        direction: str = "both",
        reduction: str = "mean",
        temperature: float | None = None,
        maxsim: dict[str, Any] | None = None,
        text_settings: TextSettings | None = None,
        pooled_weight: float = 0.0,
    ) -> LateInteractionModel:
        """A model from plain settings, as ``conf/model/*.yaml`` and a checkpoint's hyperparameters give
        them: the ``encoder``'s, the score's, and ``maxsim``, the engine settings
        (``lightning_modules.maxsim.engine_settings``: checked, with ``pooled_weight``, before the encoder
        loads)."""
        engine = engine_settings(maxsim)
        check_pooled_weight(pooled_weight)
        return cls(TokenEncoder(encoder), direction, reduction, temperature, text_settings, backend=engine["backend"],
                   chunk_budget_bytes=int(engine["chunk_budget_mb"] * 2**20), pooled_weight=pooled_weight)

    @classmethod
    def load(cls, path: str | Path, setting: str | None = None) -> LateInteractionModel:
        """The one way to load a model, as it was saved (on the CPU, in the mode it was built in):

        * an exported directory (``python -m train.export``, or a run's ``model/``);
        * a training checkpoint (``.ckpt``);
        * a plain Hugging Face encoder (any other folder, or a hub id), whose own token vectors are
          then scored zero-shot: no projection, symmetric mean MaxSim (the STS default).

        ``setting``: the option of the calling command that gave ``path`` (``"model"`` in the
        tools), named in messages.

        Raises:
            ModelLoadError: the path does not exist and is not a hub id, or what it holds does not
                load (corrupt or truncated weights, weights that do not fit, an unreachable hub);
                the message says what was expected.
        """
        kind = saving.source_kind(path, setting)
        if kind == "encoder":
            try:
                encoder = TokenEncoder(EncoderOptions(str(path), projection_dim=None))
            except ModelLoadError as error:  # reworded: name the calling command's own option
                cause = error.__cause__ or error
                raise ModelLoadError(load_failure_message(str(path), "model", cause, setting=setting or "model")) from cause
            log.info("%s is not a maxsim-lightning export: evaluating its token vectors zero-shot", path)
            return cls(encoder)
        path = Path(path).expanduser()
        if kind == "export":
            encoder, settings = saving.read_export(path)
            return cls(encoder, **settings)
        hparams, weights, text_settings = saving.read_checkpoint(path)
        scoring = {k: hparams[k] for k in ("direction", "reduction", "temperature", "maxsim", "pooled_weight")
                   if k in hparams}
        model = cls.build(EncoderOptions.from_settings(hparams), **scoring, text_settings=text_settings)
        try:
            model.load_state_dict(weights)
        except RuntimeError as error:
            raise ModelLoadError(f"{path}: its weights do not fit the model its hyperparameters describe "
                                 f"({str(error).splitlines()[0]})") from error
        return model

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
        """``load(path)`` (an export, a checkpoint or a plain encoder), for inference: the model comes back in eval mode on ``device``, in ``dtype`` if given
        (``torch.bfloat16`` halves memory; MaxSim still sums in float32).
        """
        model = cls.load(path).eval().to(device)
        return model.to(dtype) if dtype is not None else model

    def save_pretrained(self, out_dir: str | Path, card: dict | None = None, overwrite: bool = False,
                        onnx: bool = False) -> Path:
        """Write PyLate's directory format (loads in PyLate and sentence-transformers >= 6) with a model
        card; see ``lightning_modules.model.saving.write_export``. Returns the directory."""
        return saving.write_export(self, out_dir, card=card, overwrite=overwrite, onnx=onnx)

    # ---- token tensors (training) -------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TokenEmbeddings:
        """``input_ids (B, L)``, ``attention_mask (B, L)`` -> token vectors ``(B, L, D)`` and mask."""
        return self.encoder(input_ids, attention_mask)

    def score_pairs(self, a: TokenEmbeddings, b: TokenEmbeddings) -> torch.Tensor:
        """The score (MaxSim, or the hybrid with ``pooled_weight``) of aligned pairs, ``(B,)``."""
        scores = maxsim_pairwise(a.vectors, a.mask, b.vectors, b.mask, **self.maxsim_options())
        if not self.pooled_weight:
            return scores
        return mix_scores(scores, pooled_cosine_pairwise(a.vectors, a.mask, b.vectors, b.mask), self.pooled_weight)

    def score_views(self, a: TokenEmbeddings, b: TokenEmbeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views of aligned pairs that the hybrid score mixes: MaxSim ``(B,)`` and the pooled cosine
        ``(B,)``; ``score_pairs`` is ``(1 - pooled_weight) * MaxSim + pooled_weight * cosine``."""
        return (maxsim_pairwise(a.vectors, a.mask, b.vectors, b.mask, **self.maxsim_options()),
                pooled_cosine_pairwise(a.vectors, a.mask, b.vectors, b.mask))

    def score_matrix(self, a: TokenEmbeddings, b: TokenEmbeddings) -> torch.Tensor:
        """The score of every ``a`` text against every ``b`` text, ``(Ba, Bb)``."""
        scores = maxsim_matrix(a.vectors, a.mask, b.vectors, b.mask, backend=self.backend,
                               chunk_budget_bytes=self.chunk_budget_bytes, a_zero_padded=a.zero_padded,
                               b_zero_padded=b.zero_padded, **self.maxsim_options())
        if not self.pooled_weight:
            return scores
        return mix_scores(scores, pooled_cosine_matrix(a.vectors, a.mask, b.vectors, b.mask), self.pooled_weight)

    def inference_context(self):
        """The autocast context of ``inference_precision`` on the model's device."""
        return inference_autocast(self.inference_precision, next(self.parameters()).device.type)

    def maxsim_options(self) -> dict:
        """What MaxSim is: ``direction``, ``reduction``, ``temperature`` (``lightning_modules.maxsim``)."""
        return {"direction": self.direction, "reduction": self.reduction, "temperature": self.temperature}

    def scoring_options(self) -> dict:
        """What the score is: MaxSim's options and ``pooled_weight``."""
        return {**self.maxsim_options(), "pooled_weight": self.pooled_weight}

    # ---- texts (inference) ----------------------------------------------------------------------

    def tokenize(self, texts: list[str], is_query: bool = False, allow_empty: bool = False) -> list[list[int]]:
        """Token ids of each text, exactly as training tokenised that side. ``allow_empty``: an empty
        text is the special tokens alone (a corpus's empty document stays one that judgements can
        name), not an error."""
        _check_texts(texts, allow_empty)
        settings, tokenizer = self.text_settings, self.encoder.tokenizer
        query = is_query and settings.roles == "asymmetric"
        marker = settings.query_marker if query else settings.document_marker
        marker_id = tokenizer.convert_tokens_to_ids(marker) if marker and settings.roles == "asymmetric" else None
        max_length = settings.query_max_length if query else settings.max_length
        return tokenize_texts(tokenizer, list(texts), max_length, marker_id)[0]

    @torch.no_grad()
    def encode(
        self, texts: list[str], is_query: bool = False, batch_size: int = 64, show_progress_bar: bool | None = None
    ) -> list[torch.Tensor]:
        """Token vectors of each text: a list of ``(L_i, D)`` tensors, one row per token that takes
        part in matching (padding, and any skipped tokens, removed)."""
        show = len(texts) > PROGRESS_THRESHOLD if show_progress_bar is None else show_progress_bar
        return self.embed_token_ids(self.tokenize(texts, is_query), batch_size, show)

    @torch.no_grad()
    def embed_token_ids(
        self, ids: list[list[int]], batch_size: int = 64, show_progress_bar: bool = False, desc: str = "encoding"
    ) -> list[torch.Tensor]:
        """``encode`` for texts already tokenised: a ``(L_i, D)`` tensor per text, on the model's device,
        in ``inference_precision`` (the model's own dtype for ``"32"``)."""
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: little padding
        device = next(self.parameters()).device
        out: list = [None] * len(ids)
        for start in progress(range(0, len(ids), batch_size), desc, unit="batch", disable=not show_progress_bar,
                              leave=False):
            chunk = order[start : start + batch_size]
            input_ids, attention_mask = pad_token_ids([ids[i] for i in chunk], self.encoder.tokenizer.pad_token_id)
            with self.inference_context():
                embedded = self.embed(input_ids.to(device), attention_mask.to(device))
            vectors = embedded.vectors
            if self.inference_precision != "32":  # kept as computed: scoring multiplies in it anyway
                vectors = vectors.to(torch.bfloat16 if self.inference_precision == "bf16" else torch.float16)
            for row, index in enumerate(chunk):
                out[index] = vectors[row][embedded.mask[row]]
        return out

    @torch.no_grad()
    def score(self, a: list[str], b: list[str], batch_size: int = 64, show_progress_bar: bool | None = None) -> torch.Tensor:
        """MaxSim of aligned pairs ``(a[i], b[i])``: ``(N,)`` float32."""
        if len(a) != len(b):
            raise InputError(f"score needs aligned lists; got {len(a)} and {len(b)} texts")
        va = self.encode(a, is_query=True, batch_size=batch_size, show_progress_bar=show_progress_bar)
        vb = self.encode(b, is_query=False, batch_size=batch_size, show_progress_bar=show_progress_bar)
        scores = [self.score_pairs(TokenEmbeddings.stack(va[i : i + batch_size]), TokenEmbeddings.stack(vb[i : i + batch_size]))
                  for i in range(0, len(a), batch_size)]
        return torch.cat(scores).float().cpu()

    @torch.no_grad()
    def similarity_matrix(self, a: list[str], b: list[str], batch_size: int = 64, chunk: int = 256) -> torch.Tensor:
        """MaxSim of every text of ``a`` against every text of ``b``: ``(len(a), len(b))`` float32."""
        va, vb = self.encode(a, is_query=True, batch_size=batch_size), self.encode(b, batch_size=batch_size)
        return self.score_vectors(va, vb, chunk)

    @torch.no_grad()
    def score_vectors(
        self, a: list[torch.Tensor], b: list[torch.Tensor], chunk: int = 256, show_progress_bar: bool = False,
        desc: str = "scoring",
    ) -> torch.Tensor:
        """MaxSim of every ``(L_i, D)`` vector set of ``a`` against every one of ``b``: ``(len(a), len(b))``
        float32 on the CPU. In chunks: memory grows with ``chunk^2 * La * Lb``, not ``len(a) * len(b)``."""
        scores = torch.empty(len(a), len(b))
        for i in progress(range(0, len(a), chunk), desc, unit="chunk", disable=not show_progress_bar, leave=False):
            left = TokenEmbeddings.stack(a[i : i + chunk])
            for j in range(0, len(b), chunk):
                scores[i : i + chunk, j : j + chunk] = self.score_matrix(left, TokenEmbeddings.stack(b[j : j + chunk]))
        return scores

    @torch.no_grad()
    def rank(self, query: str, documents: list[str] | Index, top_k: int | None = None) -> list[dict]:
        """The documents by MaxSim against ``query``, best first: ``[{"index", "score", "text"}, ...]``,
        with ``"id"`` too when ``documents`` is an ``Index`` of a corpus with ids. ``documents``: a
        list of texts (encoded on every call), or an ``Index`` (``model.index(corpus)``, encoded once)."""
        if isinstance(documents, Index):  # searched with the model that built it (index.model)
            if not len(documents):
                return []
            found = documents.search([query], k=top_k or len(documents))
            return [{"index": i, "score": score, "text": documents.texts[i],
                     **({"id": documents.ids[i]} if documents.has_ids else {})}
                    for i, score in zip(found.indices[0], found.scores[0])]
        scores = self.similarity_matrix([query], documents)[0]
        order = torch.argsort(scores, descending=True, stable=True)[: top_k or len(documents)]
        return [{"index": int(i), "score": float(scores[i]), "text": documents[i]} for i in order]

    def index(self, corpus, dtype: str = DEFAULT_DTYPE, batch_size: int = 64,
              show_progress_bar: bool | None = None) -> Index:
        """Encode a corpus once, to search it many times (``Index.search``, ``rank``, ``Index.save``).

        ``corpus``: a list of texts (their positions are their ids), a dict of id -> text, or a path
        (a corpus file, ``.jsonl``/``.csv``/``.tsv``/``.parquet``, or a BEIR folder). ``dtype``: of the
        stored vectors (float16 halves float32's memory; scoring multiplies in float32 on a CPU)."""
        return Index.build(self, corpus, dtype=dtype, batch_size=batch_size, show_progress_bar=show_progress_bar)


def check_pooled_weight(pooled_weight: float) -> float:
    """``pooled_weight`` as a float in [0, 1], else a ``SettingsError`` that says what it mixes."""
    if isinstance(pooled_weight, bool) or not isinstance(pooled_weight, (int, float)) or not 0 <= pooled_weight <= 1:
        raise SettingsError(f"model.pooled_weight must be a number in [0, 1] (the pooled cosine's share of the "
                            f"score: (1 - w) * MaxSim + w * cosine of mean token vectors), got {pooled_weight!r}")
    return float(pooled_weight)


def _check_texts(texts, allow_empty: bool = False) -> None:
    if isinstance(texts, str):
        raise TypeError("expected a list of texts, got one string; wrap it in a list")
    empty = [i for i, text in enumerate(texts) if not isinstance(text, str) or not (allow_empty or text.strip())]
    if empty:
        raise InputError(f"text {empty[0]} (of {len(texts)}) is empty or not a string; every text needs content")
