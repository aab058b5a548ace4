"""Pictures of what a late-interaction model does: token-by-token similarity heatmaps and score scatters.

* ``token_similarity(model, a, b)`` computes the cosine of every token of ``a`` against
  every token of ``b``, each token's best match and the model's MaxSim score: a
  ``TokenMatch``. ``token_similarity_from_ids`` does the same from token ids.
* ``draw_token_heatmap(match, path)`` draws a ``TokenMatch`` (rows: tokens of ``a``,
  columns: tokens of ``b``) with the best matches marked and the score in the title.
* ``draw_score_scatter(predicted, gold, path, title)`` draws predicted against gold scores.
* ``draw_query_metric_change(after, before, path, title)`` draws each query's metric (nDCG@10)
  after training against before, and ``draw_relevant_rank(after, before, path, title)`` the
  ranks of each query's first relevant document: what retrieval validation gives per query.

Figures are built as ``matplotlib.figure.Figure`` objects on the non-interactive Agg
canvas, never through ``pyplot``: no global state, no GUI backend, and a user who
imported pyplot elsewhere keeps their own backend.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from lightning_modules.encoder import TokenEmbeddings

DPI = 120
# Inches per token of the heatmap, and the figure's size limits: 60 tokens a side stay readable.
CELL_INCHES = 0.28
MIN_INCHES, MAX_INCHES = 4.0, 20.0
# Cosine is in [-1, 1]: a fixed colour scale makes pictures of different runs comparable.
COLOR_MAP = "RdBu_r"


@dataclass
class TokenMatch:
    """The token-level view of one pair ``(a, b)``.

    Attributes:
        tokens_a, tokens_b: the tokens (``tokenizer.convert_ids_to_tokens``), ``La`` and ``Lb`` of them.
        similarity: ``(La, Lb)`` float32 cosines between every token of ``a`` and every token of ``b``,
            those left out of matching included.
        mask_a, mask_b: ``(La,)`` and ``(Lb,)`` bool, ``True`` for tokens that take part in matching.
        best_b_for_a: ``(La,)`` long, for each token of ``a`` the index of its best match among the
            matching tokens of ``b`` (computed for every row, matching or not).
        best_a_for_b: ``(Lb,)`` long, the same the other way.
        score: the model's score of the pair: MaxSim (its direction, reduction and temperature), or the
            hybrid ``(1 - pooled_weight) * maxsim + pooled_weight * pooled``.
        direction, reduction, temperature: the model's MaxSim options, for the picture.
        pooled_weight, maxsim, pooled: the hybrid's weight and its two views (``pooled``: the cosine of
            the mean token vectors), when ``pooled_weight`` is not 0.
    """

    tokens_a: list[str]
    tokens_b: list[str]
    similarity: torch.Tensor
    mask_a: torch.Tensor
    mask_b: torch.Tensor
    best_b_for_a: torch.Tensor
    best_a_for_b: torch.Tensor
    score: float
    direction: str = "both"
    reduction: str = "mean"
    temperature: float | None = None
    pooled_weight: float = 0.0
    maxsim: float | None = None
    pooled: float | None = None

    def describe_score(self) -> str:
        """``"MaxSim 0.8123 (both, mean)"``, or for a hybrid
        ``"score 0.8200 = 0.5 x MaxSim 0.8123 (both, mean) + 0.5 x pooled cosine 0.8277"``: the score and how
        it was computed."""
        options = [self.direction, self.reduction] + ([f"T={self.temperature:g}"] if self.temperature else [])
        if not self.pooled_weight:
            return f"MaxSim {self.score:.4f} ({', '.join(options)})"
        return (f"score {self.score:.4f} = {1 - self.pooled_weight:g} x MaxSim {self.maxsim:.4f} ({', '.join(options)})"
                f" + {self.pooled_weight:g} x pooled cosine {self.pooled:.4f}")


# ---- computing ----------------------------------------------------------------------------------


def token_similarity(model, a: str, b: str) -> TokenMatch:
    """The ``TokenMatch`` of texts ``a`` and ``b`` under ``model`` (a ``LateInteractionModel``).

    ``a`` is tokenised as the query side and ``b`` as the document side, as
    ``model.score([a], [b])`` does, so ``match.score`` equals that score.

    Raises:
        ValueError: ``a`` or ``b`` is empty or whitespace only.
    """
    ids_a = model.tokenize([a], is_query=True)[0]
    ids_b = model.tokenize([b], is_query=False)[0]
    return token_similarity_from_ids(model, ids_a, ids_b)


def token_similarity_from_ids(model, ids_a: list[int], ids_b: list[int]) -> TokenMatch:
    """The ``TokenMatch`` of two already tokenised texts (markers, if any, included).

    Each text is embedded alone (no padding), in eval mode and without gradients; the
    model's mode is restored afterwards, so this is safe in the middle of training.
    """
    with _evaluating(model), torch.no_grad():
        a, b = _embed_one(model, ids_a), _embed_one(model, ids_b)
        score = float(model.score_pairs(a, b)[0])
        maxsim, pooled = (float(view[0]) for view in model.score_views(a, b))
        # float32: bf16 vectors would round the cosines shown in the picture.
        va, vb = a.vectors[0].float(), b.vectors[0].float()  # (La, D), (Lb, D)
        similarity = (va @ vb.T).cpu()  # (La, Lb)
    mask_a, mask_b = a.mask[0].cpu(), b.mask[0].cpu()
    tokenizer = model.encoder.tokenizer
    return TokenMatch(
        tokens_a=tokenizer.convert_ids_to_tokens(list(ids_a)),
        tokens_b=tokenizer.convert_ids_to_tokens(list(ids_b)),
        similarity=similarity,
        mask_a=mask_a,
        mask_b=mask_b,
        best_b_for_a=_best_matches(similarity, mask_b),
        best_a_for_b=_best_matches(similarity.T, mask_a),
        score=score,
        direction=model.direction,
        reduction=model.reduction,
        temperature=model.temperature,
        pooled_weight=model.pooled_weight,
        maxsim=maxsim,
        pooled=pooled,
    )


def _embed_one(model, ids: list[int]) -> TokenEmbeddings:
    """One text's ``TokenEmbeddings``: vectors ``(1, L, D)`` and mask ``(1, L)``."""
    device = next(model.parameters()).device
    input_ids = torch.tensor([list(ids)], dtype=torch.long, device=device)
    return model.embed(input_ids, torch.ones_like(input_ids))


def _best_matches(similarity: torch.Tensor, column_mask: torch.Tensor) -> torch.Tensor:
    """For each row of ``similarity (R, C)``, the index of its largest entry among the ``column_mask (C,)``
    columns: ``(R,)``. Masked with -inf, as MaxSim does, so a left-out token never wins."""
    return similarity.masked_fill(~column_mask[None, :], float("-inf")).argmax(dim=1)


@contextlib.contextmanager
def _evaluating(module: torch.nn.Module):
    """Eval mode (no dropout) inside the block, the previous mode after it."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


# ---- drawing --------------------------------------------------------------------------------------


def token_heatmap_figure(match: TokenMatch, title: str | None = None) -> Figure:
    """The heatmap of ``match`` as a ``Figure`` (see ``draw_token_heatmap``)."""
    n_a, n_b = len(match.tokens_a), len(match.tokens_b)
    width = _clamp(3.0 + CELL_INCHES * n_b, MIN_INCHES, MAX_INCHES)  # room for the colourbar
    height = _clamp(2.5 + CELL_INCHES * n_a, MIN_INCHES - 1.0, MAX_INCHES)  # room for the title and x labels
    # Constrained layout makes room for the colourbar, the legend below and long tokens.
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)  # the Agg canvas, whatever backend pyplot uses
    axes = figure.add_subplot()

    similarity = match.similarity.float().numpy()
    image = axes.imshow(similarity, cmap=COLOR_MAP, vmin=-1.0, vmax=1.0, aspect="auto", interpolation="nearest")
    figure.colorbar(image, ax=axes, label="cosine", fraction=0.05, pad=0.02)
    _grey_out_left_out_tokens(axes, match.mask_a.numpy(), match.mask_b.numpy())
    _mark_best_matches(axes, match)
    _label_tokens(axes, match, font_size=_font_size(max(n_a, n_b)))

    axes.set_xlabel("b (document side)")
    axes.set_ylabel("a (query side)")
    axes.set_title(match.describe_score() if title is None else f"{title}\n{match.describe_score()}")
    return figure


def draw_token_heatmap(match: TokenMatch, path: str | Path, title: str | None = None) -> Path:
    """Save the token-by-token cosine heatmap of ``match`` as a PNG; return its path.

    Rows are the tokens of ``a``, columns the tokens of ``b``. A circle marks each
    row's best match (the ``a -> b`` direction of MaxSim), a cross each column's best
    match (``b -> a``), for the directions the model's score uses. Tokens left out of
    matching are greyed and hatched. The title holds the final score, after ``title``
    when one is given. The parent folder is created if needed.
    """
    return _save(token_heatmap_figure(match, title), path)


def score_scatter_figure(predicted, gold, title: str) -> Figure:
    """The scatter of ``predicted`` against ``gold`` as a ``Figure`` (see ``draw_score_scatter``)."""
    predicted, gold = _as_numpy(predicted), _as_numpy(gold)
    if predicted.shape != gold.shape:
        raise ValueError(f"predicted and gold must have the same length, got {predicted.shape} and {gold.shape}")
    figure = Figure(figsize=(5.5, 5.0), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    # Small translucent points: a validation set has thousands and they overlap.
    axes.scatter(gold, predicted, s=10, alpha=0.5, linewidths=0)
    axes.set_xlabel("gold")
    axes.set_ylabel("predicted (MaxSim)")
    axes.grid(alpha=0.3)
    spearman = _spearman(predicted, gold)
    details = [f"{len(gold)} pairs"] + ([f"Spearman {100 * spearman:.2f}"] if spearman is not None else [])
    axes.set_title(f"{title}\n{', '.join(details)}")
    return figure


def draw_score_scatter(predicted, gold, path: str | Path, title: str) -> Path:
    """Save a scatter of ``predicted`` (y) against ``gold`` (x) scores as a PNG; return its path.

    ``predicted`` and ``gold``: ``(N,)`` tensors, arrays or lists. The title gets the
    number of pairs and, where scipy is installed and it is defined, Spearman x 100.
    """
    return _save(score_scatter_figure(predicted, gold, title), path)


def query_metric_change_figure(after: dict[str, float], before: dict[str, float] | None, title: str,
                               metric: str = "nDCG@10") -> tuple[Figure, dict[str, int]]:
    """The figure of ``draw_query_metric_change`` and the counts its title gives."""
    figure = Figure(figsize=(5.5, 5.0), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.grid(alpha=0.3)
    if before is None:  # nothing to compare with: how the queries are spread
        axes.hist(list(after.values()), bins=np.linspace(0.0, 1.0, 11), edgecolor="white")
        axes.set_xlabel(f"{metric} after training")
        axes.set_ylabel("queries")
        counts = {"queries": len(after)}
        axes.set_title(f"{title}\n{len(after)} queries, no zero-shot validation to compare with", fontsize=10)
        return figure, counts
    ids = sorted(after.keys() & before.keys())
    x, y = np.array([before[q] for q in ids]), np.array([after[q] for q in ids])
    change = np.sign(y - x)  # exactly equal for a query ranked the same: 0
    counts = {"queries": len(ids), "better": int((change > 0).sum()), "worse": int((change < 0).sum()),
              "unchanged": int((change == 0).sum())}
    axes.plot([0, 1], [0, 1], color="grey", linewidth=1, zorder=1)  # above the diagonal: improved
    for sign, colour, label in ((1, "tab:green", "better"), (-1, "tab:red", "worse"), (0, "grey", "unchanged")):
        chosen = change == sign
        # Translucent: many queries sit on the same values (0 and 1 above all).
        axes.scatter(x[chosen], y[chosen], s=14, alpha=0.5, linewidths=0, color=colour,
                     label=f"{label} ({counts[label]})", zorder=2)
    axes.set_xlim(-0.03, 1.03)
    axes.set_ylim(-0.03, 1.03)
    axes.set_xlabel(f"{metric} before training (zero-shot)")
    axes.set_ylabel(f"{metric} after training")
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title(f"{title}\n{counts['queries']} queries: {counts['better']} better, {counts['worse']} worse, "
                   f"{counts['unchanged']} unchanged", fontsize=10)
    return figure, counts


def draw_query_metric_change(after: dict[str, float], before: dict[str, float] | None, path: str | Path,
                             title: str, metric: str = "nDCG@10") -> dict[str, int]:
    """Save each query's ``metric`` after training (y) against before (x) as a PNG; return the counts.

    ``after``, ``before``: query id -> value in [0, 1]; queries in both are compared. Points above
    the diagonal improved. Returns ``queries``, ``better``, ``worse`` and ``unchanged`` (what the
    title says). ``before`` None (no zero-shot validation): a histogram of ``after`` instead,
    the title saying so, and only ``queries``.
    """
    figure, counts = query_metric_change_figure(after, before, title, metric)
    _save(figure, path)
    return counts


def rank_bins(depth: int) -> list[tuple[int, int]]:
    """The bins of ranks 1..``depth`` that ``draw_relevant_rank`` counts, ``(first, last)`` each:
    single ranks at the top, where a rank matters most, then wider ones (1, 2, 3, 4-5, 6-10, 11-20,
    21-50, 51-100 for a depth of 100)."""
    starts = [s for s in (1, 2, 3, 4, 6, 11, 21, 51, 101, 201, 501, 1001) if s <= depth]
    return [(s, e - 1) for s, e in zip(starts, [*starts[1:], depth + 1])]


def relevant_rank_figure(after: list[int | None], before: list[int | None] | None, title: str,
                         depth: int = 100) -> tuple[Figure, dict[str, list[int]]]:
    """The figure of ``draw_relevant_rank`` and the counts it shows."""
    bins = rank_bins(depth)
    labels = [str(a) if a == b else f"{a}-{b}" for a, b in bins] + [f">{depth}"]

    def count(ranks: list[int | None]) -> list[int]:
        return [sum(1 for r in ranks if r is not None and a <= r <= b) for a, b in bins] + [
            sum(1 for r in ranks if r is None or r > depth)]

    counts = {"labels": labels, "after": count(after)} | ({"before": count(before)} if before is not None else {})
    figure = Figure(figsize=(6.5, 4.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = np.arange(len(labels))
    shown = [("before", "tab:grey"), ("after", "tab:blue")] if before is not None else [("after", "tab:blue")]
    width = 0.8 / len(shown)
    for k, (name, colour) in enumerate(shown):
        offset = (k - (len(shown) - 1) / 2) * width
        axes.bar(positions + offset, counts[name], width=width, color=colour, label=f"{name} training")
    axes.set_xticks(positions, labels)
    axes.set_xlabel("rank of the first relevant document")
    axes.set_ylabel("queries")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of queries
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    top, beyond = counts["after"][0], counts["after"][-1]
    if before is None:
        details = f"{len(after)} queries; at rank 1: {top}, beyond {depth}: {beyond}; no zero-shot validation"
    else:
        details = (f"{len(after)} queries; at rank 1: {counts['before'][0]} -> {top}, "
                   f"beyond {depth}: {counts['before'][-1]} -> {beyond}")
    axes.set_title(f"{title}\n{details}", fontsize=10)
    return figure, counts


def draw_relevant_rank(after: list[int | None], before: list[int | None] | None, path: str | Path, title: str,
                       depth: int = 100) -> dict[str, list[int]]:
    """Save how many queries have their first relevant document at each rank, after training and
    (where given) before, as grouped bars over ``rank_bins(depth)`` and ``>depth``; return the counts.

    ``after``, ``before``: one rank a query (1-based; None: not in the top ``depth``). Returns
    ``labels`` (the bars' labels) and ``after`` (and ``before``): the counts per bar. The title
    gives the queries at rank 1 and beyond ``depth`` (before -> after), or says there is no
    zero-shot validation.
    """
    figure, counts = relevant_rank_figure(after, before, title, depth)
    _save(figure, path)
    return counts


def _grey_out_left_out_tokens(axes, mask_a: np.ndarray, mask_b: np.ndarray) -> None:
    """Cover the rows and columns of tokens that do not take part in matching."""
    rows, columns = len(mask_a), len(mask_b)
    style = {"facecolor": "lightgrey", "edgecolor": "grey", "hatch": "//", "alpha": 0.85, "linewidth": 0}
    for i in np.flatnonzero(~mask_a):
        axes.add_patch(Rectangle((-0.5, i - 0.5), columns, 1, **style))
    for j in np.flatnonzero(~mask_b):
        axes.add_patch(Rectangle((j - 0.5, -0.5), 1, rows, **style))


def _mark_best_matches(axes, match: TokenMatch) -> None:
    """Mark the best matches that the model's score counts: rows (a -> b) and/or columns (b -> a)."""
    rows = np.flatnonzero(match.mask_a.numpy())
    columns = np.flatnonzero(match.mask_b.numpy())
    if match.direction in ("a2b", "both"):
        axes.scatter(match.best_b_for_a.numpy()[rows], rows, marker="o", s=40, facecolors="none",
                     edgecolors="black", linewidths=1.2, label="best match of a's token (row)")
    if match.direction in ("b2a", "both"):
        axes.scatter(columns, match.best_a_for_b.numpy()[columns], marker="x", s=30, color="black",
                     linewidths=1.2, label="best match of b's token (column)")
    # Below the figure, out of the way of the cells and the title.
    axes.figure.legend(loc="outside lower center", ncol=2, fontsize=7, frameon=False, handletextpad=0.3)


def _label_tokens(axes, match: TokenMatch, font_size: float) -> None:
    """Tokens as tick labels; those left out of matching in grey."""
    axes.set_xticks(range(len(match.tokens_b)), match.tokens_b, rotation=90, fontsize=font_size)
    axes.set_yticks(range(len(match.tokens_a)), match.tokens_a, fontsize=font_size)
    for labels, mask in ((axes.get_xticklabels(), match.mask_b), (axes.get_yticklabels(), match.mask_a)):
        for label, takes_part in zip(labels, mask.tolist()):
            if not takes_part:
                label.set_color("grey")


def _font_size(tokens: int) -> float:
    """Tick label size: 9 pt for short texts, down to 6 pt from about 45 tokens (cells are ~0.28 in)."""
    return _clamp(9.0 - (tokens - 20) * 0.12, 6.0, 9.0)


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy().reshape(-1)
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _spearman(predicted: np.ndarray, gold: np.ndarray) -> float | None:
    """Spearman's rho, or None without scipy or when it is undefined (fewer than 2 pairs, constant input)."""
    try:
        from scipy.stats import spearmanr  # lazily: optional for drawing
    except ImportError:
        return None
    if len(gold) < 2 or np.all(gold == gold[0]) or np.all(predicted == predicted[0]):
        return None
    return float(spearmanr(predicted, gold).statistic)


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")
    return path
