"""The Hydra configs: every option composes, experiments stack on top, hyperparameters stay plain."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import hydra
import pytest
import pytorch_lightning as pl
import torch
import yaml
from hydra.errors import ConfigCompositionException, InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("data", "model", "trainer", "logger", "callbacks")
OPTIONS = [(group, f.stem) for group in GROUPS for f in sorted((CONF_DIR / group).glob("*.yaml"))]
EXPERIMENTS = sorted(f.stem for f in (CONF_DIR / "experiment").glob("*.yaml"))
PLAIN_SCALARS = (str, int, float, bool, type(None))

TINY_CSV = "sentence1,sentence2,score\n" + "".join(
    f"A man plays instrument number {i}.,Someone plays instrument {i % 3}.,{i % 6}\n" for i in range(8)
)


def _is_plain(value) -> bool:
    """Only dict / list / str / int / float / bool / None, all the way down (no OmegaConf containers)."""
    if type(value) in (dict, pl.utilities.parsing.AttributeDict):
        return all(type(k) is str and _is_plain(v) for k, v in value.items())
    if type(value) in (list, tuple):
        return all(_is_plain(v) for v in value)
    return type(value) in PLAIN_SCALARS


def _write_tiny_stsb(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        (folder / f"{split}.csv").write_text(TINY_CSV)
    return folder


def test_option_lists_are_not_empty():
    # Guards the parametrisation below: a moved conf/ folder must not silently test nothing.
    assert {g for g, _ in OPTIONS} == set(GROUPS)
    assert "sts" in EXPERIMENTS


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes_and_resolves(compose_cfg, tmp_path, group, option):
    cfg = compose_cfg([f"{group}={option}"], tmp_path)
    container = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert group in container
    # The option chosen is the one composed: its own keys (and plain values) are there.
    text = (CONF_DIR / group / f"{option}.yaml").read_text()
    raw = yaml.safe_load(text) or {}
    raw.pop("defaults", None)
    if text.startswith("# @package _global_"):  # an option that also sets other groups' defaults
        raw = raw[group]
    assert raw, f"{group}/{option}.yaml is empty"
    for key, value in raw.items():
        assert key in cfg[group], f"{group}={option}: key {key!r} missing from the composed config"
        if isinstance(value, (int, float, bool)) or (isinstance(value, str) and "${" not in value):
            assert container[group][key] == value


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(compose_cfg, tmp_path, experiment):
    cfg = compose_cfg([f"+experiment={experiment}"], tmp_path)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["model"]["_target_"] == "lightning_modules.module.MaxSimModule"
    # The experiment's data override is the one composed.
    raw = yaml.safe_load((CONF_DIR / "experiment" / f"{experiment}.yaml").read_text())
    chosen = next(d["override /data"] for d in raw["defaults"] if isinstance(d, dict) and "override /data" in d)
    data = yaml.safe_load((CONF_DIR / "data" / f"{chosen}.yaml").read_text())
    expected = data.get("data", data)["_target_"]  # a global-package option holds it under data:
    assert container["data"]["_target_"] == expected


def test_sts_experiment_applies_its_recipe(compose_cfg, tmp_path):
    raw = yaml.safe_load((CONF_DIR / "experiment" / "sts.yaml").read_text())
    base = compose_cfg([], tmp_path)
    cfg = compose_cfg(["+experiment=sts"], tmp_path)
    assert cfg.task_name == raw["task_name"] != base.task_name
    assert cfg.model.projection_dim == raw["model"]["projection_dim"]
    assert cfg.model.lr == raw["model"]["lr"]
    assert cfg.trainer.max_epochs == raw["trainer"]["max_epochs"]
    assert cfg.data.batch_size == raw["data"]["batch_size"]
    # The recipe trains without dropout, as its sweeps did.
    assert dict(cfg.model.config_overrides) == raw["model"]["config_overrides"]
    assert cfg.model.config_overrides.hidden_dropout_prob == 0.0
    # Validation, the test and the export see the moving average of the weights, at the recipe's decay.
    assert "weight_averaging" not in base.callbacks
    assert cfg.callbacks.weight_averaging._target_ == "lightning_modules.callbacks.ValidatedEMA"
    assert cfg.callbacks.weight_averaging.decay == 0.999
    # callbacks=default takes the averaging out again, leaving no half node behind.
    assert "weight_averaging" not in compose_cfg(["+experiment=sts", "callbacks=default"], tmp_path).callbacks
    assert cfg.model.pooled_weight == raw["model"]["pooled_weight"]


def test_retrieval_data_brings_retrieval_defaults_and_names_the_run_after_the_data(compose_cfg, tmp_path):
    raw = yaml.safe_load((CONF_DIR / "data" / "beir.yaml").read_text())
    cfg = compose_cfg(["data=beir", "data.path=/somewhere/my_collection/"], tmp_path)
    assert cfg.task_name == "my_collection"  # logs/my_collection/runs/..., not the STS defaults' "train"
    assert (cfg.model.direction, cfg.model.infonce_symmetric, cfg.model.projection_dim) == ("a2b", False, None)
    assert cfg.trainer.max_epochs == raw["trainer"]["max_epochs"] == 1
    assert cfg.model.lr == raw["model"]["lr"]
    # The experiment adds only SciFact's path: the same recipe, filed under the data's own name.
    scifact = compose_cfg(["+experiment=scifact"], tmp_path)
    assert scifact.task_name == "scifact" and scifact.model.direction == "a2b"
    assert compose_cfg(["+experiment=scifact", "data.path=/elsewhere/nfcorpus"], tmp_path).task_name == "nfcorpus"
    assert compose_cfg(["data=beir", "data.path=BeIR/fiqa"], tmp_path).task_name == "fiqa"
    # The command line still wins over the data group's defaults.
    assert compose_cfg(["data=beir", "data.path=/x/y", "model.direction=both"], tmp_path).model.direction == "both"


@pytest.mark.parametrize("data", ["+experiment=scifact", "+experiment=pairs"])
def test_the_training_seed_leaves_the_data_split_alone(compose_cfg, tmp_path, data):
    """seed= varies training only, so that a seed sweep is validated on one split; data.seed moves it."""
    assert compose_cfg([data], tmp_path).data.seed == 42
    assert compose_cfg([data, "seed=43"], tmp_path).data.seed == 42
    assert compose_cfg([data, "seed=43", "data.seed=7"], tmp_path).data.seed == 7


def test_command_line_group_beats_the_experiment_default(compose_cfg, tmp_path):
    # `+experiment=sts model=tiny`: the experiment says `override /model: minilm`, the command line wins.
    cfg = compose_cfg(["+experiment=sts", "model=tiny"], tmp_path)
    assert cfg.model.random_init is True
    assert cfg.model.config_overrides.hidden_size == 32


def test_main_config_defaults_do_not_mention_experiment():
    raw = yaml.safe_load((CONF_DIR / "config.yaml").read_text())
    entries = raw["defaults"]
    assert entries, "config.yaml has no defaults list"
    flat = [e if isinstance(e, str) else " ".join(f"{k} {v}" for k, v in e.items()) for e in entries]
    assert not [e for e in flat if "experiment" in e]


def test_paths_follow_output_dir(compose_cfg, tmp_path, minilm_path):
    cfg = compose_cfg([], tmp_path)
    assert Path(cfg.paths.output_dir) == tmp_path
    assert Path(cfg.trainer.default_root_dir) == tmp_path
    assert Path(cfg.callbacks.model_checkpoint.dirpath) == tmp_path / "checkpoints"
    assert Path(cfg.logger.csv.save_dir) == tmp_path
    # The package_dir resolver finds the packaged MiniLM; the tokenizer follows the model.
    assert Path(cfg.model.model_name_or_path) == Path(minilm_path)
    assert cfg.data.tokenizer_name_or_path == cfg.model.model_name_or_path


def test_output_dir_defaults_to_hydra_runtime_dir(compose_cfg, tmp_path):
    cfg = compose_cfg([f"hydra.runtime.output_dir='{tmp_path}'"], keep_hydra=True)
    assert Path(cfg.paths.output_dir) == tmp_path


def test_plain_value_check_rejects_omegaconf_containers():
    # The checker used below must be able to fail.
    assert _is_plain({"a": [1, 2.0, "x", None, True, {"b": 3}]})
    assert not _is_plain({"a": OmegaConf.create({"b": 1})})
    assert not _is_plain({"a": OmegaConf.create([1])})
    assert not _is_plain({"a": Path("x")})


def test_tiny_model_hparams_are_plain_and_checkpoint_loads_weights_only(compose_cfg, tmp_path):
    data_dir = _write_tiny_stsb(tmp_path / "stsb")
    cfg = compose_cfg(["model=tiny", f"data.data_dir='{data_dir}'", "data.hub_id=null"], tmp_path)
    module = hydra.utils.instantiate(cfg.model)
    datamodule = hydra.utils.instantiate(cfg.data)
    assert _is_plain(dict(module.hparams)), module.hparams
    assert not isinstance(module.hparams.config_overrides, (DictConfig, ListConfig))
    assert module.hparams.config_overrides == {
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64
    }
    assert _is_plain(dict(datamodule.hparams)), datamodule.hparams

    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=1, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=datamodule)
    path = tmp_path / "tiny.ckpt"
    trainer.save_checkpoint(path)

    checkpoint = torch.load(path, weights_only=True)  # raises on any non-allowlisted object
    assert checkpoint["hyper_parameters"] == dict(module.hparams)
    assert checkpoint["datamodule_hyper_parameters"]["data_dir"] == str(data_dir)
    state = checkpoint["state_dict"]
    assert any(k.startswith("model.encoder.backbone.") for k in state)
    reloaded = type(module).load_from_checkpoint(path, weights_only=True)
    for name, tensor in module.state_dict().items():
        # equal_nan: the decision thresholds stay NaN until a labelled validation chooses them.
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=0, equal_nan=True, msg=name)


def test_unknown_model_key_is_refused_at_composition(compose_cfg, tmp_path):
    with pytest.raises(ConfigCompositionException, match="not_a_key"):
        compose_cfg(["model=tiny", "model.not_a_key=1"], tmp_path)


def test_appended_unknown_model_key_fails_at_instantiation(compose_cfg, tmp_path):
    cfg = compose_cfg(["model=tiny", "+model.not_a_key=1"], tmp_path)
    with pytest.raises(InstantiationException, match="not_a_key"):
        hydra.utils.instantiate(cfg.model)


def test_maxsim_backend_is_chosen_in_config_and_reaches_the_model(compose_cfg, tmp_path):
    cfg = compose_cfg(["+experiment=sts", "model=tiny", "model.maxsim.backend=chunked",
                       "model.maxsim.chunk_budget_mb=0.5"], tmp_path)
    module = hydra.utils.instantiate(cfg.model)
    assert module.model.backend == "chunked"
    assert module.model.chunk_budget_bytes == 2**19
    assert module.hparams.maxsim == {"backend": "chunked", "chunk_budget_mb": 0.5}  # a plain dict in the checkpoint
    assert hydra.utils.instantiate(compose_cfg(["model=tiny"], tmp_path).model).model.backend == "auto"
    peer = compose_cfg(["model=tiny", "model.maxsim.backend=late-interaction-kernels"], tmp_path)
    assert peer.model.maxsim.backend == "late-interaction-kernels"  # the hyphens parse as one string


@pytest.mark.parametrize("override, message", [("model.maxsim.backend=fused", "must be one of"),
                                               ("+model.maxsim.chunk=1", "unknown key"),
                                               ("model.maxsim=dense", "must be a mapping.*model.maxsim.backend="),
                                               ("model.maxsim.chunk_budget_mb=0", "chunk_budget_mb must be"),
                                               ("model.maxsim.chunk_budget_mb=lots", "chunk_budget_mb must be")])
def test_bad_maxsim_engine_settings_fail_at_instantiation(compose_cfg, tmp_path, override, message):
    cfg = compose_cfg(["model=tiny", override], tmp_path)
    with pytest.raises(InstantiationException, match=message):
        hydra.utils.instantiate(cfg.model)


@pytest.mark.skipif(importlib.util.find_spec("late_interaction_kernels") is not None,
                    reason="late-interaction-kernels is installed here")
def test_a_backend_whose_package_is_missing_fails_at_instantiation(compose_cfg, tmp_path):
    cfg = compose_cfg(["model=tiny", "model.maxsim.backend=late-interaction-kernels"], tmp_path)
    with pytest.raises(InstantiationException, match="pip install late-interaction-kernels"):
        hydra.utils.instantiate(cfg.model)


def test_pairs_experiment_takes_a_hub_dataset_with_config_and_split(compose_cfg, tmp_path):
    cfg = compose_cfg(["+experiment=pairs", "data.train={path:owner/pairs,name:triplet,split:dev}",
                       "data.columns.negatives=[neg_a,neg_b]"], tmp_path)
    assert cfg.optimized_metric == "auto"  # decided by the data at run time
    datamodule = hydra.utils.instantiate(cfg.data)
    assert datamodule.hparams.train == {"path": "owner/pairs", "name": "triplet", "split": "dev"}
    assert datamodule.hparams.columns["negatives"] == ["neg_a", "neg_b"]
    assert _is_plain(dict(datamodule.hparams)), datamodule.hparams
