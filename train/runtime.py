"""What a run computes with, set from its config before anything is built: the float precision
(``trainer.precision``, ``auto`` resolved for this machine) and the on-disk encoding cache; and
for the tools, a model loaded to infer with at their ``precision=``."""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig

from lightning_modules.evaluation.corpus import corpus_work
from lightning_modules.evaluation.encoding_cache import EncodingCache, use_cache
from lightning_modules.model import LateInteractionModel
from lightning_modules.precision import RunPrecision, resolve_precision

log = logging.getLogger(__name__)


def configure_precision(cfg: DictConfig) -> RunPrecision:
    """Resolve ``cfg.trainer.precision`` (``auto`` or a Lightning precision) for the device the run
    trains on. The config keeps what was asked (``auto``: a resumed run compares configs); the
    trainer is built with ``precision=<the returned>.training``."""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    precision = resolve_precision(cfg.trainer.get("precision", "auto"), "cuda" if on_gpu else "cpu")
    log.info("Precision: training %s, evaluation and mining %s (%s)", precision.training, precision.inference,
             precision.reason)
    return precision


def load_for_inference(source: str, precision: str = "auto",
                       setting: str = "model") -> tuple[LateInteractionModel, RunPrecision]:
    """The model at ``source`` (``LateInteractionModel.load``) in eval mode, its inference precision
    resolved from a tool's ``precision=`` for its device."""
    model = LateInteractionModel.load(source, setting=setting).eval()
    resolved = resolve_precision(precision, next(model.parameters()).device)
    model.inference_precision = resolved.inference
    return model, resolved


def configure_encoding_cache(cfg: DictConfig) -> EncodingCache | None:
    """The run's encoding cache (``encoding_cache``, ``paths.cache_dir``), made the active one; None
    when it is off. Also starts the count of corpus passes (``corpus_work``) from zero."""
    corpus_work.reset()
    settings = cfg.get("encoding_cache") or {}
    cache = None
    if settings.get("enabled", False):
        cache = EncodingCache(cfg.paths.cache_dir, int(float(settings.get("max_size_gb", 20)) * 2**30))
        log.info("Encoding cache: %s (at most %s GB; encoding_cache.enabled=false turns it off)",
                 cache.directory, settings.get("max_size_gb"))
    use_cache(cache)
    return cache
