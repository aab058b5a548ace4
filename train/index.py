"""``python -m train.index model=DIR corpus=PATH out=INDEX_DIR``: encode a corpus once into an index on disk.

The same command again continues a build that was killed (from its last finished shard); another
``corpus=`` adds the documents the index lacks. ``python -m train.search`` searches the result.
"""

import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lightning_modules.errors import SettingsError
from lightning_modules.index import write_index
from lightning_modules.index.index import as_corpus, prepare_folder
from train.cli import exit_on_user_error
from train.runtime import load_for_inference

log = logging.getLogger(__name__)


def model_path(source: str) -> str:
    """Where the model can be loaded from again: an absolute path for a local one, else the hub id."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


@hydra.main(version_base="1.3", config_path="../conf/tools", config_name="index")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out).expanduser()
    prepare_folder(out, overwrite=False)  # a folder of other files is refused before the model loads
    corpus, has_ids = as_corpus(str(cfg.corpus))
    log.info("%s: %d documents", corpus.source, len(corpus.ids))
    if corpus.empty:
        log.warning("%s: %d documents have neither title nor text; indexed as empty texts", corpus.source,
                    len(corpus.empty))
    model, precision = load_for_inference(cfg.model, cfg.precision)
    log.info("Encoding in %s (%s)", precision.inference, precision.reason)
    if int(cfg.batch_size) < 1:
        raise SettingsError(f"batch_size={cfg.batch_size}: must be at least 1")
    if cfg.overwrite:  # only once the corpus and the model have loaded: a typo must not cost the old index
        prepare_folder(out, overwrite=True)
    start = time.perf_counter()
    report = write_index(model, corpus, out, has_ids=has_ids, shard_size=int(cfg.shard_size), dtype=str(cfg.dtype),
                         batch_size=int(cfg.batch_size), model_path=model_path(str(cfg.model)))
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.glob("shard-*.safetensors"))
    print(f"{out}: {report.documents} documents, {report.tokens} token vectors in {report.shards} shards, "
          f"{size / 2**20:.1f} MiB ({size / max(report.documents, 1) / 1024:.1f} KiB a document)")
    print(f"this run: {report.added} documents encoded in {seconds:.1f} s, {report.adopted} kept from an interrupted "
          f"run, {report.held} already in the index")


if __name__ == "__main__":
    main()
