"""Export: the directory format, loading it back, PyLate and sentence-transformers interop, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lightning_modules.encoder import EncoderOptions, TokenEncoder
from lightning_modules.errors import ModelLoadError, SettingsError
from lightning_modules.errors import ExportError
import lightning_modules.evaluation.sts as sts_module
import lightning_modules.model as model_package
from lightning_modules.model import export_model
from lightning_modules.maxsim import maxsim_pairwise
from lightning_modules.model import LateInteractionModel, TextSettings
from tests.helpers.cli import run_module
from tests.helpers.models import TINY, tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]
PYLATE_PYTHON = REPO_ROOT / ".venv-pylate" / "bin" / "python"
TEXTS = ["A man is playing a guitar, loudly!", "Hi", "Two dogs run across the snowy field near a red barn."]


@pytest.fixture
def exported(tmp_path, minilm_path):
    model = tiny_model(minilm_path)
    return model, export_model(model, tmp_path / "model", card={"base_model": "tiny", "metrics": {"test/spearman": 1.0}})


def _max_difference(first: list, second: list) -> float:
    assert [tuple(x.shape) for x in first] == [tuple(torch.as_tensor(y).shape) for y in second]
    return max(float((torch.as_tensor(x) - torch.as_tensor(y)).abs().max()) for x, y in zip(first, second))


def test_the_directory_has_pylate_layout_and_safetensors_only(exported):
    _, folder = exported
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "modules.json", "sentence_bert_config.json",
            "config_sentence_transformers.json", "maxsim_lightning.json", "README.md",
            "1_Dense/config.json", "1_Dense/model.safetensors"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert config["similarity_fn_name"] == "MaxSim"
    for key in ("query_prefix", "document_prefix", "query_length", "document_length", "attend_to_expansion_tokens",
                "skiplist_words", "do_query_expansion"):
        assert key in config, key
    ours = json.loads((folder / "maxsim_lightning.json").read_text())
    assert (ours["direction"], ours["reduction"], ours["skip_special_tokens"]) == ("both", "mean", False)
    card = (folder / "README.md").read_text()
    assert "| test/spearman | 1.0 |" in card and "**summed** over query tokens" in card
    assert not list(folder.parent.glob(".model.partial-*"))  # the staging folder is gone


RETRIEVAL_METRICS = {"test/ndcg@10": 68.42, "test/mrr@10": 64.1, "test/recall@10": 81.5, "test/recall@100": 93.3,
                     "val/ndcg@10": 71.07}


def _beir_settings(folder: Path) -> dict:
    """A BeirDataModule's hyperparameters, as conf/data/beir.yaml gives them (the settings the card reads)."""
    return {"path": str(folder), "train_split": "train", "validation_split": None, "test_split": "test",
            "validation_fraction": 0.15, "roles": "asymmetric", "query_max_length": 16, "max_length": 40,
            "query_marker": None, "document_marker": None, "limit_train_queries": None, "limit_eval_queries": None,
            "limit_corpus": None}


def test_a_retrievers_card_names_its_direction_data_and_test_ndcg(tmp_path, minilm_path):
    from lightning_modules.results import training_data_source

    (tmp_path / "scifact").mkdir()
    settings = TextSettings(max_length=40, query_max_length=16, roles="asymmetric", query_marker="[unused0]")
    model = tiny_model(minilm_path, text_settings=settings)
    model.direction = "a2b"  # the retrieval recipe: a2b, mean
    card_data = {"base_model": "tiny", "data": training_data_source(_beir_settings(tmp_path / "scifact")),
                 "metrics": RETRIEVAL_METRICS, "monitor": "val/ndcg@10",
                 "command": "python -m train +experiment=scifact"}
    card = (export_model(model, tmp_path / "m", card=card_data) / "README.md").read_text()
    assert f"Training data: scifact, a BEIR retrieval set ({(tmp_path / 'scifact').resolve()})" in card
    assert "validated on a seeded 15% of those queries held out, tested on its `test` queries" in card
    assert "direction `a2b`, reduction `mean`, hard max: asymmetric, ColBERT's score" in card
    assert "Late-interaction retriever" in card and "Ranking documents for a query" in card
    assert "queries are cut at 16 tokens and documents at 40" in card and "marker `[unused0]`" in card
    # No claim of a symmetric score, and none that contradicts docs/retrieval.md: a2b with a mean
    # ranks a query's documents as PyLate's sum does.
    assert "symmetric: both directions averaged" not in card and "rank pairs differently" not in card
    assert "rank a query's documents in the same order as here (docs/retrieval.md)" in card
    rows = [line for line in card.splitlines() if line.startswith(("| test/", "| val/"))]
    assert rows == ["| test/ndcg@10 | 68.42 |", "| test/mrr@10 | 64.1 |", "| test/recall@10 | 81.5 |",
                    "| test/recall@100 | 93.3 |", "| val/ndcg@10 | 71.07 |"]  # test first, headline first
    assert "`test/`: the test split" in card and "(the best by `val/ndcg@10`)" in card
    assert "```bash\npython -m train +experiment=scifact\n```" in card
    # Tokens that PyLate matches and we skip: no claim of equal rankings.
    skipping = tiny_model(minilm_path, skip_special_tokens=True, text_settings=settings)
    skipping.direction = "a2b"
    card = (export_model(skipping, tmp_path / "s", card=card_data) / "README.md").read_text()
    assert "in the same order" not in card and "their rankings can differ from ours" in card


def test_a_symmetric_sts_models_card_says_so(tmp_path, minilm_path, stsb_dir):
    from lightning_modules.results import training_data_source

    data = training_data_source({"data_dir": str(stsb_dir), "hub_id": "sentence-transformers/stsb"})
    metrics = {"val/spearman": 80.5, "test/spearman": 78.25, "test/pearson": 79.0}
    card = (export_model(tiny_model(minilm_path), tmp_path / "m", card={"data": data, "metrics": metrics})
            / "README.md").read_text()
    assert f"Training data: {stsb_dir} (STS-B: trained on its train split)" in card
    assert "# Late-interaction model trained" in card and "Ranking documents" not in card
    assert "direction `both`, reduction `mean`, hard max: symmetric: both directions averaged" in card
    assert "`score(a, b) == score(b, a)`, in [-1, 1]" in card
    assert ("with direction `both` and reduction `mean` (symmetric: both directions averaged, tokens averaged, "
            "a score in [-1, 1]), so their scores rank pairs differently from ours") in card
    rows = [line for line in card.splitlines() if line.startswith(("| test/", "| val/"))]
    assert rows == ["| test/spearman | 78.25 |", "| test/pearson | 79.0 |", "| val/spearman | 80.5 |"]
    assert "The command line was not recorded" in card


def test_training_data_source_names_each_kind_of_data(tmp_path):
    from lightning_modules.results import training_data_source

    limited = _beir_settings(tmp_path / "nfcorpus") | {"path": "BeIR/nfcorpus", "validation_split": "dev",
                                                       "limit_eval_queries": 50, "limit_corpus": 2000}
    assert training_data_source(limited) == (
        "nfcorpus, a BEIR retrieval set (BeIR/nfcorpus): trained on its `train` queries, validated on its `dev` "
        "queries, tested on its `test` queries, each query ranked against the corpus; a seeded subset (50 "
        "queries per evaluation split, 2000 documents): its figures are not the whole set's")
    pairs = {"train": "pairs.csv", "validation": None, "test": {"path": "org/set", "split": "test"}}
    assert training_data_source(pairs) == ("pairs.csv (training pairs); validation: a seeded share of the training "
                                           "pairs held out; org/set (split test) (test)")
    assert training_data_source({"data_dir": str(tmp_path / "absent"), "hub_id": "sentence-transformers/stsb"}) == (
        f"sentence-transformers/stsb (STS-B from the hub, as there is no folder {tmp_path / 'absent'}: "
        "trained on its train split)")
    assert training_data_source({"batch_size": 16}) is None


def test_export_of_a_beir_runs_checkpoint_names_its_data_and_command(tmp_path, compose_cfg):
    from lightning_modules.module import MaxSimModule

    cfg = compose_cfg(["model=tiny", "model.direction=a2b"], tmp_path)
    hparams = OmegaConf.to_container(cfg.model, resolve=True)
    module = MaxSimModule(**{k: v for k, v in hparams.items() if not k.startswith("_")})
    beir = tmp_path / "data" / "scifact"
    beir.mkdir(parents=True)
    run = tmp_path / "logs" / "scifact" / "runs" / "1"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    saved = run / "checkpoints" / "best.ckpt"
    # What Lightning saves of a DataModule that called save_hyperparameters: its arguments.
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
                "datamodule_hyper_parameters": _beir_settings(beir)}, saved)
    (run / "results.json").write_text(json.dumps({"best_checkpoint": str(saved), "monitor": "val/ndcg@10",
                                                  **RETRIEVAL_METRICS}))
    (run / "config_resolved.yaml").write_text("seed: 42\n")
    OmegaConf.save(OmegaConf.create(["+experiment=scifact", f"data.path={beir}", "resume=x"]),
                   run / ".hydra" / "overrides.yaml")
    out = tmp_path / "exported"
    done = run_module("train.export", f"ckpt={saved}", f"out={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    card = (out / "README.md").read_text()
    assert f"Training data: scifact, a BEIR retrieval set ({beir.resolve()})" in card and "not recorded" not in card
    assert "direction `a2b`" in card and "ColBERT's score" in card and "| test/ndcg@10 | 68.42 |" in card
    assert "queries are cut at 16 tokens and documents at 40" in card  # the checkpoint's text settings
    assert f"```bash\npython -m train +experiment=scifact data.path={beir}\n```" in card  # resume= left out


@pytest.mark.parametrize("projection_dim", [16, None])
def test_export_loads_back_with_equal_vectors_and_scores(tmp_path, minilm_path, projection_dim):
    model = tiny_model(minilm_path, projection_dim, skip_special_tokens=True,
                        text_settings=TextSettings(max_length=12))
    folder = export_model(model, tmp_path / "m")
    loaded = LateInteractionModel.from_pretrained(str(folder))
    assert _max_difference(model.encode(TEXTS), loaded.encode(TEXTS)) == 0.0
    assert loaded.text_settings == model.text_settings and loaded.encoder.options.skip_special_tokens
    assert max(len(ids) for ids in loaded.tokenize(TEXTS)) == 12  # the length limit travelled too
    assert torch.equal(model.score(TEXTS, TEXTS[::-1]), loaded.score(TEXTS, TEXTS[::-1]))


def test_text_api_agrees_with_the_tensor_path(exported):
    model, _ = exported
    # score(a, b) against MaxSim of each pair embedded alone (no padding, no batching).
    expected = []
    for a, b in zip(TEXTS, TEXTS[::-1]):
        (ids_a,), (ids_b,) = model.tokenize([a], is_query=True), model.tokenize([b])
        ea = model.embed(torch.tensor([ids_a]), torch.ones(1, len(ids_a), dtype=torch.long))
        eb = model.embed(torch.tensor([ids_b]), torch.ones(1, len(ids_b), dtype=torch.long))
        expected.append(float(maxsim_pairwise(ea.vectors, ea.mask, eb.vectors, eb.mask)))
    assert model.score(TEXTS, TEXTS[::-1], batch_size=2).tolist() == pytest.approx(expected, abs=1e-6)
    matrix = model.similarity_matrix(TEXTS, TEXTS[::-1], chunk=2)
    assert matrix.diagonal().tolist() == pytest.approx(expected, abs=1e-6)
    ranked = model.rank(TEXTS[0], TEXTS, top_k=2)
    order = torch.argsort(model.similarity_matrix(TEXTS[:1], TEXTS)[0], descending=True).tolist()
    assert [r["index"] for r in ranked] == order[:2] and ranked[0]["text"] == TEXTS[order[0]]
    with pytest.raises(ValueError, match="text 1 .* is empty"):
        model.encode(["fine", "   "])
    with pytest.raises(TypeError, match="wrap it in a list"):
        model.encode("one string")


def test_a_checkpoint_loads_with_its_data_settings(compose_cfg, tmp_path, stsb_dir):
    from train.pipeline import run

    cfg = compose_cfg(["+experiment=sts", "model=tiny", f"data.data_dir='{stsb_dir}'", "data.hub_id=null", "~logger",
                       "trainer.max_epochs=1", "data.limit_train_pairs=32", "data.limit_eval_pairs=32",
                       "data.max_length=20", "++trainer.enable_progress_bar=false"], tmp_path)
    results = run(cfg)
    model = LateInteractionModel.load(results["best_checkpoint"]).eval()
    assert model.text_settings.max_length == 20
    # The run exported its best checkpoint too: the same vectors either way.
    exported = LateInteractionModel.from_pretrained(str(tmp_path / "model"))
    assert _max_difference(model.encode(TEXTS), exported.encode(TEXTS)) == 0.0
    card = (tmp_path / "model" / "README.md").read_text()
    assert f"| test/spearman | {results['test/spearman']} |" in card
    # What the run trained on, by its DataModule's settings, and the command that runs it again.
    assert f"Training data: {stsb_dir} (STS-B" in card and "from None" not in card
    assert "```bash\npython -m train +experiment=sts model=tiny " in card and "(the best by `val/spearman`)" in card


def test_sentence_transformers_multivector_encoder_gives_our_vectors(exported):
    st = pytest.importorskip("sentence_transformers", minversion="6.0")
    model, folder = exported
    encoder = st.MultiVectorEncoder(str(folder), device="cpu")
    assert _max_difference(model.encode(TEXTS), encoder.encode_document(TEXTS)) <= 1e-5
    assert _max_difference(model.encode(TEXTS, is_query=True), encoder.encode_query(TEXTS)) <= 1e-5


def _pylate_encode(folder: Path, texts: list[str]) -> dict:
    if not PYLATE_PYTHON.is_file():
        pytest.skip(f"PyLate's environment {PYLATE_PYTHON.parent.parent} is absent (make interop-env builds it)")
    request = json.dumps({"model": str(folder), "texts": texts})
    done = subprocess.run([str(PYLATE_PYTHON), str(REPO_ROOT / "tests" / "interop" / "pylate_encode.py")],
                          input=request, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.training
@pytest.mark.parametrize("asymmetric", [False, True])
def test_pylate_colbert_gives_our_vectors(tmp_path, minilm_path, asymmetric):
    settings = TextSettings(max_length=24, query_max_length=10, roles="asymmetric", query_marker="[unused0]",
                            document_marker="[unused1]") if asymmetric else TextSettings(max_length=24)
    model = tiny_model(minilm_path, text_settings=settings)
    folder = export_model(model, tmp_path / "m")
    result = _pylate_encode(folder, TEXTS)
    assert result["pylate"] == "1.6.0"
    assert _max_difference(model.encode(TEXTS), result["documents"]) <= 1e-5
    assert _max_difference(model.encode(TEXTS, is_query=True), result["queries"]) <= 1e-5


def test_bad_paths_and_corrupt_weights_are_clear_errors(exported, tmp_path):
    model, folder = exported
    with pytest.raises(ModelLoadError, match="nope: no such folder or file .*give a folder written by python -m train.export"):
        LateInteractionModel.load(tmp_path / "nope")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ModelLoadError, match="is not a maxsim-lightning export .* nor a Hugging Face encoder"):
        LateInteractionModel.load(plain)
    (plain / "config.json").write_text("{}")  # looks like an encoder, but does not load as one
    with pytest.raises(ModelLoadError, match="Could not load the model from .*plain"):
        LateInteractionModel.load(plain)
    backbone = folder / "model.safetensors"
    intact = backbone.read_bytes()
    backbone.write_bytes(intact[: len(intact) // 2])  # a download cut off halfway
    with pytest.raises(ModelLoadError, match="SafetensorError.*corrupt or truncated"):
        LateInteractionModel.load(folder)
    backbone.write_bytes(intact)
    dense = folder / "1_Dense" / "model.safetensors"
    dense.write_bytes(dense.read_bytes()[:40])  # truncated
    with pytest.raises(ModelLoadError, match="unreadable projection weights"):
        LateInteractionModel.load(folder)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a readable checkpoint"):
        LateInteractionModel.load(broken)


def test_an_existing_output_is_refused_unless_overwrite_and_failures_leave_nothing(exported, monkeypatch):
    model, folder = exported
    with pytest.raises(ExportError, match="already exists; choose another folder or pass overwrite=true"):
        export_model(model, folder)
    before = (folder / "README.md").read_text()
    import lightning_modules.model.saving as saving

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(saving, "model_card", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(model, folder, overwrite=True)
    assert (folder / "README.md").read_text() == before  # the old export is untouched
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model"]  # no partial folder left
    monkeypatch.undo()
    export_model(model, folder, overwrite=True, card={"base_model": "other"})
    assert "other" in (folder / "README.md").read_text()


@pytest.mark.training
def test_export_cli(tmp_path, compose_cfg):
    from lightning_modules.module import MaxSimModule

    cfg = compose_cfg(["model=tiny"], tmp_path)
    hparams = OmegaConf.to_container(cfg.model, resolve=True)
    module = MaxSimModule(**{k: v for k, v in hparams.items() if not k.startswith("_")})
    saved = tmp_path / "saved.ckpt"
    # What a Lightning checkpoint holds for loading: plain hyperparameters and the weights.
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, saved)
    out = tmp_path / "cli-export"
    arguments = [f"ckpt={saved}", f"out={out}"]
    done = run_module("train.export", *arguments, cwd=tmp_path)  # a real process: the test below
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "maxsim_lightning.json").is_file() and f"Exported to {out}" in done.stdout
    exported = LateInteractionModel.from_pretrained(str(out))
    assert _max_difference(module.model.eval().encode(TEXTS), exported.encode(TEXTS)) == 0.0
    assert "None recorded." in (out / "README.md").read_text()  # a bare checkpoint: no run beside it
    again = run_module("train.export", *arguments, cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    missing = run_module("train.export", f"ckpt={tmp_path / 'no.ckpt'}", f"out={out}2", cwd=tmp_path)
    assert missing.returncode == 2 and "no such folder or file" in missing.stderr
    assert not (tmp_path / f"{out.name}2").exists()


def test_old_checkpoints_without_thresholds_or_engine_settings_load_and_overwrite_spares_other_folders(tmp_path, minilm_path, compose_cfg):
    from lightning_modules.module import MaxSimModule

    cfg = compose_cfg(["model=tiny"], tmp_path)
    hparams = OmegaConf.to_container(cfg.model, resolve=True)
    module = MaxSimModule(**{k: v for k, v in hparams.items() if not k.startswith("_")})
    state = {k: v for k, v in module.state_dict().items() if k != "decision_thresholds"}  # as saved before
    saved = tmp_path / "old.ckpt"
    # As saved before model.maxsim existed: the backend as a flat key.
    old_hparams = {k: v for k, v in module.hparams.items() if k != "maxsim"} | {"maxsim_backend": "chunked"}
    torch.save({"hyper_parameters": old_hparams, "state_dict": state}, saved)
    model = LateInteractionModel.load(saved)
    assert model.backend == "chunked"
    # A run trained with a GPU-only backend loads with auto, and scores here, on the CPU.
    gpu_run = tmp_path / "gpu.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams) | {"maxsim": {"backend": "triton"}}, "state_dict": state},
               gpu_run)
    on_cpu = LateInteractionModel.load(gpu_run)
    assert on_cpu.backend == "auto"
    assert on_cpu.eval().similarity_matrix(TEXTS, TEXTS).shape == (len(TEXTS), len(TEXTS))
    assert _max_difference(module.model.eval().encode(TEXTS), model.eval().encode(TEXTS)) == 0.0
    run_folder = tmp_path / "run"
    (run_folder / "checkpoints").mkdir(parents=True)
    with pytest.raises(ExportError, match="is not an earlier export"):
        export_model(model, run_folder, overwrite=True)
    assert (run_folder / "checkpoints").is_dir()


def test_encoder_options_are_flat_hyperparameters_that_round_trip_through_a_checkpoint(tmp_path, minilm_path):
    import pytorch_lightning as pl

    from lightning_modules.module import MaxSimModule

    options = EncoderOptions(minilm_path, projection_dim=8, skip_punctuation=True, random_init=True,
                             config_overrides=TINY)
    module = MaxSimModule(minilm_path, projection_dim=8, skip_punctuation=True, random_init=True,
                          config_overrides=TINY, lr=1e-3)
    assert module.model.encoder.options == options
    # Flat beside the module's own arguments, as conf/model/*.yaml gives them; the unset ones keep their defaults.
    assert {k: module.hparams[k] for k in ("projection_dim", "skip_punctuation", "config_overrides", "lr")} == {
        "projection_dim": 8, "skip_punctuation": True, "config_overrides": TINY, "lr": 1e-3}
    assert "encoder_options" not in module.hparams
    saved = tmp_path / "options.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
                "pytorch-lightning_version": pl.__version__}, saved)
    reloaded = MaxSimModule.load_from_checkpoint(saved, weights_only=True)
    assert reloaded.model.encoder.options == options and reloaded.hparams.lr == 1e-3
    loaded = LateInteractionModel.load(saved)
    assert loaded.encoder.options == options
    assert _max_difference(module.model.eval().encode(TEXTS), loaded.eval().encode(TEXTS)) == 0.0


def test_an_unknown_model_setting_is_refused_with_the_encoders_option_names(minilm_path):
    from lightning_modules.module import MaxSimModule

    with pytest.raises(SettingsError, match=r"unknown setting\(s\) \['projection_dims'\].*options: \[.*'projection_dim'"):
        MaxSimModule(minilm_path, projection_dims=8)


@pytest.mark.training
def test_export_of_a_runs_checkpoint_tells_its_run_and_checks_onnx_quietly(tmp_path, compose_cfg, stsb_dir):
    from train.pipeline import run

    cfg = compose_cfg(["+experiment=sts", "model=tiny", f"data.data_dir='{stsb_dir}'", "data.hub_id=null", "~logger",
                       "trainer.max_epochs=1", "data.limit_train_pairs=32", "data.limit_eval_pairs=32",
                       "++trainer.enable_progress_bar=false", "export=false"], tmp_path / "run")
    results = run(cfg)
    out = tmp_path / "exported"
    done = subprocess.run([sys.executable, "-m", "train.export", f"ckpt={results['best_checkpoint']}", f"out={out}",
                           "onnx=true"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # The model card says what the run knew: its metrics (results.json beside the checkpoint),
    # its training data and its configuration.
    card = (out / "README.md").read_text()
    assert f"| val/spearman | {results['val/spearman']} |" in card
    assert f"| test/spearman | {results['test/spearman']} |" in card
    assert f"Training data: {stsb_dir}" in card and "None recorded" not in card and "## Training configuration" in card
    # The ONNX check is reported in one line, without the exporter's hundred lines of passes.
    output = (done.stdout + done.stderr).strip().splitlines()
    assert any("onnx/model.onnx: onnxruntime's token vectors match PyTorch's within" in line for line in output)
    assert len(output) <= 3, output
    assert (out / "onnx" / "model.onnx").is_file()


def test_one_loader_takes_an_export_a_checkpoint_or_a_plain_encoder(exported, minilm_path):
    """``LateInteractionModel.load`` is the one way in: ours as saved, a plain encoder zero-shot."""
    model, folder = exported
    loaded = LateInteractionModel.load(folder)
    assert torch.equal(loaded.encoder.projection.weight, model.encoder.projection.weight)
    plain = LateInteractionModel.load(minilm_path)
    assert plain.encoder.projection is None and plain.direction == "both" and plain.reduction == "mean"
    assert not hasattr(sts_module, "load_any_model") and not hasattr(model_package, "load_pretrained")
