"""``python -m train.search index=INDEX_DIR q="..."`` or ``queries=FILE [out=run.trec]``: search an index.

One query prints its ``k`` best documents (rank, id, score, the start of the text); a file of
queries writes a TREC run file or JSON Lines (``out=``), or the run to stdout. Exact search
ranks as ``train.evaluate`` does, so the run file of a BEIR folder's test queries reproduces its
figures; ``search.mode=approximate`` scores only faiss's candidates (docs/search.md).
"""

import logging
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lightning_modules.data.beir import is_beir_folder, read_beir, read_queries
from lightning_modules.errors import SettingsError
from lightning_modules.index import ApproximateSettings, Index
from lightning_modules.index.storage import read_manifest
from lightning_modules.model import LateInteractionModel
from train.cli import exit_on_user_error, literal_text_arguments
from train.run_files import JSONL_SUFFIXES, run_lines, run_tag, write_jsonl, write_run
from train.runtime import load_for_inference

log = logging.getLogger(__name__)

PREVIEW = 100  # characters of each document's text that a printed result shows


def load_queries(cfg: DictConfig) -> dict[str, str]:
    """Query id -> text: ``q=`` (id ``q``), or ``queries=`` (a file, or a BEIR folder's queries, those
    judged in ``split`` when given)."""
    if (cfg.q is None) == (cfg.queries is None):
        raise SettingsError('give one query (q="...") or a file of queries (queries=FILE), not both and not neither')
    if cfg.q is not None:
        if not str(cfg.q).strip():
            raise SettingsError("q= is empty; give the text to search for")
        return {"q": str(cfg.q)}
    if cfg.split is not None:
        if not is_beir_folder(cfg.queries):
            raise SettingsError(f"split={cfg.split} takes the queries judged in qrels/<split> of a BEIR folder; "
                                f"queries={cfg.queries} is not one")
        data = read_beir(str(cfg.queries), [str(cfg.split)])
        return {q: data.queries[q] for q in sorted(data.judgements[str(cfg.split)].by_query)}
    return read_queries(str(cfg.queries))


def load_model(cfg: DictConfig) -> LateInteractionModel:
    """``model=``, else the model that built the index, at ``precision=``."""
    source = cfg.model
    if source is None:
        source = read_manifest(Path(cfg.index).expanduser()).model.get("path")
        if source is None:
            raise SettingsError(f"{cfg.index} does not record the model that built it (it was saved from Python "
                                "without model_path=); give it with model=")
        log.info("Model: %s (the one that built the index)", source)
    return load_for_inference(source, cfg.precision)[0]


def print_results(index: Index, ids: list[str], scores: list[float]) -> None:
    width = max([len(i) for i in ids] + [2])
    print(f"{'rank':>4}  {'id':<{width}}  {'score':>7}  text")
    for rank, (doc, score) in enumerate(zip(ids, scores), 1):
        text = " ".join(index.texts[index.position[doc]].split())
        print(f"{rank:>4}  {doc:<{width}}  {score:>7.4f}  {text[:PREVIEW]}{'...' if len(text) > PREVIEW else ''}")


@hydra.main(version_base="1.3", config_path="../conf/tools", config_name="search")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    queries = load_queries(cfg)
    settings = cfg.search
    approximate = ApproximateSettings(**{key: value for key, value in settings.items() if key != "mode"})
    model = load_model(cfg)
    start = time.perf_counter()
    index = Index.load(cfg.index, model)
    log.info("Index: %d documents, %d token vectors (%.1f s to read)", len(index),
             sum(len(v) for v in index.vectors), time.perf_counter() - start)
    query_ids = list(queries)
    exclude = query_ids if cfg.exclude_query_id and cfg.q is None else None
    start = time.perf_counter()
    found = index.search([queries[q] for q in query_ids], k=int(cfg.k), mode=str(settings.mode), exclude=exclude,
                         approximate=approximate, batch_size=int(cfg.batch_size))
    seconds = time.perf_counter() - start
    log.info("%d queries searched (%s) in %.2f s: %.1f ms a query", len(query_ids), settings.mode, seconds,
             1000 * seconds / max(len(query_ids), 1))
    ranking = {q: list(zip(ids, scores)) for q, ids, scores in zip(query_ids, found.ids, found.scores)}
    tag = str(cfg.tag) if cfg.tag else run_tag(str(cfg.index))
    if cfg.q is not None:
        print_results(index, found.ids[0], found.scores[0])
    if cfg.out is None:
        if cfg.q is None:
            sys.stdout.writelines(run_lines(ranking, tag))
    elif Path(cfg.out).suffix.lower() in JSONL_SUFFIXES:
        write_jsonl(Path(cfg.out), ranking, queries)
        print(f"Written to {cfg.out}")
    else:
        write_run(Path(cfg.out), ranking, tag)
        print(f"Written to {cfg.out}")


if __name__ == "__main__":
    sys.argv = literal_text_arguments(sys.argv, ("q",))  # any text: apostrophes, brackets, ${...}
    main()
