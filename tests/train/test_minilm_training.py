"""A short fine-tuning of the real all-MiniLM-L6-v2 on a seeded STS-B subset, on CPU."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from scipy.stats import pearsonr, spearmanr
from torch.utils.data import DataLoader

from lightning_modules.data import PairCollator
from lightning_modules.datamodules import STSBDataModule
from lightning_modules.module import MaxSimModule

# Each test trains a model or runs a whole training command.
pytestmark = pytest.mark.training


class _ModeRecorder(pl.Callback):
    """Whether the encoder was in training mode (dropout on) at each training step; validation gold scores."""

    def __init__(self) -> None:
        self.backbone_training: list[bool] = []
        self.gold: list[torch.Tensor] | None = None  # set to a list to collect validation gold scores
        self.predicted: list[torch.Tensor] = []  # and what the evaluator scored, alongside

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.gold is not None:
            self.gold.append(batch.scores.clone())
            self.predicted.append(outputs["predicted"].detach().clone())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        backbone = pl_module.model.encoder.backbone
        self.backbone_training.append(all(m.training for m in backbone.modules()))


def _predict(module: MaxSimModule, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores from the module's forward, gold scores: computed outside Lightning and torchmetrics."""
    was_training = module.training
    module.eval()
    predicted, gold = [], []
    with torch.no_grad():
        for batch in loader:
            predicted.append(module(batch.input_ids, batch.attention_mask))
            gold.append(batch.scores)
    module.train(was_training)
    return torch.cat(predicted), torch.cat(gold)


def _spearman(predicted, gold) -> float:
    return 100 * spearmanr(predicted.numpy(), gold.numpy()).statistic


def test_minilm_fine_tuning_on_a_stsb_subset(stsb_dir, minilm_path):
    pl.seed_everything(0)
    datamodule = STSBDataModule(
        str(stsb_dir), minilm_path, hub_id=None, batch_size=16, eval_batch_size=100,
        limit_train_pairs=300, limit_eval_pairs=300,
    )
    module = MaxSimModule(minilm_path, projection_dim=None, lr=5e-5)
    recorder = _ModeRecorder()
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[recorder],
        check_val_every_n_epoch=2,  # no validation inside fit: the explicit validate() calls measure
    )
    zero_shot = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    assert len(datamodule.datasets["train"]) == len(datamodule.datasets["validation"]) == 300

    # 100 of the training pairs, scored before and after: does the model learn what it is shown?
    train_loader = DataLoader(
        datamodule.datasets["train"][:100], batch_size=100, collate_fn=PairCollator(datamodule.tokenizer.pad_token_id)
    )
    train_before = _spearman(*_predict(module, train_loader))

    trainer.fit(module, datamodule=datamodule)
    # Capture what the module predicts during the final validation, to check its metrics independently.
    recorder.gold = gold = []
    trained = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    predicted = recorder.predicted
    # The evaluator's predictions are the module's own: its forward gives the same scores
    # (checked on the first validation batch of 100 pairs).
    first_batch = [next(iter(datamodule.val_dataloader()))]
    assert torch.allclose(predicted[0], _predict(module, first_batch)[0], atol=1e-6)
    train_after = _spearman(*_predict(module, train_loader))
    print(f"val/spearman {zero_shot['val/spearman']:.2f} -> {trained['val/spearman']:.2f}; "
          f"train-pair spearman {train_before:.2f} -> {train_after:.2f}")

    assert trainer.global_step == math.ceil(300 / 16)
    assert recorder.backbone_training and all(recorder.backbone_training), "dropout was off during training"
    assert 70 < zero_shot["val/spearman"] < 95  # the pretrained model already ranks STS-B pairs well
    assert math.isfinite(trained["val/spearman"])
    # One epoch on 300 pairs: the training pairs are fitted clearly better. Validation does not
    # reliably improve on so little (measured over four seeds, with the old training order and
    # the resumable one alike: docs/development.md#tests); the recipe's gain needs the whole
    # training set. So validation must only not collapse.
    assert train_after > train_before + 2.0, (train_before, train_after)
    assert trained["val/spearman"] > zero_shot["val/spearman"] - 3.0, (zero_shot, trained)

    # The logged metrics equal scipy's on the module's own predictions (independent reference).
    predicted, gold = torch.cat(predicted).numpy(), torch.cat(gold).numpy()
    assert predicted.shape == gold.shape == (300,)
    assert trained["val/spearman"] == pytest.approx(100 * spearmanr(predicted, gold).statistic, abs=1e-3)
    assert trained["val/pearson"] == pytest.approx(100 * pearsonr(predicted, gold).statistic, abs=1e-3)


def test_minilm_on_user_style_binary_pairs_beats_zero_shot(tmp_path, stsb_dir, minilm_path, compose_cfg):
    """The user example of docs/usage.md (Fine-tuning on your own pairs), smaller: STS-B pairs labelled 1
    when score >= 4, as a user's CSV."""
    import csv

    from train.pipeline import run

    def write(split, n):
        with (stsb_dir / f"{split}.csv").open(encoding="utf-8") as f:
            rows = list(csv.DictReader(f))[:n]
        path = tmp_path / f"{split}_pairs.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text1", "text2", "label"])
            writer.writerows([r["sentence1"], r["sentence2"], int(float(r["score"]) >= 4)] for r in rows)
        return path

    # Validation: a hold-out of the user's file, as in the docs/usage.md example.
    cfg = compose_cfg(["+experiment=pairs", f"data.train='{write('train', 1500)}'", "data.validation_fraction=0.2",
                       "trainer.max_epochs=1", "~logger", "++trainer.enable_progress_bar=false"], tmp_path / "run")
    results = run(cfg)
    print({k: results[k] for k in ("val/auc", "val/f1", "val/accuracy")}, results["zero_shot"])
    assert results["data"]["train"]["notes"][-1].startswith("binary_objective=auto chose ranking")
    # Seeded, so reproducible here; measured 92.49 -> 93.30 AUC, 71.32 -> 73.08 F1.
    assert results["val/auc"] > results["zero_shot"]["val/auc"]
    assert results["val/f1"] > results["zero_shot"]["val/f1"]
