"""``run(cfg)``: build the objects a config describes, train, test, and record the results."""

from __future__ import annotations

import logging
import signal
import sys
import time
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lightning_modules.callbacks import PlainProgress, TrainingInterrupted
from lightning_modules.datamodules import LateInteractionDataModule
from lightning_modules.errors import SettingsError
from lightning_modules.evaluation.corpus import corpus_work
from lightning_modules.evaluation.encoding_cache import use_cache
from lightning_modules.model import LateInteractionModel, text_settings_from
from lightning_modules.model.card import run_command
from lightning_modules.progress import writes_to_terminal
from lightning_modules.results import (
    build_results, format_summary, reported_metrics, training_data_source, write_results,
)
from train.cli import run_log
from train.resume import checkpoint_to_resume, last_checkpoint, resume_command
from train.runtime import configure_encoding_cache, configure_precision
from train.settings import check_settings

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Train and evaluate as ``cfg`` says; return the results written to ``results.json``."""
    start = time.perf_counter()
    # Settings that cannot work fail here, in seconds, before any data or model is read.
    check_settings(cfg)
    output_dir = Path(cfg.paths.output_dir)
    # resume=RUN_FOLDER, or a SLURM job requeued into its own folder: None for a fresh run.
    resume_from = checkpoint_to_resume(cfg, output_dir)
    resuming = resume_from is not None
    if resuming:  # the run's own checkpoints are there, as they should be
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        if cfg.trainer.get("max_steps", -1) != -1:
            log.warning("trainer.max_steps is set: Lightning's step-based loop resumes a checkpoint written at "
                        "an epoch's end one epoch ahead in its count, so the rest of this run may see its "
                        "batches in another order than an uninterrupted run would (docs/usage.md)")
    pl.seed_everything(cfg.seed, workers=True)
    precision = configure_precision(cfg)
    configure_encoding_cache(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:  # DDP re-runs this script once per process
        OmegaConf.save(cfg, output_dir / "config_resolved.yaml", resolve=True)
        log.info("If this run stops, continue it with: %s", _resume_command(output_dir))

    datamodule = hydra.utils.instantiate(cfg.data)
    if not isinstance(datamodule, LateInteractionDataModule):
        raise SettingsError(f"data._target_ builds a {type(datamodule).__name__}, not a DataModule of "
                            "lightning_modules.datamodules (a subclass of LateInteractionDataModule)")
    # Read and check the data before loading the model: bad input fails in seconds, and
    # the data's evaluator decides what "best" means (Spearman, ROC-AUC or MRR@10).
    datamodule.setup("fit")
    if cfg.optimized_metric == "auto":
        with open_dict(cfg):
            cfg.optimized_metric = f"val/{datamodule.evaluator.primary_metric}"
        log.info("Best checkpoint by %s", cfg.optimized_metric)
    module = hydra.utils.instantiate(cfg.model)
    module.model.inference_precision = precision.inference
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    if cfg.trainer.get("enable_progress_bar", True) and not writes_to_terminal():
        callbacks.append(PlainProgress())  # a log file gets plain lines, not a redrawn bar
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                      precision=precision.training)

    run_test = bool(cfg.get("test"))
    if run_test and not datamodule.has_test:
        log.info("No test data (data.test is not set): skipping the test passes")
        run_test = False
    try:
        if cfg.get("zero_shot") and not resuming:  # a resumed run has its zero-shot line in the checkpoint
            log.info("Zero-shot evaluation of the untrained model")
            trainer.validate(module, datamodule=datamodule)
            if run_test:
                trainer.test(module, datamodule=datamodule)
        trainer.fit(module, datamodule=datamodule, weights_only=True, ckpt_path=str(resume_from) if resuming else None)
        final = {}
        if run_test:
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            if not best:
                log.warning("No best checkpoint was saved (fast_dev_run or no validation); testing the last weights")
            final = trainer.test(module, datamodule=datamodule, ckpt_path=best or None)[0]
        results = build_results(
            trainer, final, wall_time=time.perf_counter() - start, monitor=cfg.optimized_metric,
            data_report=datamodule.report_dict(),
            precision=precision.as_dict(), corpus_work=corpus_work.as_dict(),
        )
    except TrainingInterrupted as stop:  # a signal during training: the state is saved
        _report_stop(trainer, str(stop), output_dir)
        sys.exit(128 + signal.Signals[stop.signal_name].value)  # the shell's convention for a signal
    except SIGTERMException:  # Lightning's own stop on SIGTERM, outside training (an evaluation)
        _report_stop(trainer, "SIGTERM received: stopped", output_dir)
        sys.exit(128 + signal.SIGTERM)
    finally:
        use_cache(None)  # this run's cache: not the next one's in the same process
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


def _report_stop(trainer, what: str, run_folder: Path) -> None:
    if not trainer.is_global_zero:
        return
    if last_checkpoint(run_folder).is_file():
        advice = f"Continue this run with:\n  {_resume_command(run_folder)}"
    else:
        advice = "Nothing was saved to continue from yet (no checkpoints/last.ckpt): start the run again."
    print(f"{what}\n{advice}", file=sys.stderr, flush=True)
    run_log.info("%s; %s", what, advice.replace("\n  ", " "))


def _command_line_overrides() -> list[str]:
    """The command line's overrides; a config composed without @hydra.main (a script calling run) has none."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _resume_command(run_folder: Path) -> str:
    return resume_command(run_folder, _command_line_overrides())


def export_run_model(cfg: DictConfig, trainer, module, datamodule, results: dict, out_dir: Path) -> None:
    """Export the best checkpoint (or, without one, the final weights) with a model card; record where."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        model = LateInteractionModel.load(best)
    else:
        model = module.model
        model.text_settings = text_settings_from(dict(datamodule.hparams))
    data = OmegaConf.to_container(cfg.data, resolve=True)
    card = {
        "base_model": cfg.model.model_name_or_path,
        "data": training_data_source(data) or f"{data['_target_'].rsplit('.', 1)[-1]} (the configuration below)",
        "metrics": reported_metrics(results),
        "monitor": results.get("monitor"),
        "command": run_command(_command_line_overrides()) if HydraConfig.initialized() else None,
        "config": OmegaConf.to_yaml(cfg, resolve=True),
    }
    results["exported_model"] = str(model.eval().save_pretrained(out_dir, card=card, overwrite=True))
    log.info("Model exported to %s (loads in PyLate and sentence-transformers)", out_dir)
