"""A searchable corpus: the token vectors of its documents, computed once by a model, and MaxSim
search over them.

``model.index(corpus)`` makes an ``Index`` in memory, ``save`` / ``Index.load`` keep it on disk
(``storage.py``), and ``write_index`` builds one on disk a shard at a time, so that a killed build
continues from its last finished shard and a later call appends new documents
(``python -m train.index``). ``search`` is exact by default, by the scoring loop that evaluation
uses (``ranking.py``), so that a search reproduces an evaluation's ranking; ``mode="approximate"``
scores only the candidates that a nearest-neighbour index of the token vectors proposes
(``approximate.py``). How each grows with the corpus: docs/search.md.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lightning_modules.data.beir import Corpus, read_corpus
from lightning_modules.errors import DataError, SettingsError
from lightning_modules.index import storage
from lightning_modules.index.approximate import ApproximateSettings, TokenIVF
from lightning_modules.index.ranking import Block, length_blocks, rank_blocks
from lightning_modules.index.storage import DTYPES, MANIFEST, Manifest

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 1024  # documents a shard: what an interrupted build loses at most
DEFAULT_DTYPE = "float16"
MODES = ("exact", "approximate")
# The dtype scoring multiplies in, by the model's inference precision (CPUs multiply float16 slowly).
SCORING_DTYPES = {"32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}


@dataclass
class SearchResults:
    """The best documents of each query, best first: their ``ids``, MaxSim ``scores`` and ``indices``
    (positions in the index), one list per query; shorter than ``k`` when the index holds fewer
    documents (or only excluded ones were left)."""

    ids: list[list[str]]
    scores: list[list[float]]
    indices: list[list[int]]


def as_corpus(corpus, first_position: int = 0) -> tuple[Corpus, bool]:
    """``(Corpus, has_ids)`` of what a user gives: a ``Corpus``; a path (a corpus file or a retrieval
    folder, ``read_corpus``); a dict of id -> text; or a list of texts, whose positions (from
    ``first_position``: where they go in an index) become their ids (``has_ids`` False)."""
    if isinstance(corpus, Corpus):
        return corpus, True
    if isinstance(corpus, (str, Path)):
        return read_corpus(str(corpus)), True
    if isinstance(corpus, dict):
        return Corpus("(a dict)", [str(key) for key in corpus], [str(text) for text in corpus.values()]), True
    if isinstance(corpus, (list, tuple)):
        positions = range(first_position, first_position + len(corpus))
        return Corpus("(a list)", [str(i) for i in positions], list(corpus)), False
    raise TypeError("a corpus is a list of texts, a dict of id -> text, a Corpus or a path; "
                    f"got {type(corpus).__name__}")


def embed_documents(model, token_ids: list[list[int]], batch_size: int, show_progress_bar: bool,
                    desc: str) -> list[torch.Tensor]:
    """The ``(L_i, D)`` token vectors of tokenised documents on the model's device, computed in eval
    mode whatever mode the model is in (and left in it): how evaluation and indexing encode a corpus."""
    was_training = model.training
    model.eval()
    try:
        return model.embed_token_ids(token_ids, batch_size, show_progress_bar, desc)
    finally:
        model.train(was_training)


def encode_documents(model, texts: list[str], batch_size: int, show_progress_bar: bool,
                     desc: str) -> list[torch.Tensor]:
    """The ``(L_i, D)`` token vectors of documents, on the CPU (an empty document is its special
    tokens alone)."""
    token_ids = model.tokenize(texts, is_query=False, allow_empty=True)
    return [v.cpu() for v in embed_documents(model, token_ids, batch_size, show_progress_bar, desc)]


class Index:
    """The documents of a corpus (``ids``, ``texts``) with their token vectors (``(L_i, D)`` each,
    stored in ``dtype``), searchable by ``model``, the model that made them.

    Build one with ``model.index(corpus)`` (or ``Index.build``), or read one with
    ``Index.load(path, model)``.
    """

    def __init__(self, model, ids: list[str], texts: list[str], vectors: list[torch.Tensor], *,
                 has_ids: bool = True, dtype: str = DEFAULT_DTYPE, path: Path | None = None) -> None:
        if not len(ids) == len(texts) == len(vectors):
            raise ValueError(f"{len(ids)} ids, {len(texts)} texts and {len(vectors)} vectors: one of each a document")
        if dtype not in DTYPES:
            raise SettingsError(f"dtype={dtype!r}: expected one of {list(DTYPES)}")
        self.model = model
        self.ids, self.texts, self.has_ids, self.dtype, self.path = list(ids), list(texts), has_ids, dtype, path
        self.vectors = [v.to(DTYPES[dtype]) for v in vectors]
        self.position = {doc_id: i for i, doc_id in enumerate(self.ids)}
        if len(self.position) != len(self.ids):
            raise DataError("two documents share an id; ids must be unique")
        self._blocks: list[Block] | None = None
        self._ivf: dict[tuple, TokenIVF] = {}  # by ApproximateSettings.build_key(), the latest only

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Index({len(self)} documents, {sum(len(v) for v in self.vectors)} token vectors, {self.dtype})"

    @classmethod
    def build(cls, model, corpus, dtype: str = DEFAULT_DTYPE, batch_size: int = 64,
              show_progress_bar: bool | None = None) -> Index:
        """Encode every document of ``corpus`` (see ``as_corpus``) once, with ``model``."""
        corpus, has_ids = as_corpus(corpus)
        show = len(corpus.ids) > 1024 if show_progress_bar is None else show_progress_bar
        vectors = encode_documents(model, corpus.texts, batch_size, show, f"indexing {len(corpus.ids)} documents")
        return cls(model, corpus.ids, corpus.texts, vectors, has_ids=has_ids, dtype=dtype)

    def add(self, corpus, batch_size: int = 64, show_progress_bar: bool | None = None) -> int:
        """Encode and add the documents of ``corpus`` whose ids the index does not hold yet (a document
        already held with the same text is skipped); returns how many were added.

        Raises:
            DataError: a held id comes with another text (an index only grows).
        """
        corpus, has_ids = as_corpus(corpus, first_position=len(self))
        if has_ids != self.has_ids:
            raise DataError("documents with ids cannot join an index of documents without (or the reverse)")
        new = new_documents(corpus, dict(zip(self.ids, self.texts)), "this index")
        if new:
            show = len(new) > 1024 if show_progress_bar is None else show_progress_bar
            texts = [corpus.texts[i] for i in new]
            vectors = encode_documents(self.model, texts, batch_size, show, f"indexing {len(new)} documents")
            for i, vector in zip(new, vectors):
                self.position[corpus.ids[i]] = len(self.ids)
                self.ids.append(corpus.ids[i])
                self.texts.append(corpus.texts[i])
                self.vectors.append(vector.to(DTYPES[self.dtype]))
            self._blocks, self._ivf = None, {}
        return len(new)

    # ---- search -----------------------------------------------------------------------------------

    @torch.no_grad()
    def search(self, queries: str | list[str], k: int = 10, mode: str = "exact",
               exclude: list[str | None] | None = None, approximate: ApproximateSettings | None = None,
               batch_size: int = 64, show_progress_bar: bool | None = None) -> SearchResults:
        """The ``k`` best documents of each query by MaxSim.

        Args:
            queries: one text or a list, encoded with the model's query settings.
            mode: ``"exact"`` (every document scored) or ``"approximate"`` (the candidates that
                ``approximate``'s settings propose, each scored exactly).
            exclude: for each query, a document id never to return, or None (BEIR's evaluations
                leave out the document whose id is the query's own).
        """
        queries = [queries] if isinstance(queries, str) else list(queries)
        show = len(queries) > 1024 if show_progress_bar is None else show_progress_bar
        vectors = self.model.encode(queries, is_query=True, batch_size=batch_size, show_progress_bar=show)
        return self.search_vectors(vectors, k, mode, exclude, approximate, show)

    @torch.no_grad()
    def search_vectors(self, queries: list[torch.Tensor], k: int = 10, mode: str = "exact",
                       exclude: list[str | None] | None = None, approximate: ApproximateSettings | None = None,
                       show_progress_bar: bool = False) -> SearchResults:
        """``search`` for queries already encoded: ``(L_q, D)`` token vectors each."""
        if mode not in MODES:
            raise SettingsError(f"search mode {mode!r}: expected one of {list(MODES)}")
        if k < 1:
            raise SettingsError(f"k={k}: the number of documents to return must be at least 1")
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"exclude holds {len(exclude)} entries for {len(queries)} queries")
        dtype = SCORING_DTYPES[self.model.inference_precision]
        queries = [q.to(dtype) for q in queries]
        exclude = exclude or [None] * len(queries)
        excluded = torch.tensor([-1 if e is None else self.position.get(e, -1) for e in exclude])
        if not queries or not self.ids:
            return SearchResults([[] for _ in queries], [[] for _ in queries], [[] for _ in queries])
        if mode == "exact":
            scores, indices = rank_blocks(self.model, queries, self.blocks(), excluded, k, show_progress_bar)
        else:
            scores, indices = self._search_candidates(queries, excluded, k, approximate or ApproximateSettings())
        return self._results(scores, indices)

    def blocks(self) -> list[Block]:
        """The documents as scoring blocks (``ranking.length_blocks``) in the scoring dtype, on the
        model's device; made on the first search, kept until documents are added."""
        dtype = SCORING_DTYPES[self.model.inference_precision]
        device = next(self.model.parameters()).device
        held = self._blocks[0][1].vectors if self._blocks else None
        if held is None or held.dtype != dtype or held.device != device:
            self._blocks = None  # the old ones freed first: they can be large
            blocks = length_blocks(list(range(len(self.ids))), self.vectors, dtype)
            self._blocks = [(indices, replace(block, vectors=block.vectors.to(device), mask=block.mask.to(device)))
                            for indices, block in blocks]
        return self._blocks

    def _search_candidates(self, queries: list[torch.Tensor], excluded: torch.Tensor, k: int,
                           settings: ApproximateSettings) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate search: each query scored exactly against its candidates only."""
        ivf = self.approximate_index(settings)
        # k documents need k candidates at least (one more: the query's own may be excluded).
        settings = replace(settings, rerank=max(settings.rerank, k + 1))
        blocks = self.blocks()
        block_of = torch.empty(len(self.ids), dtype=torch.long)
        row_of = torch.empty(len(self.ids), dtype=torch.long)
        for number, (indices, _) in enumerate(blocks):
            block_of[indices], row_of[indices] = number, torch.arange(len(indices))
        scores = torch.full((len(queries), k), float("-inf"))
        found = torch.full((len(queries), k), -1, dtype=torch.long)
        for row, (query, candidates) in enumerate(zip(queries, ivf.candidates(queries, settings))):
            sub_blocks = []
            for number in block_of[candidates].unique().tolist():
                rows = row_of[candidates[block_of[candidates] == number]]
                indices, block = blocks[number]
                sub_blocks.append((indices[rows], block.select(rows.to(block.vectors.device))))
            top_scores, top_indices = rank_blocks(self.model, [query], sub_blocks, excluded[row : row + 1], k)
            scores[row, : top_scores.shape[1]], found[row, : top_indices.shape[1]] = top_scores[0], top_indices[0]
        return scores, found

    def approximate_index(self, settings: ApproximateSettings) -> TokenIVF:
        """The nearest-neighbour index of the token vectors for ``settings``: kept in memory, and for an
        index on disk read from (or written to) its ``approximate/`` folder."""
        if settings.build_key() not in self._ivf:
            self._ivf = {settings.build_key(): TokenIVF.for_index(self.vectors, settings, self._shard_digests(),
                                                                 self.path)}
        return self._ivf[settings.build_key()]

    def _shard_digests(self) -> list[str] | None:
        """What identifies this index's vectors on disk (None in memory or when changed since loaded)."""
        if self.path is None:
            return None
        manifest = storage.read_manifest(self.path)
        return [shard.digest for shard in manifest.shards] if manifest.documents == len(self) else None

    def _results(self, scores: torch.Tensor, indices: torch.Tensor) -> SearchResults:
        ids, kept_scores, kept_indices = [], [], []
        for row_scores, row_indices in zip(scores.tolist(), indices.tolist()):
            kept = [(s, i) for s, i in zip(row_scores, row_indices) if i >= 0 and s != float("-inf")]
            ids.append([self.ids[i] for _, i in kept])
            kept_scores.append([s for s, _ in kept])
            kept_indices.append([i for _, i in kept])
        return SearchResults(ids, kept_scores, kept_indices)

    # ---- on disk ----------------------------------------------------------------------------------

    def save(self, path: str | Path, shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False,
             model_path: str | None = None) -> Path:
        """Write the index to the folder ``path`` (``storage.py``'s layout), which must not hold
        another index unless ``overwrite``. ``model_path``: where the model can be loaded from, for
        ``python -m train.search`` (else it needs ``model=``)."""
        folder = Path(path).expanduser()
        prepare_folder(folder, overwrite)
        if (folder / MANIFEST).exists():
            raise SettingsError(f"{folder} already holds an index; pass overwrite=True to replace it")
        corpus = Corpus("(saved from memory)", self.ids, self.texts)
        write_index(self.model, corpus, folder, has_ids=self.has_ids, shard_size=shard_size, dtype=self.dtype,
                    model_path=model_path, encoded=self.vectors)
        self.path = folder
        return folder

    @classmethod
    def load(cls, path: str | Path, model) -> Index:
        """The index in the folder ``path``, to be searched with ``model``.

        Raises:
            DataError: no index there, an unfinished build, a damaged or foreign file.
            SettingsError: ``model`` is not the model that built it, or cuts documents otherwise.
        """
        folder = Path(path).expanduser()
        manifest = storage.read_manifest(folder)
        if manifest.pending:
            raise DataError(f"{folder}: its build was interrupted with {manifest.pending['documents']} documents of "
                            f"{manifest.pending['source']} still to add; run the same python -m train.index command "
                            "again to finish it")
        check_model(folder, manifest, model)
        ids, texts, vectors = [], [], []
        for shard in manifest.shards:
            shard_ids, shard_texts, shard_vectors = storage.read_shard(folder, shard, manifest.model["fingerprint"],
                                                                       manifest.model["dim"])
            ids += shard_ids
            texts += shard_texts
            vectors += shard_vectors
        return cls(model, ids, texts, vectors, has_ids=manifest.has_ids, dtype=manifest.dtype, path=folder)


def check_model(folder: Path, manifest: Manifest, model, fingerprint: str | None = None) -> None:
    """Refuse ``model`` (whose ``storage.model_fingerprint`` is ``fingerprint``, when the caller has
    it) for the index in ``folder`` unless it is the model that built it, with the same document
    settings: other vectors cannot be compared with the stored ones."""
    built_by = manifest.model.get("path") or "a model given in Python"
    if manifest.model["fingerprint"] != (fingerprint or storage.model_fingerprint(model)):
        raise SettingsError(f"{folder} was built by another model ({built_by}): its stored vectors cannot be "
                            "compared with this model's. Search it with the model that built it, or index the corpus "
                            "again with this one (python -m train.index model=... out=<a new folder>)")
    settings = storage.document_settings(model)
    built = {key: manifest.text_settings.get(key) for key in settings}
    if built != settings:
        differ = ", ".join(f"{key}={built[key]!r} there, {settings[key]!r} here" for key in settings
                           if built[key] != settings[key])
        raise SettingsError(f"{folder} was built with other document settings ({differ}): its documents were cut and "
                            "marked otherwise. Search it with the settings it was built with, or index again")


def prepare_folder(folder: Path, overwrite: bool) -> None:
    """Make ``folder`` ready to hold an index: refuse one holding other files; with ``overwrite``,
    remove the index's own files from one that holds an index (and nothing else)."""
    if folder.exists() and not folder.is_dir():
        raise SettingsError(f"{folder} is a file; an index is written to a folder")
    if not folder.is_dir():
        return
    has_index = (folder / MANIFEST).is_file()
    if not has_index and any(not storage.is_index_file(path) for path in folder.iterdir()):
        raise SettingsError(f"{folder} holds files and no index ({MANIFEST}); choose an empty or new folder")
    if has_index and overwrite:
        for path in folder.iterdir():
            if path.is_dir() and path.name == storage.APPROXIMATE:
                shutil.rmtree(path)
            elif storage.is_index_file(path) and path.name != storage.LOCK:
                path.unlink()


def new_documents(corpus: Corpus, held: dict[str, str], where: str) -> list[int]:
    """The positions in ``corpus`` of documents that ``held`` (id -> text) lacks.

    Raises:
        DataError: a held id comes with another text.
    """
    new = []
    for i, (doc_id, text) in enumerate(zip(corpus.ids, corpus.texts)):
        if doc_id not in held:
            new.append(i)
        elif held[doc_id] != text:
            raise DataError(f"{corpus.source}: document {doc_id!r} is already in {where} with another text; an "
                            "index only grows: build a new one (overwrite=true) to change a document")
    return new


@dataclass
class IndexReport:
    """What ``write_index`` did: documents ``added`` (encoded now), ``adopted`` (found whole on
    disk from an interrupted run), ``held`` (already in the index), and the index's totals."""

    added: int
    adopted: int
    held: int
    documents: int
    tokens: int
    shards: int


def write_index(model, corpus: Corpus, folder: Path, *, has_ids: bool = True, shard_size: int = DEFAULT_SHARD_SIZE,
                dtype: str = DEFAULT_DTYPE, batch_size: int = 64, show_progress_bar: bool = True,
                model_path: str | None = None, encoded: list[torch.Tensor] | None = None) -> IndexReport:
    """Add the documents of ``corpus`` that the index in ``folder`` lacks (all, for a new index), a
    shard of ``shard_size`` documents at a time, each encoded with ``model`` (or taken from
    ``encoded``, aligned with the corpus) and written whole before the manifest lists it.

    A run killed midway leaves the manifest's ``pending`` set; the same call again adopts a shard
    that was written whole but not yet listed, and encodes the rest: the index comes out as an
    uninterrupted run would have written it. An existing index keeps its own ``dtype`` and
    ``shard_size``.

    Raises:
        SettingsError: the folder holds other files, or an index built by another model.
        DataError: a document already indexed comes with another text.
    """
    if shard_size < 1:
        raise SettingsError(f"shard_size={shard_size}: a shard holds at least 1 document")
    if dtype not in DTYPES:
        raise SettingsError(f"dtype={dtype!r}: expected one of {list(DTYPES)}")
    prepare_folder(folder, overwrite=False)
    with storage.writing_lock(folder):
        return _write_index(model, corpus, folder, has_ids, shard_size, dtype, batch_size, show_progress_bar,
                            model_path, encoded)


def _write_index(model, corpus: Corpus, folder: Path, has_ids: bool, shard_size: int, dtype: str, batch_size: int,
                 show_progress_bar: bool, model_path: str | None, encoded: list[torch.Tensor] | None) -> IndexReport:
    fingerprint = storage.model_fingerprint(model)
    if (folder / MANIFEST).is_file():
        manifest = storage.read_manifest(folder)
        check_model(folder, manifest, model, fingerprint)
        if manifest.has_ids != has_ids:
            raise DataError(f"{folder}: documents with ids cannot join an index of documents without (or the reverse)")
        for setting, value in (("dtype", dtype), ("shard_size", shard_size)):
            if getattr(manifest, setting) != value:
                log.info("%s keeps its own %s=%s (not %s)", folder, setting, getattr(manifest, setting), value)
    else:
        manifest = Manifest(model={"path": model_path, "fingerprint": fingerprint, "dim": model.encoder.dim},
                            text_settings=model.text_settings.as_dict(), scoring=model.scoring_options(), dtype=dtype,
                            precision=model.inference_precision, shard_size=shard_size, has_ids=has_ids)
    if manifest.pending and manifest.pending.get("source") != corpus.source:
        raise SettingsError(f"{folder}: adding {manifest.pending.get('source')} was interrupted with "
                            f"{manifest.pending.get('documents')} documents still to add; finish it first (the same "
                            f"python -m train.index command, corpus={manifest.pending.get('source')}), then add "
                            f"{corpus.source}; or start over with overwrite=true")
    _remove_temporary_files(folder)
    held: dict[str, str] = {}
    for shard in manifest.shards:
        ids, texts = storage.read_shard_documents(folder, shard, fingerprint)
        held.update(zip(ids, texts))
    new = new_documents(corpus, held, str(folder))
    report = IndexReport(0, 0, len(corpus.ids) - len(new), manifest.documents, manifest.tokens, len(manifest.shards))
    if corpus.source not in manifest.sources and new:
        manifest.sources.append(corpus.source)
    chunks = [new[start : start + manifest.shard_size] for start in range(0, len(new), manifest.shard_size)]
    for number, chunk in enumerate(chunks, start=1):
        manifest.pending = {"source": corpus.source, "documents": sum(len(c) for c in chunks[number - 1 :])}
        storage.write_manifest(folder, manifest)
        ids, texts = [corpus.ids[i] for i in chunk], [corpus.texts[i] for i in chunk]
        shard_number = len(manifest.shards)
        shard = _adopt(folder, shard_number, ids, texts, fingerprint)
        if shard is not None:
            report.adopted += len(chunk)
            log.info("shard %d/%d: %s was written whole before an interruption; kept", number, len(chunks), shard.file)
        else:
            desc = f"shard {number}/{len(chunks)}: encoding {len(chunk)} documents"
            vectors = ([encoded[i] for i in chunk] if encoded is not None
                       else encode_documents(model, texts, batch_size, show_progress_bar, desc))
            shard = storage.write_shard(folder, shard_number, ids, texts, vectors, manifest.dtype, fingerprint)
            report.added += len(chunk)
            log.info("shard %d/%d: %d documents, %d token vectors written to %s", number, len(chunks), len(chunk),
                     shard.tokens, shard.file)
        manifest.shards.append(shard)
    manifest.pending = None
    storage.write_manifest(folder, manifest)
    report.documents, report.tokens, report.shards = manifest.documents, manifest.tokens, len(manifest.shards)
    return report


def _adopt(folder: Path, number: int, ids: list[str], texts: list[str], fingerprint: str) -> storage.Shard | None:
    """The shard ``number`` when a whole file of it, written by this model for exactly these
    documents (``ids`` and ``texts``), is already there (an interrupted run wrote it, then died
    before listing it); else None."""
    path = folder / storage.SHARD_NAME.format(number=number)
    if not path.is_file() or not storage.shard_written_for(path, fingerprint, ids, texts):
        return None
    return storage.Shard(path.name, len(ids), storage.shard_tokens(path), storage.file_digest(path))


def _remove_temporary_files(folder: Path) -> None:
    """Remove the temporary files a killed run left (``.<name>.*.tmp``, here and in ``approximate/``),
    never anything else."""
    for path in [*folder.glob(".*.tmp"), *(folder / storage.APPROXIMATE).glob(".*.tmp")]:
        path.unlink(missing_ok=True)
