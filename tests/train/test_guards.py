"""The NaN guard, and settings that cannot work failing before the model loads."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter

import pytest
import pytorch_lightning as pl
import torch

from lightning_modules.errors import NonFiniteTrainingError, SettingsError
from lightning_modules.model import LateInteractionModel
from lightning_modules.module import MaxSimModule
from tests.helpers.cli import run_module
from train.pipeline import run

pytestmark = pytest.mark.training


def _overrides(stsb_dir, *extra):
    return ["+experiment=sts", "model=tiny", "~logger", f"data.data_dir='{stsb_dir}'", "data.hub_id=null",
            "trainer.max_epochs=1", "data.limit_train_pairs=128", "data.limit_eval_pairs=32", "export=false",
            "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false", *extra]


def _poison(monkeypatch, poisoned_steps, seen_batches: list):
    """Make the loss NaN on the given optimizer steps (0-based ``global_step`` before the step)."""
    original = MaxSimModule._scored_loss

    def scored_loss(self, batch):
        loss = original(self, batch)
        if self.trainer.global_step in poisoned_steps:
            seen_batches.append(batch)
            return loss * float("nan")
        return loss

    monkeypatch.setattr(MaxSimModule, "_scored_loss", scored_loss)


class _StateAroundSteps(pl.Callback):
    """Copies of the weights and the optimizer's state before and after every step."""

    def __init__(self) -> None:
        self.steps = []

    def _snapshot(self, trainer, module):
        optimizer = trainer.optimizers[0].state_dict()
        return ({k: v.clone() for k, v in module.state_dict().items()},
                {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                 for p, s in optimizer["state"].items()})

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._before = (trainer.global_step, *self._snapshot(trainer, module))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps.append((self._before, self._snapshot(trainer, module)))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        _same(a[k], b[k]) if isinstance(a[k], dict) else torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k]))
        for k in a
    )


def test_a_non_finite_loss_skips_its_step_untouched_and_is_counted(compose_cfg, tmp_path, stsb_dir, monkeypatch):
    _poison(monkeypatch, {3, 4}, seen := [])
    recorder = _StateAroundSteps()
    monkeypatch.setattr(pl.Trainer, "__init__", _with_callback(pl.Trainer.__init__, recorder))
    results = run(compose_cfg(_overrides(stsb_dir), tmp_path))

    assert len(seen) == 2 and results["nonfinite_steps"] == 2
    assert json.loads((tmp_path / "results.json").read_text())["nonfinite_steps"] == 2
    assert results["steps"] == 8  # the skipped steps still count: the schedule moves on
    for (step, weights, optimizer), (weights_after, optimizer_after) in recorder.steps:
        untouched = _same(weights, weights_after) and _same(optimizer, optimizer_after)
        assert untouched == (step in {3, 4}), f"step {step}"
    assert all(torch.isfinite(v).all() for v in recorder.steps[-1][1][0].values() if v.is_floating_point())


def test_too_many_non_finite_steps_in_a_row_stop_naming_the_step_and_rows(compose_cfg, tmp_path, stsb_dir, monkeypatch):
    _poison(monkeypatch, {2, 3, 4, 5, 6, 7}, seen := [])
    with pytest.raises(NonFiniteTrainingError) as stopped:
        run(compose_cfg(_overrides(stsb_dir, "max_nonfinite_steps=3"), tmp_path))
    message = str(stopped.value)
    assert len(seen) == 3
    assert "step 5: the loss or the gradients were not finite" in message  # the 5th optimizer step, 0-based 4
    assert "for 3 steps in a row" in message and "max_nonfinite_steps=3" in message

    # The rows it names are the last poisoned batch's: their gold scores, read from the file, are the batch's.
    train_csv = stsb_dir / "train.csv"
    lines = [int(n) for n in re.findall(rf"{re.escape(str(train_csv))}, line (\d+)", message)]
    assert len(lines) == 8  # the first 8 of the batch's 16, then "... (16 in all)"
    assert "(16 in all)" in message
    with train_csv.open(newline="") as file:
        reader = csv.DictReader(file)
        by_line = {reader.line_num: float(row["score"]) / 5 for row in reader}
    named = Counter(round(by_line[n], 4) for n in lines)
    in_batch = Counter(round(float(s), 4) for s in seen[-1].scores)
    assert not named - in_batch


def _with_callback(init, callback):
    def patched(self, *args, callbacks=None, **kwargs):
        init(self, *args, callbacks=[*(callbacks or []), callback], **kwargs)
    return patched


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=0", "data.batch_size=0 (a batch holds at least 1 pair)"),
    ("model.lr=0", "model.lr=0 (the learning rate must be > 0"),
    ("model.lr=-1e-4", "model.lr=-0.0001 (the learning rate must be > 0"),
    ("model.warmup_ratio=1.5", "model.warmup_ratio=1.5 (the share of steps spent warming up, in [0, 1])"),
    ("checkpoint_every_n_steps=0", "checkpoint_every_n_steps=0 (at least 1)"),
    ("data.data_dir=/no/such/folder", "No STS-B data folder at /no/such/folder"),
])
def test_settings_that_cannot_work_fail_before_the_model_loads(tmp_path, stsb_dir, monkeypatch, override, message):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad setting was found")

    monkeypatch.setattr(LateInteractionModel, "build", no_model)
    done = run_module("train", *_overrides(stsb_dir, override), f"hydra.run.dir='{tmp_path / 'run'}'", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr


def test_an_output_folder_that_cannot_be_written_fails_in_one_paragraph(tmp_path, stsb_dir, monkeypatch):
    monkeypatch.setattr(LateInteractionModel, "build", lambda *a, **k: pytest.fail("the model was loaded"))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    done = run_module("train", *_overrides(stsb_dir), f"paths.log_dir='{blocker}/logs'", cwd=tmp_path)
    assert done.returncode == 2
    assert f"the run folder {blocker}/logs/sts/runs/" in done.stderr and "cannot be written" in done.stderr
    assert "Traceback" not in done.stderr
    named = run_module("train", *_overrides(stsb_dir), f"hydra.run.dir='{blocker}/run'", cwd=tmp_path)
    assert named.returncode == 2 and "Traceback" not in named.stderr
    assert f"hydra.run.dir={blocker}/run cannot be written (Not a directory)" in named.stderr


class ForeignDataModule(pl.LightningDataModule):
    """A DataModule that is not one of ours: it declares none of what the pipeline asks of one."""

    def __init__(self, **settings) -> None:
        super().__init__()


def test_a_datamodule_outside_the_contract_is_refused(compose_cfg, tmp_path, stsb_dir):
    cfg = compose_cfg(_overrides(stsb_dir, f"data._target_={__name__}.ForeignDataModule"), tmp_path / "run")
    with pytest.raises(SettingsError, match="data._target_ builds a ForeignDataModule, not a DataModule of "
                                            r"lightning_modules.datamodules \(a subclass of LateInteractionDataModule\)"):
        run(cfg)


def test_several_bad_settings_are_named_together(tmp_path, stsb_dir):
    done = run_module("train", *_overrides(stsb_dir, "data.batch_size=0", "model.warmup_ratio=-0.1"),
                      f"hydra.run.dir='{tmp_path / 'run'}'", cwd=tmp_path)
    assert done.returncode == 2
    assert "2 settings cannot work: data.batch_size=0" in done.stderr and "model.warmup_ratio=-0.1" in done.stderr


@pytest.mark.parametrize(("override", "message"), [
    ("model.maxsim.backend=fused", "model.maxsim.backend must be one of auto, dense, chunked, triton, "
                                   "late-interaction-kernels; got 'fused'"),
    ("++model.maxsim.speed=9", "model.maxsim: unknown key(s) ['speed']"),
    ("model.maxsim.chunk_budget_mb=0", "model.maxsim.chunk_budget_mb must be a number of megabytes > 0, got 0"),
])
def test_bad_engine_settings_fail_in_one_paragraph(tmp_path, stsb_dir, override, message):
    done = run_module("train", *_overrides(stsb_dir, override), f"hydra.run.dir='{tmp_path / 'run'}'", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"error: {message}" in done.stderr and "Traceback" not in done.stderr
