"""An index on disk: a corpus's token vectors in safetensors shards, and a manifest.

    INDEX_DIR/index.json                  the manifest (``Manifest``): the model's fingerprint and
                                          path, its text settings, the shards, the work still pending
    INDEX_DIR/shard-00000.safetensors     ``vectors (T_s, D)`` in the index's dtype (float16 unless
                                          told), ``lengths (n,)`` int32, the documents' ``ids`` and
                                          ``texts`` (UTF-8 JSON lists, as uint8), and in its metadata
                                          the model's fingerprint
    INDEX_DIR/approximate/                what approximate search builds (``approximate.py``)

Every file is written under a temporary name beside its place and renamed over it, so a killed
run leaves whole files only; the manifest lists a shard only once the shard is whole on disk,
so an interrupted build continues from its last finished shard. A shard's bytes depend on its
documents and the model alone (one metadata key: safetensors writes several in a random order),
so a continued build ends with the files an uninterrupted one writes. Each shard's digest is in the
manifest and checked on reading: a damaged or replaced file is an error, never silently used.
"""

from __future__ import annotations

import ctypes
import contextlib
import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lightning_modules.errors import DataError, SettingsError

try:
    import fcntl  # the build lock; where there is none (Windows), builds are not guarded against each other
except ImportError:  # pragma: no cover
    fcntl = None

MANIFEST = "index.json"
LOCK = "index.lock"  # held by the one build that writes the folder
APPROXIMATE = "approximate"  # approximate search's folder inside an index
FORMAT = "maxsim-lightning index"
VERSION = 1
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
SHARD_NAME = "shard-{number:05d}.safetensors"
SHARD_FILE = re.compile(r"^shard-\d{5,}\.safetensors$")
# A shard's one metadata entry: the fingerprint of the model that wrote it.
METADATA_KEY = "maxsim-lightning index, model"
REBUILD = "build it again with python -m train.index (into a new out= folder, or with overwrite=true)"


def model_fingerprint(model) -> str:
    """A digest of what a model's token vectors depend on: every weight (name, dtype, shape, bytes),
    the encoder's architecture settings and the tokens it leaves out of matching."""
    encoder = model.encoder
    config = {k: v for k, v in encoder.backbone.config.to_dict().items()
              if k not in ("_name_or_path", "transformers_version") and "dropout" not in k}
    hasher = _Digest()
    hasher.update("model", type(encoder.backbone).__name__, repr(sorted(config.items())),
                  tensor_bytes(encoder.excluded_ids))
    for name, tensor in model.state_dict().items():
        hasher.update(name, str(tensor.dtype), repr(tuple(tensor.shape)), tensor_bytes(tensor))
    return hasher.hexdigest()


def document_settings(model) -> dict:
    """The text settings that decide a document's tokens (a query's do not reach the index)."""
    settings = model.text_settings
    return {"max_length": settings.max_length, "roles": settings.roles, "document_marker": settings.document_marker}


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of ``tensor`` (any dtype)."""
    tensor = tensor.detach().cpu().contiguous()
    size = tensor.numel() * tensor.element_size()
    return ctypes.string_at(tensor.data_ptr(), size) if size else b""


def digest(*parts: bytes | str) -> str:
    """A hex digest of ``parts`` (each length-prefixed, so that no two lists of parts collide)."""
    hasher = _Digest()
    hasher.update(*parts)
    return hasher.hexdigest()


class _Digest:
    """blake2b over length-prefixed parts, so that no two lists of parts collide."""

    def __init__(self) -> None:
        self._hasher = hashlib.blake2b(digest_size=20)

    def update(self, *parts: bytes | str) -> None:
        for part in parts:
            data = part.encode() if isinstance(part, str) else part
            self._hasher.update(len(data).to_bytes(8, "little"))
            self._hasher.update(data)

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


def file_digest(path: Path) -> str:
    """blake2b of a file's bytes, read in 16 MiB pieces."""
    hasher = hashlib.blake2b(digest_size=20)
    with path.open("rb") as handle:
        while piece := handle.read(1 << 24):
            hasher.update(piece)
    return hasher.hexdigest()


@dataclass
class Shard:
    """One shard file as the manifest lists it."""

    file: str
    documents: int
    tokens: int
    digest: str


@dataclass
class Manifest:
    """What ``index.json`` holds.

    ``model``: ``{"path", "fingerprint", "dim"}`` (the path the model was loaded from, None for one
    built in Python; ``train.search`` loads it when not given ``model=``); ``text_settings``: the
    model's, when the index was built; ``dtype``: the stored vectors'; ``precision``: the inference
    precision they were computed in; ``has_ids``: whether the documents came with ids (else their
    positions are their ids); ``pending``: ``{"source", "documents"}`` while a build has documents
    left to add, else None; ``sources``: the corpora added, in order.
    """

    model: dict
    text_settings: dict
    scoring: dict
    dtype: str
    precision: str
    shard_size: int
    has_ids: bool = True
    shards: list[Shard] = field(default_factory=list)
    pending: dict | None = None
    sources: list[str] = field(default_factory=list)

    @property
    def documents(self) -> int:
        return sum(shard.documents for shard in self.shards)

    @property
    def tokens(self) -> int:
        return sum(shard.tokens for shard in self.shards)

    def as_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, **asdict(self), "documents": self.documents,
                "tokens": self.tokens}


def read_manifest(folder: Path) -> Manifest:
    """The manifest of the index in ``folder``.

    Raises:
        DataError: no index there, a manifest that is not ours or not whole, a newer format.
    """
    path = folder / MANIFEST
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; an index is a folder written by python -m train.index")
    if not path.is_file():
        raise DataError(f"{folder}: not an index (no {MANIFEST}); an index is a folder written by "
                        "python -m train.index")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: unreadable ({error}); the index is damaged: {REBUILD}") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise DataError(f"{path}: not a maxsim-lightning index (its format is {found!r})")
    if data.get("version") != VERSION:
        raise DataError(f"{path}: index format version {data.get('version')!r}; this version of maxsim-lightning "
                        f"reads version {VERSION}: {REBUILD}")
    try:
        manifest = Manifest(model=data["model"], text_settings=data["text_settings"], scoring=data["scoring"],
                            dtype=data["dtype"], precision=data["precision"], shard_size=int(data["shard_size"]),
                            has_ids=bool(data["has_ids"]), shards=[Shard(**shard) for shard in data["shards"]],
                            pending=data["pending"], sources=list(data["sources"]))
        # Only shard files of this folder: a manifest naming another path is not one we wrote.
        if not all(SHARD_FILE.match(shard.file) for shard in manifest.shards) or manifest.dtype not in DTYPES:
            raise ValueError("a shard file name or the dtype is not one an index writes")
        if manifest.pending is not None and not {"source", "documents"} <= set(manifest.pending):
            raise ValueError("pending lacks source or documents")
        return manifest
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path}: a field is missing or malformed ({error!r}); the index is damaged: "
                        f"{REBUILD}") from error


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write ``index.json`` atomically."""
    atomic_write(folder / MANIFEST, lambda path: path.write_text(json.dumps(manifest.as_dict(), indent=1) + "\n",
                                                                   encoding="utf-8"))


def write_shard(folder: Path, number: int, ids: list[str], texts: list[str], vectors: list[torch.Tensor],
                dtype: str, fingerprint: str) -> Shard:
    """Write the documents ``ids``/``texts`` with their ``(L_i, D)`` ``vectors`` as shard ``number``,
    atomically; returns its manifest entry."""
    lengths = torch.tensor([len(v) for v in vectors], dtype=torch.int32)
    tensors = {"vectors": torch.cat([v.detach().cpu() for v in vectors]).to(DTYPES[dtype]).contiguous(),
               "lengths": lengths, "ids": _json_tensor(ids), "texts": _json_tensor(texts)}
    metadata = {METADATA_KEY: fingerprint}
    name = SHARD_NAME.format(number=number)
    atomic_write(folder / name, lambda path: save_file(tensors, str(path), metadata))
    return Shard(name, len(ids), int(lengths.sum()), file_digest(folder / name))


def read_shard(folder: Path, shard: Shard, fingerprint: str,
               dim: int) -> tuple[list[str], list[str], list[torch.Tensor]]:
    """The ids, texts and ``(L_i, D)`` vectors of one shard, checked against its manifest entry.

    Raises:
        DataError: the file is missing, changed since it was written, or does not fit.
    """
    ids, texts = read_shard_documents(folder, shard, fingerprint)
    path = folder / shard.file
    try:
        with safe_open(str(path), framework="pt") as handle:
            vectors, lengths = handle.get_tensor("vectors"), handle.get_tensor("lengths")
    except (SafetensorError, OSError) as error:
        raise DataError(f"{path}: unreadable ({error}); the index is damaged: {REBUILD}") from error
    if (vectors.ndim != 2 or vectors.shape[1] != dim or lengths.shape != (shard.documents,)
            or int(lengths.sum()) != vectors.shape[0] or vectors.shape[0] != shard.tokens):
        raise DataError(f"{path}: does not fit its index's manifest; the index is damaged: {REBUILD}")
    return ids, texts, list(vectors.split(lengths.tolist()))


def read_shard_documents(folder: Path, shard: Shard, fingerprint: str) -> tuple[list[str], list[str]]:
    """The ids and texts of one shard, once its bytes are checked against its manifest entry.

    Raises:
        DataError: the file is missing, changed since it was written, or written by another model.
    """
    path = folder / shard.file
    if not path.is_file():
        raise DataError(f"{path}: missing; the index is damaged: {REBUILD}")
    if file_digest(path) != shard.digest:
        raise DataError(f"{path}: its bytes are not those the index wrote (damaged or replaced); {REBUILD}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            written_by = (handle.metadata() or {}).get(METADATA_KEY)
            ids, texts = _json_of(handle.get_tensor("ids")), _json_of(handle.get_tensor("texts"))
    except (SafetensorError, OSError, ValueError) as error:
        raise DataError(f"{path}: unreadable ({error}); the index is damaged: {REBUILD}") from error
    if written_by != fingerprint or len(ids) != len(texts) or len(ids) != shard.documents:
        raise DataError(f"{path}: does not fit its index's manifest; the index is damaged: {REBUILD}")
    return ids, texts


def shard_written_for(path: Path, fingerprint: str, ids: list[str], texts: list[str]) -> bool:
    """Whether ``path`` is a whole shard file of exactly these documents (``ids``, ``texts``), written
    by the model ``fingerprint``."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return ((handle.metadata() or {}).get(METADATA_KEY) == fingerprint
                    and _json_of(handle.get_tensor("ids")) == ids and _json_of(handle.get_tensor("texts")) == texts)
    except (SafetensorError, OSError, ValueError):
        return False


def shard_tokens(path: Path) -> int:
    """How many token vectors the shard file holds."""
    with safe_open(str(path), framework="pt") as handle:
        return int(handle.get_slice("vectors").get_shape()[0])


def _json_tensor(value) -> torch.Tensor:
    """``value`` as UTF-8 JSON in a uint8 tensor (what safetensors holds besides numbers)."""
    return torch.frombuffer(bytearray(json.dumps(value, ensure_ascii=False).encode()), dtype=torch.uint8)


def _json_of(tensor: torch.Tensor):
    return json.loads(tensor.numpy().tobytes().decode())


def atomic_write(path: Path, write) -> None:
    """Call ``write(temporary path)`` beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide the index from other users
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: setting it later would race with other threads' files


def is_index_file(path: Path) -> bool:
    """Whether ``path`` is one of the files an index writes in its folder (what ``overwrite`` removes)."""
    name = path.name
    return (name in (MANIFEST, LOCK) or bool(SHARD_FILE.match(name)) or (name.startswith(".") and name.endswith(".tmp"))
            or (name == APPROXIMATE and path.is_dir()))


@contextlib.contextmanager
def writing_lock(folder: Path):
    """Hold ``folder``'s lock while a build writes it: a second build of the same folder stops
    with a message instead of overwriting the first's shards and manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with (folder / LOCK).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            raise SettingsError(f"{folder}: another python -m train.index is writing this index; wait for it to end "
                                "(or stop it), then run again") from error
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
