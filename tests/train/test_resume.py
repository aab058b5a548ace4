"""Runs that survive: killed or stopped runs resumed exactly, SLURM requeue, and resume's refusals.

Each run is ``python -m train`` with the tiny model and dropout on, so that an exact resume
needs the training order, the optimizer, the schedule and every RNG state back: the resumed
run must end with the same metrics and bit-identical weights as the uninterrupted one. A run
killed with SIGKILL, or one of two processes, is a real process; the others run in the test
process (``run_module``: the same argv, exit status and output, without a fresh interpreter's
imports), where the signal handlers are the same.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import run_module

pytestmark = pytest.mark.training
REPO_ROOT = Path(__file__).resolve().parents[2]

SIGNAL_AT = "tests.helpers.killing.SignalOnce"
# Compared between runs: everything the run reports that does not depend on time or on where it ran.
SAME = ("zero_shot", "val/spearman", "val/pearson", "test/spearman", "test/pearson", "best_epoch", "epochs", "steps",
        "validation_history", "nonfinite_steps")


def _overrides(stsb_dir: Path, *extra: str) -> list[str]:
    # 128 pairs at batch 16: 8 steps an epoch on one process, 4 on each of two; a checkpoint every 3.
    return ["+experiment=sts", "model=tiny", "~logger", f"data.data_dir='{stsb_dir}'", "data.hub_id=null",
            "trainer.max_epochs=2", "data.limit_train_pairs=128", "data.limit_eval_pairs=48",
            "checkpoint_every_n_steps=3", "export=false", "++model.config_overrides.hidden_dropout_prob=0.1",
            "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false", *extra]


def _signal_at(step: int, marker: Path, name: str = "SIGKILL") -> list[str]:
    return [f"+callbacks.signal._target_={SIGNAL_AT}", f"+callbacks.signal.at_step={step}",
            f"+callbacks.signal.marker='{marker}'", f"+callbacks.signal.signal_name={name}"]


def _train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A run in a process of its own, with the repository on its path (it loads ``tests.helpers``)."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": path})


def _check_ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _assert_same_run(reference: Path, resumed: Path, resumed_at: list[int]) -> None:
    a = json.loads((reference / "results.json").read_text())
    b = json.loads((resumed / "results.json").read_text())
    assert {k: a[k] for k in SAME} == {k: b[k] for k in SAME}
    assert b["resumed_at_steps"] == resumed_at
    for name in ("best.ckpt", "last.ckpt"):
        x = torch.load(reference / "checkpoints" / name, weights_only=True)
        y = torch.load(resumed / "checkpoints" / name, weights_only=True)
        assert x["global_step"] == y["global_step"]
        for key, value in x["state_dict"].items():
            assert torch.equal(value, y["state_dict"][key]), f"{name}: {key} differs"
        first, second = x["optimizer_states"][0]["state"], y["optimizer_states"][0]["state"]
        assert all(torch.equal(first[p]["exp_avg_sq"], second[p]["exp_avg_sq"]) for p in first)


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, stsb_dir) -> Path:
    """The uninterrupted one-process run that the one-process tests compare with."""
    folder = tmp_path_factory.mktemp("uninterrupted") / "run"
    _check_ok(run_module("train", *_overrides(stsb_dir), f"hydra.run.dir='{folder}'", cwd=folder.parent))
    return folder


@pytest.mark.parametrize("trainer, kill_at, resumed_at", [
    # One process: epoch 2 is steps 9-16; checkpoints at 9 and 12 (every 3): killed at 14, resumed at 12.
    ("default", 14, 12),
    # Two processes: epoch 2 is steps 5-8; checkpoints at 4 (epoch end) and 6: killed at 7, resumed at 6.
    # A minute on 2 cores: make test-all runs it (the default run's 10 minutes are spent).
    pytest.param("ddp_sim", 7, 6, marks=pytest.mark.slow),
])
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, stsb_dir, trainer, kill_at, resumed_at,
                                                                     request):
    common = _overrides(stsb_dir, f"trainer={trainer}")
    if trainer == "default":
        reference = request.getfixturevalue("one_process_run")
    else:  # python -m train with trainer=ddp_sim: two CPU processes train and report
        reference = tmp_path / "reference"
        _check_ok(_train([*common, f"hydra.run.dir='{reference}'"], tmp_path))
        results = json.loads((reference / "results.json").read_text())
        assert results["epochs"] == 2 and len(results["validation_history"]) == 2
        assert results["steps"] == 8  # 128 pairs over 2 processes at batch 16: 4 steps an epoch, 64 pairs each

    killed = tmp_path / "killed"
    crash = [*common, *_signal_at(kill_at, tmp_path / "killed-marker")]
    done = _train([*crash, f"hydra.run.dir='{killed}'"], tmp_path)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert not (killed / "results.json").exists()
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == resumed_at
    assert not list((killed / "checkpoints").glob(".*partial"))  # written atomically: no half file left

    resume = [*crash, f"resume={killed}"]
    _check_ok(run_module("train", *resume, cwd=tmp_path) if trainer == "default" else _train(resume, tmp_path))
    _assert_same_run(reference, killed, [resumed_at])


@pytest.mark.parametrize("extra, name, stop_at, resumed_at", [
    # A validation after step 4: the stop waits for it (a resumed run takes a checkpoint's pending
    # validation for done, so a state saved before it would lose that validation).
    pytest.param(["trainer.val_check_interval=4", "checkpoint_every_n_steps=4"], "SIGTERM", 4, 4,
                 marks=pytest.mark.slow),
    # Two batches per step: a state saved between them would lose the first one's gradients.
    # (Both slow: variants of the tests above, left out of the default run's 10 minutes.)
    pytest.param(["++trainer.accumulate_grad_batches=2", "checkpoint_every_n_steps=1"], "SIGKILL", 3, 2,
                 marks=pytest.mark.slow),
])
def test_saves_wait_for_a_pending_validation_and_the_end_of_an_accumulation_window(
    tmp_path, stsb_dir, extra, name, stop_at, resumed_at,
):
    common = _overrides(stsb_dir, *extra)
    reference = tmp_path / "reference"
    _check_ok(run_module("train", *common, f"hydra.run.dir='{reference}'", cwd=tmp_path))
    stopped = tmp_path / "stopped"
    args = [*common, *_signal_at(stop_at, tmp_path / "marker", name), f"hydra.run.dir='{stopped}'"]
    done = _train(args, tmp_path) if name == "SIGKILL" else run_module("train", *args, cwd=tmp_path)
    assert done.returncode in (-signal.SIGKILL, 128 + signal.SIGTERM), done.stderr[-3000:]
    _check_ok(run_module("train", *args[:-1], f"resume={stopped}", cwd=tmp_path))
    _assert_same_run(reference, stopped, [resumed_at])


@pytest.mark.parametrize("name", ["SIGTERM", pytest.param("SIGINT", marks=pytest.mark.slow)])
def test_a_signal_saves_the_state_and_the_printed_command_resumes(tmp_path, stsb_dir, one_process_run, name):
    common = _overrides(stsb_dir)

    stopped = tmp_path / "stopped"
    # Step 5: mid epoch 1, between the checkpoints of steps 3 and 6, so only the signal's save has it.
    done = run_module("train", *common, *_signal_at(5, tmp_path / "marker", name), f"hydra.run.dir='{stopped}'",
                      cwd=tmp_path)
    assert done.returncode == 128 + signal.Signals[name], done.stderr[-3000:]
    assert torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    lines = done.stderr.splitlines()
    command = lines[lines.index("Continue this run with:") + 1].strip()
    assert command.endswith(f"resume={stopped}")
    assert f"Continue this run with: {command}" in (stopped / "__main__.log").read_text()  # the log says it too

    words = shlex.split(command)
    assert words[:3] == [Path(sys.executable).name, "-m", "train"]
    _check_ok(run_module("train", *words[3:], cwd=tmp_path))
    _assert_same_run(one_process_run, stopped, [5])


def test_slurm_requeue_saves_requeues_and_the_requeued_job_resumes_in_its_folder(tmp_path, stsb_dir, one_process_run,
                                                                                  monkeypatch):
    # A SLURM job as Lightning's SLURMEnvironment sees one, and an `scontrol` that records its call.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> '{tmp_path / 'scontrol.calls'}'\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for name, value in {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0",
                        "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(name, value)
    common = _overrides(stsb_dir, f"paths.log_dir='{tmp_path / 'logs'}'")

    job = [*common, *_signal_at(5, tmp_path / "marker", "SIGUSR1")]
    done = run_module("train", *job, cwd=tmp_path)
    assert done.returncode == 128 + signal.SIGUSR1, done.stderr[-3000:]
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", "4242"]
    [folder] = (tmp_path / "logs" / "sts" / "runs").glob("slurm-4242-*")  # named after the job and command
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _check_ok(run_module("train", *job, cwd=tmp_path))  # SLURM starts the same command again
    _assert_same_run(one_process_run, folder, [5])


def test_resume_refuses_a_folder_without_a_checkpoint_and_a_changed_config(tmp_path, stsb_dir):
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "checkpoints" / "best.ckpt").touch()
    done = run_module("train", *_overrides(stsb_dir), f"resume={empty}", cwd=tmp_path)
    assert done.returncode == 2
    assert f"resume={empty}: no checkpoints/last.ckpt in that folder (it has best.ckpt" in done.stderr
    assert not list(tmp_path.glob("logs")) and not (empty / "results.json").exists()  # no fresh run started

    done = run_module("train", *_overrides(stsb_dir), f"resume={tmp_path / 'missing'}", cwd=tmp_path)
    assert done.returncode == 2 and "no such folder" in done.stderr

    run = tmp_path / "run"
    done = run_module("train", *_overrides(stsb_dir, "trainer.max_epochs=1"), f"hydra.run.dir='{run}'", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    changed = run_module("train", *_overrides(stsb_dir, "trainer.max_epochs=1", "model.lr=0.5"), f"resume={run}",
                         cwd=tmp_path)
    assert changed.returncode == 2
    assert "differs from the run's in 1 setting(s): model.lr: 0.0001 in the run, 0.5 now" in changed.stderr

    # How long it trains may change: a finished one-epoch run goes on for a second epoch.
    longer = run_module("train", *_overrides(stsb_dir, "trainer.max_epochs=2"), f"resume={run}", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 2 and [h["epoch"] for h in results["validation_history"]] == [0, 1]
    assert results["resumed_at_steps"] == [8] and "test/spearman" in results["zero_shot"]


def test_a_resumed_run_continues_the_wandb_run_of_its_checkpoint(tmp_path, compose_cfg):
    from types import SimpleNamespace

    from pytorch_lightning.loggers import WandbLogger

    from lightning_modules.callbacks import RunCheckpoint
    from train.resume import continue_wandb_run

    # The id the logger runs under goes into every last.ckpt ...
    checkpoint = {}
    logger = WandbLogger(id="run-abc123", offline=True, save_dir=str(tmp_path))
    RunCheckpoint(str(tmp_path)).on_save_checkpoint(SimpleNamespace(loggers=[logger]), None, checkpoint)
    assert checkpoint["wandb_run_id"] == "run-abc123"
    (tmp_path / "checkpoints").mkdir()
    torch.save(checkpoint, tmp_path / "checkpoints" / "last.ckpt")

    # ... and a resume with logger=wandb logs into that run instead of starting one.
    cfg = compose_cfg(["+experiment=sts", "model=tiny", "logger=wandb"], tmp_path)
    assert "id" not in cfg.logger.wandb
    continue_wandb_run(cfg, tmp_path)
    assert cfg.logger.wandb.id == "run-abc123" and cfg.logger.wandb.resume == "allow"
    without = compose_cfg(["+experiment=sts", "model=tiny"], tmp_path)  # no W&B logger: nothing to continue
    continue_wandb_run(without, tmp_path)
    assert "wandb" not in without.logger
