"""BM25 over a corpus, through ``bm25s`` (an optional dependency: ``pip install 'maxsim-lightning[bm25]'``).

Used for BM25 hard negatives (``data.negatives_from=bm25``) and as the lexical baseline of
``benchmarks/retrieval.py``. English stopwords are removed; words are stemmed when PyStemmer
is installed (BEIR's BM25 is Elasticsearch's, which stems).
"""

from __future__ import annotations

from lightning_modules.errors import DataError


def bm25_top_k(corpus_texts: list[str], query_texts: list[str], k: int) -> tuple[list[list[int]], list[list[float]]]:
    """For each query, the corpus indices of its ``k`` best BM25 matches, best first, and their scores."""
    try:
        import bm25s
    except ImportError as error:
        raise DataError("BM25 needs the bm25s package: pip install 'maxsim-lightning[bm25]' "
                        "(or data.negatives_from=model)") from error
    stemmer = _stemmer()
    options = {"stopwords": "en", "stemmer": stemmer, "show_progress": False}
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(corpus_texts, **options), show_progress=False)
    k = min(k, len(corpus_texts))
    indices, scores = retriever.retrieve(bm25s.tokenize(query_texts, **options), k=k, show_progress=False,
                                         n_threads=1)
    return indices.tolist(), scores.tolist()


def _stemmer():
    try:
        import Stemmer  # PyStemmer
    except ImportError:
        return None
    return Stemmer.Stemmer("english").stemWords
