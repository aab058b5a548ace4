"""How a model is saved and read back: the export directory and training checkpoints.

This module handles files only and builds no model itself (``LateInteractionModel.load``
assembles one from what ``read_export`` and ``read_checkpoint`` return), so the model
imports it and not the reverse. Reading never imports Lightning: a checkpoint is read
with ``torch.load(weights_only=True)``.

The layout is PyLate's (which sentence-transformers >= 6 ``MultiVectorEncoder`` also reads)::

    DIR/config.json, model.safetensors      the backbone (Hugging Face)
    DIR/tokenizer.json, ...                  its tokenizer
    DIR/sentence_bert_config.json            max_seq_length
    DIR/modules.json                         [Transformer, Dense]
    DIR/1_Dense/config.json, model.safetensors   the projection (identity when there is none)
    DIR/config_sentence_transformers.json    similarity_fn_name "MaxSim" and PyLate's keys
    DIR/maxsim_lightning.json                our settings: MaxSim direction, reduction, pooled weight, token skipping
    DIR/README.md                            the model card

Weights are written as safetensors only. The directory is written under a temporary
name beside ``DIR`` and renamed at the end, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import string
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lightning_modules.data.formats import HUB_ID
from lightning_modules.encoder import EncoderOptions, TokenEncoder
from lightning_modules.errors import ExportError, ModelLoadError
from lightning_modules.model.card import model_card
from lightning_modules.model.settings import TextSettings, text_settings_from
from lightning_modules.tokenization import quiet_transformers

OUR_CONFIG = "maxsim_lightning.json"
FORMAT_VERSION = 1
DENSE_DIR = "1_Dense"
# In-batch engine backends that run only on a GPU with their package: a checkpoint that saved
# one loads with auto (see read_checkpoint).
GPU_BACKENDS = ("triton", "late-interaction-kernels")

log = logging.getLogger(__name__)


def write_export(
    model,
    out_dir: str | Path,
    card: dict | None = None,
    overwrite: bool = False,
    onnx: bool = False,
) -> Path:
    """Write ``model`` (a ``LateInteractionModel``) to ``out_dir`` (see the module docstring). Returns the directory.

    ``card``: what the model card reports: ``base_model``, ``data``, ``metrics``
    (a dict), ``config`` (YAML text); every key optional.
    ``onnx``: also write ``onnx/model.onnx`` (see ``lightning_modules.model.onnx``).

    Raises:
        ExportError: ``out_dir`` exists and ``overwrite`` is False.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists; choose another folder or pass overwrite=true")
    if out_dir.exists() and not (out_dir / OUR_CONFIG).is_file():
        # overwrite replaces an earlier export, never an arbitrary folder or file (a run folder, say).
        raise ExportError(f"{out_dir} exists and is not an earlier export (no {OUR_CONFIG}); refusing to replace it")
    if model.pooled_weight:
        log.warning("%s: this model scores (1 - %g) * MaxSim + %g * the cosine of mean token vectors; PyLate and "
                    "sentence-transformers load its weights but score with MaxSim alone, so their scores differ from "
                    "its own (the model card says so); use maxsim-lightning's score/rank", out_dir,
                    model.pooled_weight, model.pooled_weight)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        _write(model, staging, card or {})
        if onnx:
            from lightning_modules.model.onnx import export_onnx  # lazily: needs onnx and onnxruntime

            export_onnx(model, staging / "onnx" / "model.onnx")
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; an export is meant to be shared
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _write(model, folder: Path, card: dict) -> None:
    encoder, settings = model.encoder, model.text_settings
    with quiet_transformers():  # no progress bar over a single shard
        encoder.backbone.save_pretrained(folder, safe_serialization=True)
        encoder.tokenizer.save_pretrained(folder)
    hidden = encoder.backbone.config.hidden_size
    weight = encoder.projection.weight if encoder.projection is not None else torch.eye(hidden)
    (folder / DENSE_DIR).mkdir()
    save_file({"linear.weight": weight.detach().float().cpu().contiguous()}, folder / DENSE_DIR / "model.safetensors")
    _write_json(folder / DENSE_DIR / "config.json", {
        "in_features": hidden, "out_features": int(weight.shape[0]), "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity", "use_residual": False,
    })
    _write_json(folder / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": DENSE_DIR, "type": "pylate.models.Dense.Dense"},
    ])
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": settings.max_length, "do_lower_case": False})
    asymmetric = settings.roles == "asymmetric"
    _write_json(folder / "config_sentence_transformers.json", {
        "model_type": "ColBERT",
        "prompts": {},
        "default_prompt_name": None,
        "similarity_fn_name": "MaxSim",
        # PyLate inserts a prefix token after [CLS]; "" means none (our symmetric default).
        "query_prefix": (settings.query_marker or "") if asymmetric else "",
        "document_prefix": (settings.document_marker or "") if asymmetric else "",
        "query_length": settings.query_max_length if asymmetric else settings.max_length,
        "document_length": settings.max_length,
        "attend_to_expansion_tokens": False,
        # PyLate masks these in documents only; ours, when on, on both sides.
        "skiplist_words": list(string.punctuation) if encoder.options.skip_punctuation else [],
        "do_query_expansion": False,
    })
    _write_json(folder / OUR_CONFIG, {
        "format_version": FORMAT_VERSION,
        "direction": model.direction,
        "reduction": model.reduction,
        "temperature": model.temperature,
        "pooled_weight": model.pooled_weight,
        "projection": encoder.projection is not None,
        "skip_special_tokens": encoder.options.skip_special_tokens,
        "skip_punctuation": encoder.options.skip_punctuation,
        "text": settings.as_dict(),
    })
    (folder / "README.md").write_text(model_card(model, card), encoding="utf-8")


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def source_kind(path: str | Path, setting: str | None = None) -> str:
    """What ``path`` holds: ``"export"`` (a folder written by ``python -m train.export``),
    ``"checkpoint"`` (a file: a training checkpoint) or ``"encoder"`` (any other folder, or a hub
    id: a plain Hugging Face encoder); a ``ModelLoadError`` that says what was expected when it is
    none of them (a local path that does not exist), naming the option ``setting`` that gave it."""
    local = Path(path).expanduser()
    named = f"{setting}={path}" if setting else str(local.resolve())
    if local.is_file():
        return "checkpoint"
    if local.is_dir():
        if (local / OUR_CONFIG).is_file():
            return "export"
        if (local / "config.json").is_file():
            return "encoder"
        raise ModelLoadError(f"{named} is not a maxsim-lightning export (it has no {OUR_CONFIG}) nor a Hugging Face "
                             "encoder (no config.json); give a folder written by python -m train.export (or a run's "
                             "model/ folder), a .ckpt file of a training run, or an encoder's folder or hub id")
    if HUB_ID.match(str(path)):
        return "encoder"
    raise ModelLoadError(f"{named}: no such folder or file (working directory {Path.cwd()}); give a folder written "
                         "by python -m train.export (or a run's model/ folder), a .ckpt file of a training run, or a "
                         "Hugging Face encoder (a folder or a hub id)")


def read_export(path: Path) -> tuple[TokenEncoder, dict]:
    """The encoder of an export folder (projection included) and the rest of the model's arguments:
    ``direction``, ``reduction``, ``temperature``, ``pooled_weight``, ``text_settings``."""
    config = json.loads((path / OUR_CONFIG).read_text(encoding="utf-8"))
    weight = None
    if config["projection"]:
        try:
            weight = load_file(path / DENSE_DIR / "model.safetensors")["linear.weight"]
        except (OSError, SafetensorError, KeyError) as error:
            raise ModelLoadError(f"{path / DENSE_DIR / 'model.safetensors'}: unreadable projection weights "
                                 f"({error.__class__.__name__}: {error}); re-export the model") from error
    encoder = TokenEncoder(EncoderOptions(
        str(path), projection_dim=None if weight is None else weight.shape[0],
        skip_special_tokens=config["skip_special_tokens"], skip_punctuation=config["skip_punctuation"]))
    if weight is not None:
        encoder.projection.weight.data.copy_(weight)
    return encoder, {
        "direction": config["direction"], "reduction": config["reduction"], "temperature": config["temperature"],
        "pooled_weight": config.get("pooled_weight", 0.0),  # exports before the hybrid score: MaxSim alone
        "text_settings": TextSettings(**config["text"]),
    }


def read_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor], TextSettings]:
    """A training checkpoint's model hyperparameters (every ``MaxSimModule`` argument), the weights of
    its model (``state_dict`` keys without the ``model.`` prefix) and its text settings.

    A checkpoint keeps the in-batch engine backend it was trained with, except a GPU-only one
    (``GPU_BACKENDS``), which loads as ``auto``: that takes the fused kernels on a GPU and
    still scores on a machine without one (set ``model.backend`` to choose).
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle, zip and EOF errors all mean the same here
        raise ModelLoadError(f"{path}: not a readable checkpoint ({error.__class__.__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''})") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("hyper_parameters", {}).get("model_name_or_path") is None:
        raise ModelLoadError(f"{path}: not a maxsim-lightning checkpoint (no MaxSimModule hyperparameters)")
    hparams = dict(checkpoint["hyper_parameters"])
    if "maxsim_backend" in hparams:  # saved before the engine's settings moved under model.maxsim
        hparams["maxsim"] = {"backend": hparams.pop("maxsim_backend")}
    engine = dict(hparams.get("maxsim") or {})
    if engine.get("backend") in GPU_BACKENDS:
        # How the training run computed, on its GPU: auto takes the fused kernels wherever a GPU
        # is, and loads (and scores) on a machine without one or without the package.
        log.info("%s: trained with model.maxsim.backend=%s; loaded with auto", path, engine["backend"])
        hparams["maxsim"] = {**engine, "backend": "auto"}
    weights = {key.removeprefix("model."): value for key, value in checkpoint.get("state_dict", {}).items()
               if key.startswith("model.")}
    return hparams, weights, text_settings_from(checkpoint.get("datamodule_hyper_parameters", {}))
