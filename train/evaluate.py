"""``python -m train.evaluate model=DIR tasks=[...]``: STS and retrieval evaluation with MaxSim; a table and JSON.

A task that is a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/``) or ``BeIR/<name>``
is a retrieval task (nDCG@10, MRR@10, Recall@10, Recall@100 over its whole corpus, also per
query; ``out_run=`` writes each one's ranking as a TREC run file); any other is an STS task
(Spearman, Pearson).
"""

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lightning_modules.errors import DataError, SettingsError
from lightning_modules.evaluation import evaluate_beir
from lightning_modules.evaluation.sts import evaluate_sts
from lightning_modules.model.late_interaction import check_pooled_weight
from train.cli import exit_on_user_error
from train.run_files import run_tag, write_run
from train.runtime import load_for_inference
from train.tasks import resolve_sts_task, task_kind, task_names

log = logging.getLogger(__name__)

EXAMPLE = 'python -m train.evaluate model=<run>/model "tasks=[../shared/data/stsb,../shared/data/scifact]"'
# What each required setting gives, for the message when it is missing.
REQUIRED = {
    "model": "the model to evaluate: an export folder, a .ckpt, or a Hugging Face encoder",
    "tasks": "the tasks, a list: STS files, folders holding <split>.csv or MTEB STS names; retrieval BEIR "
             "folders (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) or BeIR/<name>",
}


def check_required(cfg: DictConfig) -> list[str]:
    """The tasks of ``cfg`` as a list of strings, once ``model=`` and a non-empty ``tasks=`` are given.

    Raises:
        SettingsError: one of them is missing, null or empty: which, what it takes, and an example.
    """
    missing = [key for key in REQUIRED if OmegaConf.is_missing(cfg, key) or cfg[key] in (None, "", [])]
    if missing:
        settings = "; ".join(f"{key}= ({REQUIRED[key]})" for key in missing)
        raise SettingsError(f"missing setting{'s' if len(missing) > 1 else ''}: {settings}. For example: {EXAMPLE}")
    return [str(t) for t in (cfg.tasks if OmegaConf.is_list(cfg.tasks) else [cfg.tasks])]


def format_sts_table(evaluation: dict) -> str:
    """A printable table: one task a line, then the mean."""
    lines = [f"{'task':<28}{'pairs':>8}{'spearman':>10}{'pearson':>10}", "-" * 56]
    for name, r in evaluation["tasks"].items():
        lines.append(f"{name:<28}{r['pairs']:>8}{r['spearman']:>10.2f}{r['pearson']:>10.2f}")
    mean = evaluation["mean"]
    lines += ["-" * 56, f"{'mean':<28}{'':>8}{mean['spearman']:>10.2f}{mean['pearson']:>10.2f}"]
    return "\n".join(lines)


def format_retrieval_table(results: dict) -> str:
    """A printable table: one retrieval task a line."""
    lines = [f"{'task':<28}{'queries':>8}{'ndcg@10':>9}{'mrr@10':>8}{'R@10':>8}{'R@100':>8}", "-" * 69]
    for name, r in results.items():
        lines.append(f"{name:<28}{r['queries']:>8}{r['ndcg@10']:>9.2f}{r['mrr@10']:>8.2f}"
                     f"{r['recall@10']:>8.2f}{r['recall@100']:>8.2f}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../conf/tools", config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    tasks = check_required(cfg)
    out_run = Path(cfg.out_run) if cfg.out_run else None
    if out_run is not None and out_run.exists() and not out_run.is_dir():  # before the work, not after
        raise SettingsError(f"out_run={out_run} is a file; out_run= names a folder, where each retrieval task's "
                            "ranking is written as <task>.trec")
    kinds = {}
    for task in tasks:
        kinds[task], why = task_kind(task, cfg.split)
        log.info("%s: %s task (%s)", task, kinds[task], why)
    sts_tasks = [t for t in tasks if kinds[t] == "STS"]
    retrieval_tasks = [t for t in tasks if kinds[t] == "retrieval"]
    sts_names, retrieval_names = task_names(sts_tasks), task_names(retrieval_tasks)
    sts_tables = {name: resolve_sts_task(t, cfg.split)[1] for name, t in zip(sts_names, sts_tasks)}
    if out_run is not None and not retrieval_tasks:
        log.warning("out_run=%s: no retrieval task among tasks=, so no run file is written", out_run)

    model, _ = load_for_inference(cfg.model, cfg.precision)
    for setting in ("max_length", "query_max_length"):  # the model's own unless told
        if cfg.get(setting) is not None:
            setattr(model.text_settings, setting, int(cfg[setting]))
    if cfg.get("pooled_weight") is not None:  # another mix than the model's own
        model.pooled_weight = check_pooled_weight(cfg.pooled_weight)
    evaluation = evaluate_sts(model, sts_tables, cfg.batch_size) if sts_tables else {}
    retrieval = {name: evaluate_beir(model, t, cfg.split, cfg.batch_size)
                 for name, t in zip(retrieval_names, retrieval_tasks)}
    rankings = {name: result.pop("ranking") for name, result in retrieval.items()}  # the run files', not the JSON's
    if out_run is not None:
        for name, result in retrieval.items():
            result["run_file"] = str(out_run / f"{name}.trec")
    if retrieval:
        evaluation["retrieval"] = retrieval
    evaluation["model"] = str(cfg.model)
    if sts_tables:
        print(format_sts_table(evaluation))
    if retrieval:
        print(format_retrieval_table(retrieval))
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(evaluation, indent=2) + "\n", encoding="utf-8")
        print(f"Written to {cfg.out}")
    if out_run is not None:
        for name, result in retrieval.items():
            write_run(Path(result["run_file"]), rankings[name], run_tag(str(cfg.model)))
            print(f"Written to {result['run_file']}")


if __name__ == "__main__":
    main()
