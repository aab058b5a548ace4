"""The run's ``results.json`` and the summary table printed at the end of training."""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import pytorch_lightning as pl
import torch

from lightning_modules.callbacks.nonfinite import NonFiniteGuard
from lightning_modules.callbacks.training_stats import TrainingStats, peak_memory_mb

PACKAGES = ("maxsim-lightning", "torch", "pytorch-lightning", "transformers", "torchmetrics", "hydra-core")


def build_results(
    trainer: pl.Trainer,
    final_test: dict,
    wall_time: float,
    monitor: str = "val/spearman",
    data_report: dict | None = None,
    precision: dict | None = None,
    corpus_work: dict | None = None,
) -> dict:
    """Gather the metrics and costs of a run into one plain dict.

    ``val/*`` are those of the best validation by ``monitor`` (the checkpoint that
    was tested); ``zero_shot`` holds the same metrics for the model before training
    (``TrainingStats`` records them, and keeps them across a resume); ``data`` what was read,
    kept and dropped (when the DataModule reports it); ``nonfinite_steps`` the optimizer steps
    skipped for a non-finite loss or gradients; ``resumed_at_steps`` where the run was resumed;
    ``precision`` what training and evaluation computed in (``lightning_modules.precision``);
    ``corpus_passes`` the corpus encodings and rankings computed and taken from the encoding cache
    (``lightning_modules.evaluation.corpus.CorpusWork``; zeros for a run without a corpus).
    """
    stats = next((c for c in trainer.callbacks if isinstance(c, TrainingStats)), None)
    guard = next((c for c in trainer.callbacks if isinstance(c, NonFiniteGuard)), None)
    history = stats.history if stats else []
    zero_shot = stats.zero_shot if stats else {}
    best_val = max(history, key=lambda h: h.get(monitor, float("-inf")), default={})
    results = {
        "zero_shot": {k: _round(k, v) for k, v in zero_shot.items()},
        "monitor": monitor,
        **{k: _round(k, v) for k, v in best_val.items() if k.startswith("val/")},
        **{k: _round(k, v) for k, v in final_test.items()},
        "best_epoch": best_val.get("epoch"),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "wall_time_s": round(wall_time, 1),
        "train_time_s": round(stats.train_seconds, 1) if stats else None,
        # Every process sees its own shard: the run's throughput is the sum over processes.
        "train_pairs_per_second": round(stats.pairs_per_second * trainer.world_size, 2) if stats else None,
        "peak_memory_mb": round(peak_memory_mb(trainer.strategy.root_device), 1),
        "best_checkpoint": trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None,
        "nonfinite_steps": guard.skipped if guard else None,
        "precision": precision,
        "corpus_passes": corpus_work,
        "resumed_at_steps": stats.resumed_at if stats else [],
        "validation_history": history,
        "versions": {"python": platform.python_version(), **_versions()},
    }
    if data_report is not None:
        results["data"] = data_report
    return results


def reported_metrics(results: dict) -> dict:
    """The validation and test figures of ``results`` (what a model card reports)."""
    return {k: v for k, v in results.items() if k.startswith(("val/", "test/"))}


def training_data_source(data_settings) -> str | None:
    """What a run trained and was measured on, by its DataModule's settings (a config's ``data``
    or a checkpoint's DataModule hyperparameters), for the model card: a BEIR set's name and
    folder (or hub id) with its splits; the pairs files; the STS-B folder or hub id; a distillation's
    scores and evaluation folder. None when
    the settings name no data."""
    settings = dict(data_settings or {})
    if settings.get("scores"):  # DistillationDataModule
        test = f", tested on its `{settings['test_split']}` queries" if settings.get("test_split") else ""
        return (f"distilled from the teacher scores {settings['scores']} (queries {settings.get('queries')}, corpus "
                f"{settings.get('corpus')}, {settings.get('n_ways')} candidates a query in each batch); validated on "
                f"the `{settings.get('validation_split')}` queries of {settings.get('eval_path')}{test}")
    if settings.get("path"):  # BeirDataModule
        return _beir_source(settings)
    if settings.get("train"):  # PairsDataModule
        return _pairs_source(settings)
    if settings.get("data_dir") or settings.get("hub_id"):  # STSBDataModule: the folder, else the hub
        folder, hub = settings.get("data_dir"), settings.get("hub_id")
        if folder and (Path(str(folder)).expanduser().is_dir() or not hub):
            return f"{folder} (STS-B: trained on its train split)"
        return f"{hub} (STS-B from the hub" + (f", as there is no folder {folder}" if folder else "") \
            + ": trained on its train split)"
    return None


def _beir_source(settings: dict) -> str:
    path = str(settings["path"])
    folder = Path(path).expanduser()
    where = str(folder.resolve()) if folder.is_dir() else path
    name = Path(path.rstrip("/")).name or path
    train = settings.get("train_split") or "train"
    if settings.get("validation_split"):
        validation = f"validated on its `{settings['validation_split']}` queries"
    else:
        share = settings.get("validation_fraction")
        validation = (f"validated on a seeded {share:.0%} of those queries held out"
                      if isinstance(share, (int, float)) else "validated on a seeded share of those queries held out")
    test = f"tested on its `{settings['test_split']}` queries" if settings.get("test_split") else "no test split"
    text = (f"{name}, a BEIR retrieval set ({where}): trained on its `{train}` queries, {validation}, {test}, "
            "each query ranked against the corpus")
    limits = [f"{settings[key]} {what}" for key, what in (
        ("limit_train_queries", "training queries"), ("limit_eval_queries", "queries per evaluation split"),
        ("limit_corpus", "documents")) if settings.get(key)]
    if limits:
        text += f"; a seeded subset ({', '.join(limits)}): its figures are not the whole set's"
    return text


def _pairs_source(settings: dict) -> str:
    def named(source) -> str:  # a file, a hub id, or {path, name, split}
        if isinstance(source, Mapping):
            extra = [f"{k} {source[k]}" for k in ("name", "split") if source.get(k)]
            return str(source.get("path")) + (f" ({', '.join(extra)})" if extra else "")
        return str(source)

    parts = [f"{named(settings['train'])} (training pairs)"]
    if settings.get("validation"):
        parts.append(f"{named(settings['validation'])} (validation)")
    else:
        parts.append("validation: a seeded share of the training pairs held out")
    if settings.get("test"):
        parts.append(f"{named(settings['test'])} (test)")
    return "; ".join(parts)


def card_from_checkpoint(path: str | Path) -> dict:
    """What an export's model card can say about the run that wrote checkpoint ``path``: its
    base model, training data and metrics, and its resolved config, as the run's own export
    (``export: true``) says them.

    Metrics come from the run's ``results.json`` (``<run>/checkpoints/<name>.ckpt`` sits two
    levels below it) when that names this checkpoint as the one it tested; else from the
    checkpoint itself: the score that made ``ModelCheckpoint`` keep it. An unreadable
    checkpoint gives ``{}`` (loading the model says why).
    """
    path = Path(path).resolve()
    try:  # mmap: only the small records are read, not the weights
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - the model's own loading reports a bad file
        return {}
    card = {}
    model = checkpoint.get("hyper_parameters") or {}
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    if model.get("model_name_or_path"):
        card["base_model"] = model["model_name_or_path"]
    if source := training_data_source(data):
        card["data"] = source
    run = path.parent.parent
    results = json.loads((run / "results.json").read_text()) if (run / "results.json").is_file() else {}
    if results.get("best_checkpoint") and Path(results["best_checkpoint"]).resolve() == path:
        card["metrics"] = reported_metrics(results)
    else:
        kept_for = [state for state in (checkpoint.get("callbacks") or {}).values()
                    if isinstance(state, dict) and state.get("monitor") and state.get("best_model_score") is not None]
        card["metrics"] = {state["monitor"]: round(float(state["best_model_score"]), 2) for state in kept_for}
    if (run / "config_resolved.yaml").is_file():
        card["config"] = (run / "config_resolved.yaml").read_text()
    return card


def _round(name: str, value) -> float:
    # Metrics are x100: two decimals. A decision threshold is a raw similarity: keep more.
    return round(float(value), 4 if name.endswith("threshold") else 2)


def write_results(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")


def format_summary(results: dict) -> str:
    """A short table: each metric before and after training."""
    lines = ["", f"{'metric':<24}{'zero-shot':>12}{'trained':>12}", "-" * 48]
    # Validation then test, each in the order logged (spearman before pearson, auc first).
    names = list(results) + [k for k in results["zero_shot"] if k not in results]
    metrics = [k for k in names if k.startswith("val/")] + [k for k in names if k.startswith("test/")]
    for metric in metrics:
        before = results["zero_shot"].get(metric)
        after = results.get(metric)
        lines.append(f"{metric:<24}{_fmt(metric, before):>12}{_fmt(metric, after):>12}")
    lines.append("-" * 48)
    lines.append(
        f"epochs {results['epochs']}, wall time {results['wall_time_s']} s, "
        f"{results['train_pairs_per_second']} training pairs/s, peak memory {results['peak_memory_mb']} MB"
    )
    if results.get("precision"):
        p = results["precision"]
        lines.append(f"precision: training {p['training']}, evaluation {p['inference']} ({p['reason']})")
    work = results.get("corpus_passes") or {}
    if work.get("passes_encoded") or work.get("passes_from_cache"):
        lines.append(f"corpus passes: {work['passes_encoded']} encoded, {work['passes_from_cache']} from the cache; "
                     f"queries ranked: {work['queries_scored']} scored, {work['queries_from_cache']} from the cache")
    # What the data said about these figures (a validation split too small to trust, ...).
    lines += [f"warning: {warning}" for warning in (results.get("data") or {}).get("warnings", [])]
    return "\n".join(lines)


def _fmt(metric: str, value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if metric.endswith("threshold") else f"{value:.2f}"


def _versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
