"""benchmarks/sts_vs_sentence_transformers.py: the per-seed summary, the ratios of means, and the
runs that a killed benchmark keeps."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.sts_vs_sentence_transformers import digest, earlier_runs, format_table, ratios, summarize, write_report

OURS, THEIRS = "ours (MaxSim, Lightning)", "theirs (sentence-transformers)"


def _run(system, loss, seed, val, test, speed):
    return {"system": system, "loss": loss, "seed": seed, "val_spearman": val, "test_spearman": test,
            "train_pairs_per_second": speed, "epochs": 4, "batch_size": 16}


RUNS = [_run(OURS, "maxsim cosent", 42, 88.0, 87.0, 50.0), _run(THEIRS, "cos cosent", 42, 87.0, 86.0, 100.0),
        _run(OURS, "maxsim cosent", 43, 89.0, 88.0, 52.0), _run(THEIRS, "cos cosent", 43, 87.5, 86.5, 98.0),
        _run(OURS, "maxsim cosent", 44, 88.5, 86.5, 48.0), _run(THEIRS, "cos cosent", 44, 86.5, 85.0, 102.0)]


def test_summary_is_the_mean_and_sample_std_over_seeds_and_ratios_compare_means():
    ours, theirs = summarize(RUNS)
    assert (ours["system"], ours["seeds"], theirs["seeds"]) == (OURS, [42, 43, 44], [42, 43, 44])
    assert ours["test_spearman_mean"] == pytest.approx((87.0 + 88.0 + 86.5) / 3, abs=0.005)
    deviations = [x - 87.1666667 for x in (87.0, 88.0, 86.5)]
    assert ours["test_spearman_std"] == pytest.approx(math.sqrt(sum(d * d for d in deviations) / 2), abs=0.005)
    assert theirs["val_spearman_mean"] == 87.0
    ratio = ratios([ours, theirs])["cosent"]
    assert ratio["test_spearman_ours_minus_theirs"] == pytest.approx(87.17 - 85.83, abs=0.011)
    assert ratio["val_spearman_ours_minus_theirs"] == pytest.approx(88.5 - 87.0, abs=0.011)
    assert ratio["train_pairs_per_second_ours_over_theirs"] == pytest.approx(0.5)
    table = format_table(RUNS, [ours, theirs], ratios([ours, theirs]))
    assert "42,43,44" in table and "test Spearman ours - theirs = +1.34" in table
    one_seed = summarize(RUNS[:2])[0]
    assert one_seed["test_spearman_std"] is None and one_seed["test_spearman_mean"] == 87.0


def test_a_killed_benchmark_keeps_the_runs_it_wrote(tmp_path):
    out = tmp_path / "bench.json"
    assert earlier_runs(out) == []  # nothing written yet
    runs = [{**run, "settings": digest({"epochs": 4})} for run in RUNS[:3]]
    write_report(out, {"epochs": 4}, runs)
    assert json.loads(out.read_text())["runs"] == runs and not list(tmp_path.glob("*.partial"))
    assert earlier_runs(out) == runs
    write_report(out, {"epochs": 4}, RUNS[:3])  # written before runs carried their settings: not kept
    assert earlier_runs(out) == []
    out.write_text("{truncated")
    assert earlier_runs(out) == []
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1}) != digest({"a": 1, "b": 3})


def test_a_long_cell_widens_its_column_instead_of_running_into_the_next():
    long_loss = "hybrid 0.5 cosent ema 0.999 and then some more words"
    runs = [_run(OURS, long_loss, 42, 89.5, 85.87, 59.4), _run(THEIRS, "cos cosent", 42, 87.98, 86.62, 20.0)]
    summaries = summarize(runs)
    lines = format_table(runs, summaries, ratios(summaries)).splitlines()
    for line in lines:
        if long_loss in line:
            # The loss is followed by blanks, and the next columns (seed 42 or the seeds "42") stay whole.
            after = line.split(long_loss, 1)[1]
            assert after.startswith("  ") and after.split()[0] == "42"
    assert sum(long_loss in line for line in lines) == 2  # the run and its summary
    header, rule = lines[0], lines[1]
    assert len(rule) == len(header) == len(lines[2])
