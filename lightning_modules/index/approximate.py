"""Approximate search's first stage: candidate documents from the nearest document tokens of each
query token, as ColBERT's first end-to-end retrieval did; the candidates are then scored exactly
by MaxSim (``Index.search(mode="approximate")``).

The token vectors go into a faiss inverted-file index (``IndexIVFScalarQuantizer``: k-means lists,
8-bit codes, inner product): a query token looks in the ``probe`` lists nearest to it and takes
its ``token_hits`` best tokens there; their documents are the query's candidates, estimated from
those hits alone, and the ``rerank`` best estimated are scored exactly. Work per query grows
with ``probe * tokens / lists`` and with the documents scored, not with the corpus. The
knobs, what they cost and what they keep: docs/search.md, "Approximate search".

faiss (``pip install 'maxsim-lightning[search]'``: faiss-cpu) is imported only here and only when
approximate search is used.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lightning_modules.errors import SettingsError
from lightning_modules.index.storage import APPROXIMATE, atomic_write, digest

log = logging.getLogger(__name__)

# Token vectors added to faiss at a time: bounds the float32 copy it reads from.
ADD_CHUNK = 1 << 16
# faiss's k-means wants at least this many training points per list.
POINTS_PER_LIST = 39


@dataclass(frozen=True)
class ApproximateSettings:
    """The knobs of approximate search.

    Attributes:
        lists: k-means lists of the token vectors; None: the power of two nearest to the square
            root of the number of tokens (fewer when there are too few tokens to learn them).
        probe: lists each query token looks in; more finds more, at more cost.
        token_hits: the nearest document tokens each query token takes (ColBERT's k'); their
            documents are the candidates.
        rerank: the candidates scored exactly by MaxSim, the best by their estimated score (see
            ``TokenIVF.candidates``); reading their token vectors is most of a query's cost.
        training_sample: at most this many token vectors, drawn at random, train the k-means.
        seed: of that draw.
    """

    # The defaults were chosen on SciFact's training queries (docs/search.md, "Approximate search").
    lists: int | None = None
    probe: int = 8
    token_hits: int = 64
    rerank: int = 96
    training_sample: int = 1 << 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("probe", "token_hits", "rerank", "training_sample"):
            if getattr(self, name) < 1:
                raise SettingsError(f"search.{name}={getattr(self, name)}: must be at least 1")
        if self.lists is not None and self.lists < 1:
            raise SettingsError(f"search.lists={self.lists}: must be at least 1 (or null: chosen from the corpus)")

    def build_key(self) -> tuple:
        """What the built index depends on (``probe``, ``token_hits`` and ``rerank`` apply at search time)."""
        return self.lists, self.training_sample, self.seed


def faiss_module():
    """faiss, or a message saying how to install it."""
    # Which of its builds it loads (and that a faster one is missing) is no news to a user.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError as error:
        raise SettingsError("approximate search needs faiss: pip install 'maxsim-lightning[search]' (faiss-cpu), "
                            "or search with search.mode=exact") from error
    return faiss


def default_lists(tokens: int) -> int:
    """The power of two nearest to ``sqrt(tokens)``, at most ``tokens / POINTS_PER_LIST`` (and at least 1)."""
    lists = 2 ** round(math.log2(max(math.sqrt(tokens), 1)))
    return max(1, min(lists, tokens // POINTS_PER_LIST))


class TokenIVF:
    """A faiss inverted-file index of every token vector of an index, and which document each is.

    Args:
        ivf: the faiss index (token vectors in the order of ``token_document``).
        token_document: ``(T,)`` int64, the document position of each token vector.
    """

    def __init__(self, ivf, token_document: torch.Tensor) -> None:
        self.ivf = ivf
        self.token_document = token_document

    @property
    def lists(self) -> int:
        return self.ivf.nlist

    @classmethod
    def for_index(cls, vectors: list[torch.Tensor], settings: ApproximateSettings, shard_digests: list[str] | None,
                  folder: Path | None) -> TokenIVF:
        """The index of ``vectors`` (``(L_i, D)`` a document): read from ``folder/approximate/`` when
        one was built there for the same shards and settings, else built (and written there when
        the index is on disk, atomically)."""
        faiss = faiss_module()
        lengths = torch.tensor([len(v) for v in vectors])
        token_document = torch.repeat_interleave(torch.arange(len(vectors)), lengths)
        lists = settings.lists or default_lists(len(token_document))
        path = None
        if folder is not None and shard_digests is not None:
            key = digest("ivf-sq8", faiss.__version__, str(lists), str(settings.training_sample), str(settings.seed),
                         *shard_digests)
            path = folder / APPROXIMATE / f"ivf-{lists}-{key}.faiss"
            if path.is_file():
                ivf = faiss.read_index(str(path))
                if ivf.ntotal == len(token_document):
                    return cls(ivf, token_document)
                log.warning("%s does not fit this index's %d token vectors; building it again", path,
                            len(token_document))
        ivf = cls._build(faiss, vectors, lists, settings)
        if path is not None:
            try:
                atomic_write(path, lambda temporary: faiss.write_index(ivf, str(temporary)))
            except (OSError, RuntimeError) as error:  # a read-only index: search on, build again next time
                log.warning("Could not keep the approximate index in %s (%s)", path.parent, error)
        return cls(ivf, token_document)

    @staticmethod
    def _build(faiss, vectors: list[torch.Tensor], lists: int, settings: ApproximateSettings):
        tokens = sum(len(v) for v in vectors)
        if settings.lists is not None and lists * POINTS_PER_LIST > tokens:
            raise SettingsError(f"search.lists={lists}: too many for {tokens} token vectors (k-means needs "
                                f"{POINTS_PER_LIST} a list); use at most {max(1, tokens // POINTS_PER_LIST)}, or null")
        flat = torch.cat(vectors)  # (T, D) in the stored dtype: faiss gets float32 a chunk at a time
        generator = torch.Generator().manual_seed(settings.seed)
        sample = torch.randperm(tokens, generator=generator)[: max(settings.training_sample, lists * POINTS_PER_LIST)]
        training = flat[sample.sort().values].float().numpy()
        dim = training.shape[1]
        log.info("approximate search: learning %d lists from %d of %d token vectors", lists, len(training), tokens)
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, dim, lists, faiss.ScalarQuantizer.QT_8bit,
                                            faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = settings.seed
        ivf.train(training)
        for start in range(0, tokens, ADD_CHUNK):
            ivf.add(flat[start : start + ADD_CHUNK].float().numpy())
        return ivf

    def candidates(self, queries: list[torch.Tensor], settings: ApproximateSettings) -> list[torch.Tensor]:
        """The candidate documents of each query (``(L_q, D)`` token vectors), best first by their
        estimated score, at most ``settings.rerank``: a ``(C,)`` int64 tensor of document positions
        a query.

        A query token's ``token_hits`` nearest token vectors, among its ``probe`` nearest lists,
        name the documents. Each is estimated as MaxSim would score it from those hits alone: a
        query token's best hit in the document, or, where it has none there, the token's weakest
        hit (no token of that document was nearer: XTR's imputation), averaged over query tokens.
        """
        self.ivf.nprobe = min(settings.probe, self.lists)
        flat = torch.cat([q.float().cpu() for q in queries]).numpy()
        similarities, hits = self.ivf.search(flat, settings.token_hits)
        similarities, hits = torch.from_numpy(similarities), torch.from_numpy(hits)
        candidates = []
        lengths = [len(q) for q in queries]
        for query_hits, query_similarities in zip(hits.split(lengths), similarities.split(lengths)):
            found = query_hits >= 0
            documents, slot = torch.unique(self.token_document[query_hits.clamp(min=0)], return_inverse=True)
            # (L_q, C): each query token's best hit in each document, else its weakest hit at all.
            weakest = query_similarities.masked_fill(~found, float("inf")).amin(dim=1, keepdim=True)
            weakest = weakest.masked_fill(weakest == float("inf"), 0.0)  # a token with no hit at all: no evidence
            estimate = weakest.expand(-1, len(documents)).clone()
            estimate.scatter_reduce_(1, slot, query_similarities.masked_fill(~found, float("-inf")), "amax")
            keep = estimate.sum(dim=0).argsort(descending=True, stable=True)[: settings.rerank]
            present = torch.zeros(len(documents), dtype=torch.bool)
            present[slot[found]] = True  # a document named only by padding hits (-1) is not a candidate
            keep = keep[present[keep]]
            candidates.append(documents[keep])
        return candidates
