"""``run(cfg)``: build the objects a config describes, train, test, and record the results."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only

from lightning_modules.model import LateInteractionModel, text_settings_from
from lightning_modules.results import (
    build_results, format_summary, reported_metrics, training_data_source, write_results,
)
from train.cli import run_log

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Train and evaluate as ``cfg`` says; return the results written to ``results.json``."""
    start = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:  # DDP re-runs this script once per process
        OmegaConf.save(cfg, output_dir / "config_resolved.yaml", resolve=True)

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
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    run_test = bool(cfg.get("test"))
    if run_test and not getattr(datamodule, "has_test", True):
        log.info("No test data (data.test is not set): skipping the test passes")
        run_test = False
    try:
        zero_shot = {}
        if cfg.get("zero_shot"):
            log.info("Zero-shot evaluation of the untrained model")
            zero_shot.update(trainer.validate(module, datamodule=datamodule)[0])
            if run_test:
                zero_shot.update(trainer.test(module, datamodule=datamodule)[0])
        trainer.fit(module, datamodule=datamodule)
        final = {}
        if run_test:
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            if not best:
                log.warning("No best checkpoint was saved (fast_dev_run or no validation); testing the last weights")
            final = trainer.test(module, datamodule=datamodule, ckpt_path=best or None)[0]
        results = build_results(
            trainer, zero_shot, final, wall_time=time.perf_counter() - start, monitor=cfg.optimized_metric,
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
