"""In-batch InfoNCE whose negatives are the documents of every process (``model.gather_across_devices``).

Each process keeps its own queries and scores them against the documents of all processes: the
``b`` texts (positives) and the hard negatives are gathered, each column group on its own (so that
the global column order is every rank's positives, then every rank's negatives, exactly the
columns one process would build from the whole global batch), with autograd, so that the rank
that encoded a document gets the gradient of every rank's queries against it
(``lightning_modules.distributed.gather_with_gradient``).

The loss of a process is the mean over its own rows. DDP averages gradients over the ``W``
processes, so the update is that of the mean over the global batch: the same as one process
training on the concatenated batch (tested to 1e-5), with no factor of ``W``. (PyLate multiplies
its gathered loss by ``W``, which makes loss and gradients ``W`` times too large.)

Ragged shapes: token lengths and the number of hard negatives differ between ranks; each is padded
to its largest value across ranks (padding tokens masked, padding negatives masked out of the loss),
never to a fixed length. Texts present on several ranks are matched by key: a column whose text is
a known positive of a row's query is masked as a false negative, whichever rank it came from.
Unequal numbers of pairs per rank are refused with a message on every rank (no rank left waiting).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lightning_modules.distributed import gather_sizes, gather_with_gradient, gather_without_gradient, rank
from lightning_modules.encoder import TokenEmbeddings
from lightning_modules.losses.infonce import InfoNCELoss

# Key of a padding negative: matches no text key (keys are >= 0) and no padding positive key (-1).
PADDING_COLUMN_KEY = -2

ScoreMatrix = Callable[[TokenEmbeddings, TokenEmbeddings], torch.Tensor]


class UnequalBatchesError(RuntimeError):
    """Processes hold different numbers of pairs in one step, which a gathered loss cannot pair up."""


def cross_device_infonce(
    loss: InfoNCELoss,
    score_matrix: ScoreMatrix,
    queries: TokenEmbeddings,
    candidates: TokenEmbeddings,
    column_keys: torch.Tensor,
    positive_keys: torch.Tensor,
) -> torch.Tensor:
    """InfoNCE of this rank's queries against the documents of every rank.

    Args:
        loss: the InfoNCE settings (temperature; ``symmetric`` also picks each local ``b`` text's
            ``a`` text among the ``a`` texts of every rank, which are then gathered too).
        score_matrix: MaxSim of every text of one side against every text of the other, ``(Ba, Bb)``.
        queries: ``(B, La, D)``: this rank's ``a`` texts.
        candidates: ``(B + N, Lc, D)``: this rank's ``b`` texts (row ``i`` the positive of query ``i``),
            then its ``N`` hard negatives.
        column_keys: ``(B + N,)`` int64, the text key of each candidate.
        positive_keys: ``(B, P)`` int64, the keys of every known positive of each query (-1 pads).

    Returns the mean loss over this rank's ``B`` rows (a scalar).
    """
    pairs = queries.vectors.shape[0]
    negatives_count = candidates.vectors.shape[0] - pairs
    device = queries.vectors.device
    sizes = gather_sizes([pairs, negatives_count, queries.vectors.shape[1], candidates.vectors.shape[1],
                          positive_keys.shape[1]], device)
    if (sizes[:, 0] != pairs).any():
        raise UnequalBatchesError(
            f"model.gather_across_devices: the processes hold {sizes[:, 0].tolist()} pairs in this step (one "
            "number per rank); a gathered loss needs the same number on every rank. The DataModules' training "
            "loaders (lightning_modules/data/loading.py) give every rank an equal share of every step; a custom "
            "loader or sampler must do the same"
        )
    most_negatives, query_length, candidate_length, most_positives = sizes[:, 1:].max(dim=0).values.tolist()

    positives, negatives = candidates.split(pairs)
    positives = _padded(positives, candidate_length)
    negatives = _padded(negatives, candidate_length, rows=most_negatives)
    columns = TokenEmbeddings(gather_with_gradient(positives.vectors), gather_without_gradient(positives.mask))
    keys = gather_without_gradient(column_keys[:pairs])
    if most_negatives:  # every rank decides alike (the sizes are gathered), so none waits on a skipped gather
        columns = TokenEmbeddings(torch.cat([columns.vectors, gather_with_gradient(negatives.vectors)]),
                                  torch.cat([columns.mask, gather_without_gradient(negatives.mask)]))
        keys = torch.cat([keys, gather_without_gradient(F.pad(column_keys[pairs:], (0, most_negatives - negatives_count),
                                                               value=PADDING_COLUMN_KEY))])
    targets = rank() * pairs + torch.arange(pairs, device=device)  # each row's own positive, globally
    rows = torch.arange(pairs, device=device)

    mask = _known_positive(keys[None, :], positive_keys) | (keys == PADDING_COLUMN_KEY)[None, :]
    mask[rows, targets] = False
    total = loss.pick(score_matrix(queries, columns), targets, mask)
    if not loss.symmetric:
        return total

    # Each local b text against the a texts of every rank: columns are queries now.
    all_queries = _padded(queries, query_length)
    all_queries = TokenEmbeddings(gather_with_gradient(all_queries.vectors), gather_without_gradient(all_queries.mask))
    all_positive_keys = gather_without_gradient(F.pad(positive_keys, (0, most_positives - positive_keys.shape[1]),
                                                      value=-1))
    reverse_mask = _known_positive(column_keys[:pairs, None], all_positive_keys[None])
    reverse_mask[rows, targets] = False
    reverse = score_matrix(all_queries, candidates.split(pairs)[0]).T  # (B, W * B)
    return 0.5 * (total + loss.pick(reverse, targets, reverse_mask))


def _known_positive(keys: torch.Tensor, positive_keys: torch.Tensor) -> torch.Tensor:
    """True where a key is one of the positives listed for its row and column: ``keys`` broadcast to
    ``(R, C)``; ``positive_keys`` ``(R, P)`` (one list per row, for every column) or broadcast to
    ``(R, C, P)`` (one list per column). Returns ``(R, C)`` bool."""
    if positive_keys.dim() == 2:
        positive_keys = positive_keys[:, None, :]
    return (keys[..., None] == positive_keys).any(dim=-1)


def _padded(embeddings: TokenEmbeddings, length: int, rows: int | None = None) -> TokenEmbeddings:
    """``(B, L, D)`` -> ``(rows or B, length, D)``: zero vectors and a False mask in the new token
    positions; a new row holds one zero token marked True (every text needs a token that takes part
    in MaxSim), and the caller masks its column out."""
    vectors, mask = embeddings.vectors, embeddings.mask
    extra_tokens = length - vectors.shape[1]
    extra_rows = (rows if rows is not None else vectors.shape[0]) - vectors.shape[0]
    vectors = F.pad(vectors, (0, 0, 0, extra_tokens, 0, extra_rows))
    mask = F.pad(mask, (0, extra_tokens, 0, extra_rows))
    if extra_rows:
        mask[-extra_rows:, 0] = True
    return TokenEmbeddings(vectors, mask, embeddings.zero_padded)
