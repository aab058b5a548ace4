"""The model card: the README.md of an exported directory, with the metrics of the run that made it."""

from __future__ import annotations


def model_card(model, card: dict) -> str:
    """The README.md of an exported directory for ``model`` (a ``LateInteractionModel``); ``card`` as in
    ``lightning_modules.model.saving.write_export``."""
    encoder, settings = model.encoder, model.text_settings
    metrics = card.get("metrics") or {}
    lines = [
        "---",
        "library_name: pylate",
        "tags: [ColBERT, PyLate, sentence-transformers, multi-vector, late-interaction, maxsim-lightning]",
        "pipeline_tag: sentence-similarity",
        *([f"base_model: {card['base_model']}"] if card.get("base_model") else []),
        "---",
        "",
        "# Late-interaction model trained with maxsim-lightning",
        "",
        f"- Base model: `{card.get('base_model', 'unknown')}`",
        f"- Training data: {card.get('data', 'not recorded')}",
        f"- Token vectors: {encoder.dim} dimensions"
        + (" (a learned projection)" if encoder.projection is not None else " (the encoder's own; `1_Dense` is the identity)"),
        f"- MaxSim: direction `{model.direction}`, reduction `{model.reduction}`"
        + (f", smooth max at temperature {model.temperature}" if model.temperature else ", hard max"),
        f"- Texts: at most {settings.max_length} tokens; roles `{settings.roles}`"
        + (f", queries at most {settings.query_max_length} tokens" if settings.roles == "asymmetric" else ""),
        f"- Tokens left out of matching: {_skipped(encoder.options)}",
        "",
        "## Metrics measured in the training run",
        "",
    ]
    if metrics:
        lines += ["| metric | value |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in sorted(metrics.items())], ""]
    else:
        lines += ["None recorded.", ""]
    lines += [
        "## Use",
        "",
        "```python",
        "from lightning_modules.model import LateInteractionModel  # maxsim-lightning",
        "model = LateInteractionModel.from_pretrained(\"PATH\")",
        "model.score([\"A man is playing a guitar.\"], [\"Someone plays the guitar.\"])",
        "```",
        "",
        "```python",
        "from pylate import models  # PyLate 1.6",
        "model = models.ColBERT(model_name_or_path=\"PATH\")",
        "from sentence_transformers import MultiVectorEncoder  # sentence-transformers >= 6",
        "model = MultiVectorEncoder(\"PATH\")",
        "```",
        "",
        "## Scoring differs between libraries",
        "",
        "PyLate and sentence-transformers load the same weights and give the same token vectors, but they "
        "score a query against a document ColBERT's way: for each query token the best document token, "
        "**summed** over query tokens (direction `a2b`, reduction `sum`). "
        f"This model was trained and evaluated with direction `{model.direction}` and reduction "
        f"`{model.reduction}`"
        + (" (symmetric: both directions averaged, tokens averaged, a score in [-1, 1]), so their scores rank "
           "pairs differently from ours; use maxsim-lightning's `score` for similarity figures like the ones "
           "above." if (model.direction, model.reduction) != ("a2b", "sum") else ", which is theirs too.")
        + (" [CLS]/[SEP] are left out of matching here; PyLate keeps them."
           if encoder.options.skip_special_tokens else "")
        + (" Punctuation is left out on both sides here; PyLate skips it in documents only."
           if encoder.options.skip_punctuation else ""),
        "",
    ]
    if card.get("config"):
        lines += ["## Training configuration", "", "```yaml", card["config"].rstrip(), "```", ""]
    return "\n".join(lines)


def _skipped(options) -> str:
    parts = [name for name, on in (("[CLS]/[SEP]", options.skip_special_tokens), ("punctuation", options.skip_punctuation))
             if on]
    return ", ".join(parts) or "none"
