"""An on-disk cache of corpus encodings and rankings, shared by runs: the zero-shot line and the
first mining pass of every run on the same base model, data and lengths compute the same things.

Each entry is one safetensors file, ``<kind>-<key>.safetensors``, whose key is a digest of
everything the result depends on (``corpus.py`` builds it: the weights, the tokens, the
precision, ...) and is also written inside the file: a file renamed from another entry, a
truncated one or one from another program is ignored with a warning, never trusted. Files are
written beside their place and renamed over it, so two runs racing for the same entry both
leave a whole file and a reader never sees half of one. Past ``max_bytes`` in all, the entries
used least recently are removed. docs/usage.md, "Precision and the encoding cache", says how to
move it or turn it off.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lightning_modules.index.storage import digest

log = logging.getLogger(__name__)

# Bump when what an entry holds, or how its key is made, changes: old entries then just miss.
FORMAT_VERSION = "1"
SUFFIX = ".safetensors"
# The names of entries: eviction touches nothing else in the folder (it may hold other files).
ENTRY_NAME = re.compile(r"^(encoding|ranking)-[0-9a-f]{40}\.safetensors$")
# A temporary file older than this was left by a run that died while writing it.
STALE_TEMPORARY_S = 24 * 3600


class EncodingCache:
    """Tensors by ``(kind, key)`` in ``directory``, at most ``max_bytes`` in all.

    Args:
        directory: made on the first write.
        max_bytes: the size past which the least recently used entries go (an entry larger than
            this alone is not written).
    """

    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)

    def __repr__(self) -> str:
        return f"EncodingCache({str(self.directory)!r}, max_bytes={self.max_bytes})"

    def path(self, kind: str, key: str) -> Path:
        return self.directory / f"{kind}-{key}{SUFFIX}"

    def load(self, kind: str, key: str) -> dict[str, torch.Tensor] | None:
        """The tensors stored under ``(kind, key)``, or None: not there, or not a whole entry of this
        key (a warning says which file and why; it is removed, so the next write replaces it)."""
        path = self.path(kind, key)
        try:
            with safe_open(path, framework="pt") as entry:
                header = entry.metadata() or {}  # the key and version the file was written for
                tensors = {name: entry.get_tensor(name) for name in entry.keys()}
        except FileNotFoundError:
            return None
        except (SafetensorError, OSError, ValueError) as error:
            return self.discard(path, f"unreadable ({error})")
        if header.get("key") != key or header.get("kind") != kind or header.get("version") != FORMAT_VERSION:
            return self.discard(path, "written for another entry or by another version")
        try:
            os.utime(path)  # recently used: the last to be evicted
        except OSError:
            pass
        return tensors

    def save(self, kind: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Store ``tensors`` under ``(kind, key)`` atomically, then keep the cache within its size.
        A failure to write (a full disk, no permission) is a warning: the run goes on without."""
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if size > self.max_bytes:
            log.info("Not caching a %s of %.1f MB: larger than the cache's limit (%.1f MB)", kind, size / 2**20,
                     self.max_bytes / 2**20)
            return
        metadata = {"key": key, "kind": kind, "version": FORMAT_VERSION}
        temporary = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=f".{kind}-", suffix=".tmp")
            os.close(handle)
            save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, temporary, metadata)
            os.replace(temporary, self.path(kind, key))
            temporary = None
            self.evict()
        except (OSError, SafetensorError) as error:  # safetensors reports a full disk as its own error
            log.warning("Could not write to the encoding cache %s (%s); going on without it", self.directory, error)
        finally:
            if temporary:
                _remove(Path(temporary))

    def evict(self) -> None:
        """Remove the least recently used entries until the cache holds at most ``max_bytes``."""
        entries = []
        for path in self.directory.iterdir():
            try:
                stat = path.stat()
            except FileNotFoundError:  # removed by another run meanwhile
                continue
            if ENTRY_NAME.match(path.name):
                entries.append((stat.st_mtime, stat.st_size, path))
            elif path.name.startswith(".") and ".tmp" in path.name and time.time() - stat.st_mtime > STALE_TEMPORARY_S:
                _remove(path)  # ours (.encoding-*.tmp) or safetensors' own, left by a killed run
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            _remove(path)
            total -= size

    def discard(self, path: Path, why: str) -> None:
        """Warn that ``path`` is ignored, and why, and remove it."""
        log.warning("Ignoring the encoding cache's file %s: %s; computing it again", path, why)
        _remove(path)
        return None


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # another run's, or a read-only cache: leave it
        pass


# The cache that corpus encodings use; None (the default) caches nothing on disk. A training run
# sets it from its config (``encoding_cache``, ``paths.cache_dir``).
_active: EncodingCache | None = None


def use_cache(cache: EncodingCache | None) -> None:
    """Make ``cache`` the one that corpus encodings and rankings use (None: none)."""
    global _active
    _active = cache


def active_cache() -> EncodingCache | None:
    return _active
