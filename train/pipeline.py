"""``run(cfg)``: build the objects a config describes, train, test, and record the results."""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only

from lightning_modules.callbacks import PlainProgress, TrainingInterrupted
from lightning_modules.model import LateInteractionModel, text_settings_from
from lightning_modules.progress import writes_to_terminal
from lightning_modules.results import (
    build_results, format_summary, reported_metrics, training_data_source, write_results,
)
from train.cli import run_log
from train.resume import check_same_run, last_checkpoint, resume_command, saved_wandb_run_id
from train.settings import check_settings

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Train and evaluate as ``cfg`` says; return the results written to ``results.json``."""
    start = time.perf_counter()
    # Settings that cannot work fail here, in seconds, before any data or model is read.
    check_settings(cfg)
    output_dir = Path(cfg.paths.output_dir)
    resuming = bool(cfg.get("resume"))
    if resuming:  # the folder was checked when Hydra chose it (train/resolvers.py: run_dir)
        check_same_run(cfg, output_dir)
        _continue_wandb_run(cfg, output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:  # DDP re-runs this script once per process
        OmegaConf.save(cfg, output_dir / "config_resolved.yaml", resolve=True)
        log.info("If this run stops, continue it with: %s", _resume_command(output_dir))

    datamodule = hydra.utils.instantiate(cfg.data)
    # Read and check the data before loading the model: bad input fails in seconds, and
    # the data's evaluator decides what "best" means (Spearman, ROC-AUC or MRR@10).
    datamodule.setup("fit")
    if cfg.optimized_metric == "auto":
        with open_dict(cfg):
            cfg.optimized_metric = f"val/{datamodule.evaluator.primary_metric}"
        log.info("Best checkpoint by %s", cfg.optimized_metric)
    module = hydra.utils.instantiate(cfg.model)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    if cfg.trainer.get("enable_progress_bar", True) and not writes_to_terminal():
        callbacks.append(PlainProgress())  # a log file gets plain lines, not a redrawn bar
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    run_test = bool(cfg.get("test"))
    if run_test and not getattr(datamodule, "has_test", True):
        log.info("No test data (data.test is not set): skipping the test passes")
        run_test = False
    try:
        if cfg.get("zero_shot") and not resuming:  # a resumed run has its zero-shot line in the checkpoint
            log.info("Zero-shot evaluation of the untrained model")
            trainer.validate(module, datamodule=datamodule)
            if run_test:
                trainer.test(module, datamodule=datamodule)
        try:
            trainer.fit(module, datamodule=datamodule, weights_only=True,
                        ckpt_path=str(last_checkpoint(output_dir)) if resuming else None)
        except TrainingInterrupted as stop:
            if trainer.is_global_zero:
                print(f"{stop}\nContinue this run with:\n  {_resume_command(output_dir)}", file=sys.stderr, flush=True)
                run_log.info("%s; continue with: %s", stop, _resume_command(output_dir))
            sys.exit(128 + signal.Signals[stop.signal_name].value)  # the shell's convention for a signal
        final = {}
        if run_test:
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            if not best:
                log.warning("No best checkpoint was saved (fast_dev_run or no validation); testing the last weights")
            final = trainer.test(module, datamodule=datamodule, ckpt_path=best or None)[0]
        results = build_results(
            trainer, final, wall_time=time.perf_counter() - start, monitor=cfg.optimized_metric,
            data_report=datamodule.report_dict() if hasattr(datamodule, "report_dict") else None,
        )
    finally:
        if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
            import wandb  # lazily: W&B is opt-in

            wandb.finish()  # always close the run, or sweep jobs share one

    if trainer.is_global_zero:
        if cfg.get("export"):
            export_run_model(cfg, trainer, module, datamodule, results, output_dir / "model")
        write_results(results, output_dir / "results.json")
        summary = format_summary(results)
        print(summary)
        run_log.info("%s", summary)
        log.info("Results written to %s", output_dir / "results.json")
    return results


def _resume_command(run_folder: Path) -> str:
    from hydra.core.hydra_config import HydraConfig

    return resume_command(run_folder, list(HydraConfig.get().overrides.task))


def _continue_wandb_run(cfg: DictConfig, run_folder: Path) -> None:
    """Log a resumed run into the W&B run it started, not a new one."""
    run_id = saved_wandb_run_id(run_folder)
    wandb = (cfg.get("logger") or {}).get("wandb")
    if run_id and wandb:
        with open_dict(cfg):
            wandb.id = run_id
            wandb.resume = "allow"


def export_run_model(cfg: DictConfig, trainer, module, datamodule, results: dict, out_dir: Path) -> None:
    """Export the best checkpoint (or, without one, the final weights) with a model card; record where."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        model = LateInteractionModel.load(best)
    else:
        model = module.model
        model.text_settings = text_settings_from(dict(datamodule.hparams))
    data = training_data_source(cfg.data)
    card = {
        "base_model": cfg.model.model_name_or_path,
        "data": f"{cfg.data._target_.rsplit('.', 1)[-1]} from {data}",
        "metrics": reported_metrics(results),
        "config": OmegaConf.to_yaml(cfg, resolve=True),
    }
    results["exported_model"] = str(model.eval().save_pretrained(out_dir, card=card, overwrite=True))
    log.info("Model exported to %s (loads in PyLate and sentence-transformers)", out_dir)
