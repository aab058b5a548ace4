"""Search with a trained model: a corpus's token vectors computed once (``Index``), kept on disk
(``storage``), searched exactly (``ranking``, the loop evaluation uses) or approximately
(``approximate``). docs/search.md."""

from lightning_modules.index.approximate import ApproximateSettings
from lightning_modules.index.index import (DEFAULT_DTYPE, DEFAULT_SHARD_SIZE, Index, IndexReport, SearchResults,
                                           write_index)

__all__ = ["ApproximateSettings", "DEFAULT_DTYPE", "DEFAULT_SHARD_SIZE", "Index", "IndexReport", "SearchResults",
           "write_index"]
