"""``python -m train.evaluate model=DIR tasks=[...]``: STS and retrieval evaluation with MaxSim; a table and JSON.

A task that is a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/``) or ``BeIR/<name>``
is a retrieval task (nDCG@10, MRR@10, Recall@10, Recall@100 over its whole corpus); any other is
an STS task (Spearman, Pearson).
"""

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lightning_modules.evaluation import evaluate_beir
from lightning_modules.evaluation.sts import evaluate_sts
from lightning_modules.precision import resolve_precision
from lightning_modules.model import LateInteractionModel
from train.cli import exit_on_user_error
from train.tasks import is_retrieval_task, resolve_sts_task


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
    tasks = OmegaConf.to_container(cfg.tasks) if OmegaConf.is_list(cfg.tasks) else [cfg.tasks]
    tasks = [str(t) for t in tasks]
    model = LateInteractionModel.load(cfg.model, setting="model").eval()
    device = next(model.parameters()).device
    model.inference_precision = resolve_precision(cfg.precision, device).inference
    for setting in ("max_length", "query_max_length"):  # the model's own unless told
        if cfg.get(setting) is not None:
            setattr(model.text_settings, setting, int(cfg[setting]))
    sts_tables = dict(resolve_sts_task(t, cfg.split) for t in tasks if not is_retrieval_task(t))
    evaluation = evaluate_sts(model, sts_tables, cfg.batch_size) if sts_tables else {}
    retrieval = {Path(t).name or t: evaluate_beir(model, t, cfg.split, cfg.batch_size)
                 for t in tasks if is_retrieval_task(t)}
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


if __name__ == "__main__":
    main()
