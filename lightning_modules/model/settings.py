"""How raw texts become tokens for a trained model: the part of a DataModule's settings a model keeps."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class TextSettings:
    """How texts become tokens, as in training: lengths and optional ColBERT-style markers.

    ``query_*`` apply to the ``a`` side (queries) when ``roles="asymmetric"``; with
    symmetric roles every text is tokenised like a document.
    """

    max_length: int = 128
    query_max_length: int = 32
    roles: str = "symmetric"
    query_marker: str | None = None
    document_marker: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def text_settings_from(data_hparams: dict) -> TextSettings:
    """Tokenisation settings from a DataModule's hyperparameters (STS-B or pairs)."""
    known = TextSettings.__dataclass_fields__
    return TextSettings(**{k: v for k, v in data_hparams.items() if k in known})
