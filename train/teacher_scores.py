"""``python -m train.teacher_scores model=DIR queries=FILE corpus=FILE out=scores.jsonl k=32``: a teacher's scores.

Ranks each query against the whole corpus with the teacher's exact MaxSim search (``Index.search``,
as ``train.search`` and ``train.evaluate`` rank) and writes, for each query, its ``k`` best documents
with their scores in PyLate's layout (``{"query_id", "document_ids", "scores"}``), the scores file of
``python -m train +experiment=distill`` (``lightning_modules.data.distillation``).
"""

import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lightning_modules.data.beir import is_beir_folder, read_beir, read_queries
from lightning_modules.data.distillation import write_teacher_scores
from lightning_modules.errors import SettingsError
from lightning_modules.index import Index
from train.cli import exit_on_user_error
from train.runtime import load_for_inference

log = logging.getLogger(__name__)


def load_queries(source: str, split: str | None) -> dict[str, str]:
    """Query id -> text of a queries file, or of a BEIR folder (those judged in ``split`` when given)."""
    if split is None:
        return read_queries(source)
    if not is_beir_folder(source):
        raise SettingsError(f"split={split} takes the queries judged in qrels/<split> of a BEIR folder; "
                            f"queries={source} is not one")
    data = read_beir(source, [split])
    return {q: data.queries[q] for q in sorted(data.judgements[split].by_query)}


@hydra.main(version_base="1.3", config_path="../conf/tools", config_name="teacher_scores")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    if (cfg.corpus is None) == (cfg.index is None):
        raise SettingsError("give the documents as corpus=FILE (encoded now) or index=FOLDER (built by "
                            "python -m train.index with this model), one of them")
    if int(cfg.k) < 1 or int(cfg.batch_size) < 1:
        raise SettingsError(f"k={cfg.k} and batch_size={cfg.batch_size} must be at least 1")
    queries = load_queries(str(cfg.queries), None if cfg.split is None else str(cfg.split))
    model, precision = load_for_inference(cfg.model, cfg.precision)
    log.info("Teacher %s in %s (%s); %d queries", cfg.model, precision.inference, precision.reason, len(queries))
    start = time.perf_counter()
    if cfg.index is not None:
        index = Index.load(cfg.index, model)
    else:
        index = model.index(str(cfg.corpus), batch_size=int(cfg.batch_size))
    log.info("Index: %d documents (%.1f s)", len(index), time.perf_counter() - start)
    if int(cfg.k) > len(index):
        raise SettingsError(f"k={cfg.k}: the corpus holds only {len(index)} documents")
    query_ids = list(queries)
    start = time.perf_counter()
    found = index.search([queries[q] for q in query_ids], k=int(cfg.k), batch_size=int(cfg.batch_size),
                         exclude=query_ids if cfg.exclude_query_id else None)
    log.info("%d queries ranked in %.1f s", len(query_ids), time.perf_counter() - start)
    rows = list(zip(query_ids, found.ids, found.scores))
    short = sum(len(ids) < int(cfg.k) for _, ids, _ in rows)
    if short:  # only with exclude_query_id, when the query's own document was among the corpus's last
        log.warning("%d queries have fewer than k=%d candidates", short, int(cfg.k))
    path = write_teacher_scores(Path(cfg.out), rows)
    print(f"Written to {path}: {len(rows)} queries, {int(cfg.k)} scored candidates each")


if __name__ == "__main__":
    main()
