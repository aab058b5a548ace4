"""Progress in a log file: plain lines every so often, never a redrawn bar."""

from __future__ import annotations

import logging
import re

import pytest
from tqdm.auto import tqdm

from lightning_modules import progress as progress_module
from lightning_modules.progress import format_seconds, plain_progress, progress
from tests.helpers.cli import run_module
from tests.helpers.models import tiny_model


class _Clock:
    """A ``time.perf_counter`` that moves ``step`` seconds at each call."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_plain_progress_logs_a_line_every_interval_and_one_at_the_end(monkeypatch, caplog):
    monkeypatch.setattr(progress_module.time, "perf_counter", _Clock(10.0))
    with caplog.at_level(logging.INFO, logger="lightning_modules.progress"):
        assert list(plain_progress(range(12), "encoding", total=12, every_seconds=30)) == list(range(12))
    lines = [r.getMessage() for r in caplog.records]
    # 10 s per item: a line every third item (30 s), then the closing one.
    assert lines[0] == "encoding: 3/12 batches (25%), 0.10 batch/s, 1m30s left"
    assert len(lines) == 5 and lines[-1] == "encoding: 12 batches in 2m10s"
    assert not any("\r" in line for line in lines)


def test_progress_is_a_bar_in_a_terminal_and_plain_lines_elsewhere(monkeypatch):
    monkeypatch.setattr(progress_module, "writes_to_terminal", lambda: True)
    assert isinstance(progress(range(3), "x"), tqdm)
    monkeypatch.setattr(progress_module, "writes_to_terminal", lambda: False)
    assert not isinstance(progress(range(3), "x"), tqdm) and list(progress(range(3), "x")) == [0, 1, 2]
    assert progress(range(3), "x", disable=True) == range(3)
    assert [format_seconds(s) for s in (4.4, 187, 3725, float("inf"))] == ["4s", "3m07s", "1h02m", "?"]


@pytest.mark.training
def test_evaluate_into_a_file_writes_a_few_lines_not_a_bar(tmp_path, minilm_path, stsb_dir):
    model = tiny_model(minilm_path).eval()
    model.save_pretrained(tmp_path / "model")
    # STS-B test: 1,379 pairs, above the count from which encoding shows its progress.
    done = run_module("train.evaluate", f"model={tmp_path / 'model'}", f"tasks=[{stsb_dir}]", "out=null", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "\r" not in done.stderr
    encoding = [line for line in done.stderr.splitlines() if re.search(r"encoding.*batch", line)]
    assert 2 <= len(encoding) <= 6, done.stderr[-3000:]  # both sides' closing line, a periodic one on a slow machine


@pytest.mark.training
def test_training_into_a_file_logs_epochs_and_validations_as_lines(compose_cfg, tmp_path, stsb_dir, capfd, caplog):
    from train.pipeline import run

    cfg = compose_cfg(["+experiment=sts", "model=tiny", f"data.data_dir='{stsb_dir}'", "data.hub_id=null", "~logger",
                       "trainer.max_epochs=1", "data.limit_train_pairs=64", "data.limit_eval_pairs=32", "export=false"],
                      tmp_path)
    assert "enable_progress_bar" not in cfg.trainer  # Lightning's default: a bar, which a file must not get
    with caplog.at_level(logging.INFO):
        run(cfg)
    assert "\r" not in capfd.readouterr().err
    messages = [r.getMessage() for r in caplog.records if r.name == "lightning_modules.callbacks.plain_progress"]
    assert any(re.match(r"epoch 1/1: done in \d+s; train/loss \S+", m) for m in messages), messages
    assert any(re.match(r"validation: done in \d+s; val/pearson \S+, val/spearman \S+", m) for m in messages)
    assert any(m.startswith("test: done in") for m in messages)
