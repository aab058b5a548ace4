"""The model card: the README.md of an exported directory. It says what the model scores and how
(its MaxSim direction and reduction, and so what it is for), what it was trained on, the metrics
of the run that made it, split by split, and the command that reproduces that run."""

from __future__ import annotations

import shlex

# Within a split, each kind of task's headline metric first (retrieval, STS, pair classification),
# then the rest of its evaluator's; any other name follows, alphabetically.
METRIC_ORDER = ("ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100", "spearman", "pearson",
                "auc", "f1", "accuracy", "f1_threshold", "accuracy_threshold")
SPLITS = ("test", "val")


def run_command(overrides: list[str]) -> str:
    """``python -m train <overrides>``: the command that runs a training run's config again (its
    command-line overrides as Hydra recorded them, less ``resume=``)."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("resume=", "hydra."))]
    return shlex.join(["python", "-m", "train", *kept])


def model_card(model, card: dict) -> str:
    """The README.md of an exported directory for ``model`` (a ``LateInteractionModel``); ``card`` as in
    ``lightning_modules.model.saving.write_export``, and optionally ``monitor`` (the metric that
    picked the checkpoint) and ``command`` (``run_command``)."""
    encoder, settings = model.encoder, model.text_settings
    metrics = card.get("metrics") or {}
    retriever = _is_retriever(model)
    lines = [
        "---",
        "library_name: pylate",
        "tags: [ColBERT, PyLate, sentence-transformers, multi-vector, late-interaction, maxsim-lightning]",
        "pipeline_tag: sentence-similarity",
        *([f"base_model: {card['base_model']}"] if card.get("base_model") else []),
        "---",
        "",
        f"# Late-interaction {'retriever' if retriever else 'model'} trained with maxsim-lightning",
        "",
        f"- Base model: `{card.get('base_model', 'unknown')}`",
        f"- Training data: {card.get('data') or 'not recorded'}",
        f"- Token vectors: {encoder.dim} dimensions"
        + (" (a learned projection)" if encoder.projection is not None else " (the encoder's own; `1_Dense` is the identity)"),
        f"- MaxSim: direction `{model.direction}`, reduction `{model.reduction}`"
        + (f", smooth max at temperature {model.temperature}" if model.temperature else ", hard max")
        + f": {_matching(model)}",
        f"- Texts: {_texts(settings)}",
        f"- Tokens left out of matching: {_skipped(encoder.options)}",
        "",
        "## What it is for",
        "",
        _purpose(model, retriever),
        "",
        "## Metrics measured in the training run",
        "",
    ]
    if metrics:
        lines += [_splits_note(metrics, card.get("monitor")), "",
                  "| metric | value |", "| --- | --- |", *[f"| {k} | {metrics[k]} |" for k in _ordered(metrics)], ""]
    else:
        lines += ["None recorded.", ""]
    lines += ["## Reproducing the run", ""]
    if card.get("command"):
        lines += ["From the root of the maxsim-lightning repository (the configuration it composed to is below):",
                  "", "```bash", card["command"], "```", ""]
    else:
        lines += ["The command line was not recorded (the run was not started by `python -m train`)"
                  + ("; its configuration is below." if card.get("config") else "."), ""]
    example = ("model.rank(\"what causes the seasons?\", [\"Earth's axis is tilted ...\", \"Tides follow the Moon.\"])"
               "  # the query first" if retriever
               else "model.score([\"A man is playing a guitar.\"], [\"Someone plays the guitar.\"])")
    lines += [
        "## Use",
        "",
        "```python",
        "from lightning_modules.model import LateInteractionModel  # maxsim-lightning",
        "model = LateInteractionModel.from_pretrained(\"PATH\")",
        example,
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
        f"`{model.reduction}`" + _against_pylate(model) + _pooled_note(model),
        "",
    ]
    if card.get("config"):
        lines += ["## Training configuration", "", "```yaml", card["config"].rstrip(), "```", ""]
    return "\n".join(lines)


def _is_retriever(model) -> bool:
    """Queries against documents: an asymmetric score, or queries and documents tokenised apart."""
    return model.direction != "both" or model.text_settings.roles == "asymmetric"


def _matching(model) -> str:
    over = "summed" if model.reduction == "sum" else "averaged"
    if model.direction == "a2b":
        return (f"asymmetric, ColBERT's score: each query token takes its best match among the document's "
                f"tokens, and those best matches are {over} over the query's tokens")
    if model.direction == "b2a":
        return (f"asymmetric, the reverse of ColBERT's: each document token takes its best match among the "
                f"query's tokens, and those best matches are {over} over the document's tokens")
    return (f"symmetric: both directions averaged (each text's tokens take their best match in the other "
            f"text, {over} over that text's tokens)")


def _texts(settings) -> str:
    if settings.roles != "asymmetric":
        return f"at most {settings.max_length} tokens; roles `{settings.roles}` (every text tokenised alike)"

    def marked(marker):
        return f" (marker `{marker}` after [CLS])" if marker else ""

    return (f"roles `asymmetric`: queries at most {settings.query_max_length} tokens{marked(settings.query_marker)}, "
            f"documents at most {settings.max_length} tokens{marked(settings.document_marker)}")


def _purpose(model, retriever: bool) -> str:
    if not retriever:
        bounded = model.reduction == "mean" and not model.temperature
        return ("The similarity of two texts (semantic textual similarity, paraphrase): neither text is a query, "
                "and the score is symmetric, `score(a, b) == score(b, a)`"
                + (", in [-1, 1]." if bounded else "."))
    settings = model.text_settings
    lengths = (f"queries are cut at {settings.query_max_length} tokens and documents at {settings.max_length}"
               if settings.roles == "asymmetric" else f"both are cut at {settings.max_length} tokens")
    return ("Ranking documents for a query (retrieval): the query is the first text and the document the "
            "second, as in `score(queries, documents)`, `similarity_matrix(queries, documents)` and "
            f"`rank(query, documents)`; {lengths}. Swapped, the score changes: it is not a symmetric "
            "similarity of two texts.")


def _pooled_note(model) -> str:
    """What PyLate and sentence-transformers miss of a hybrid score (``pooled_weight``), or nothing."""
    if not model.pooled_weight:
        return ""
    w = model.pooled_weight
    return (f" Its score is also a hybrid: {1 - w:g} x MaxSim + {w:g} x the cosine of the two texts' mean token "
            "vectors (`pooled_weight`), which neither PyLate nor sentence-transformers can represent: they score "
            "with MaxSim alone, so their figures differ from the ones above. Load it with maxsim-lightning for "
            "its own scores.")


def _against_pylate(model) -> str:
    options = model.encoder.options
    caveats = ((" [CLS]/[SEP] are left out of matching here; PyLate keeps them." if options.skip_special_tokens else "")
               + (" Punctuation is left out on both sides here; PyLate skips it in documents only."
                  if options.skip_punctuation else ""))
    same_tokens = not (options.skip_special_tokens or options.skip_punctuation)
    if model.direction == "a2b" and not model.temperature:
        if model.reduction == "sum":
            return ", which is theirs too." + caveats
        # A mean is the sum divided by the query's token count: the same order for each query.
        if same_tokens:
            return (": the query's best matches averaged, not summed, which divides all of a query's scores by "
                    "its number of tokens, so they rank a query's documents in the same order as here "
                    "(docs/retrieval.md); only the scale differs, so compare scores of different queries, or "
                    "against a threshold, with maxsim-lightning's `score`.")
        return (": the query's best matches averaged, not summed; with the same tokens matched that would rank "
                "a query's documents as theirs does, but here the matched tokens differ, so their rankings can "
                "differ from ours; use maxsim-lightning's `score`." + caveats)
    if model.direction == "a2b":
        how = f"a smooth max at temperature {model.temperature}, which theirs is not"
    elif model.direction == "b2a":
        how = "each document token's best match in the query: the reverse of theirs"
    else:
        how = ("symmetric: both directions averaged, "
               + ("tokens averaged, a score in [-1, 1]" if model.reduction == "mean" else "tokens summed"))
    return (f" ({how}), so their scores rank pairs differently from ours; use maxsim-lightning's `score` for "
            "similarity figures like the ones above." + caveats)


def _splits_note(metrics: dict, monitor: str | None) -> str:
    splits = {name.split("/", 1)[0] for name in metrics}
    notes = []
    if "test" in splits:
        notes.append("`test/`: the test split, scored with the exported checkpoint")
    if "val" in splits:
        notes.append("`val/`: the validation split, at the epoch of that checkpoint"
                     + (f" (the best by `{monitor}`)" if monitor else " (the best validation)"))
    return ("; ".join(notes) + ("; " if notes else "")
            + "the splits are those of the training data above. Figures x100, except thresholds (raw similarities).")


def _ordered(metrics: dict) -> list[str]:
    def key(name: str):
        split, _, metric = name.partition("/")
        return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split,
                METRIC_ORDER.index(metric) if metric in METRIC_ORDER else len(METRIC_ORDER), metric)

    return sorted(metrics, key=key)


def _skipped(options) -> str:
    parts = [name for name, on in (("[CLS]/[SEP]", options.skip_special_tokens), ("punctuation", options.skip_punctuation))
             if on]
    return ", ".join(parts) or "none"
