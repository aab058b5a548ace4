"""BM25 over a corpus, through ``bm25s`` (an optional dependency: ``pip install 'maxsim-lightning[bm25]'``).

Used for BM25 hard negatives (``data.negatives_from=bm25``) and as the lexical baseline of
``benchmarks/retrieval.py``. English stopwords are removed; words are stemmed when PyStemmer
is installed (BEIR's BM25 is Elasticsearch's, which stems).
"""

from __future__ import annotations

from lightning_modules.errors import DataError


class BM25Index:
    """A BM25 index of ``corpus_texts``, built once and searched as often as needed."""

    def __init__(self, corpus_texts: list[str]) -> None:
        try:
            import bm25s
        except ImportError as error:
            raise DataError("BM25 needs the bm25s package: pip install 'maxsim-lightning[bm25]' "
                            "(or data.negatives_from=model)") from error
        self._bm25s = bm25s
        self._options = {"stopwords": "en", "stemmer": _stemmer(), "show_progress": False}
        self.size = len(corpus_texts)
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize(corpus_texts, **self._options), show_progress=False)

    def top_k(self, query_texts: list[str], k: int) -> tuple[list[list[int]], list[list[float]]]:
        """For each query, the corpus indices of its ``k`` best matches, best first, and their scores."""
        indices, scores = self.retriever.retrieve(self._bm25s.tokenize(query_texts, **self._options),
                                                  k=min(k, self.size), show_progress=False, n_threads=1)
        return indices.tolist(), scores.tolist()

    @property
    def nbytes(self) -> int:
        """The size of the index's sparse score matrix."""
        return sum(a.nbytes for a in self.retriever.scores.values() if hasattr(a, "nbytes"))


def bm25_top_k(corpus_texts: list[str], query_texts: list[str], k: int) -> tuple[list[list[int]], list[list[float]]]:
    """For each query, the corpus indices of its ``k`` best BM25 matches, best first, and their scores."""
    return BM25Index(corpus_texts).top_k(query_texts, k)


def _stemmer():
    try:
        import Stemmer  # PyStemmer
    except ImportError:
        return None
    return Stemmer.Stemmer("english").stemWords
