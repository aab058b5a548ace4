"""A run killed with SIGKILL half-way and resumed, against the same run uninterrupted.

Runs, one after the other, with the same seed and overrides:

1. **uninterrupted**: ``python -m train +experiment=sts`` (what ``make train`` runs);
2. **killed**: the same command, killed from outside with SIGKILL ``--kill-delay`` seconds
   after its ``checkpoints/last.ckpt`` was written for the ``--kill-after-saves``-th time
   (by default the 4th: the end of epoch 2 of 4 in the STS recipe, about half-way), so that it
   dies mid-epoch with work done after its last checkpoint;
3. **resumed**: ``python -m train +experiment=sts resume=<the killed run's folder>``.

It reports each run's test and validation Spearman, training time (``train_time_s``, which a
resumed run counts from the start of the run, without the work lost), and wall time, the
seconds lost (from the last checkpoint's write to the kill), and the checks of issue 18: the
resumed run's test Spearman equals the uninterrupted one's, and the killed + resumed wall time
is within 10 % of the uninterrupted wall time plus the seconds lost. Printed as a table and as
JSON, the JSON also written to ``--out``. Timings are reported, never judged by a test.

    python -m benchmarks.resume_after_kill                      # the STS recipe, about 20 minutes on 2 cores
    python -m benchmarks.resume_after_kill --override model=tiny \\
        --override checkpoint_every_n_steps=100 --kill-after-saves 3 --kill-delay 1   # a quick check
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _command(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "train", "+experiment=sts", "++trainer.enable_progress_bar=false", *overrides]


def _run(command: list[str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed with status {done.returncode}; see {log}")
    return time.perf_counter() - started


def _run_and_kill(command: list[str], run_dir: Path, log: Path, after_saves: int, delay: float) -> tuple[float, float]:
    """Start ``command``; SIGKILL it ``delay`` s after ``after_saves`` writes of last.ckpt.
    Returns (wall seconds until the kill, seconds from the last write to the kill)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    started = time.perf_counter()
    seen, saves, saved_at = None, 0, 0.0
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        while process.poll() is None:
            stamp = last.stat().st_mtime_ns if last.exists() else None
            if stamp is not None and stamp != seen:
                seen, saves, saved_at = stamp, saves + 1, time.perf_counter()
            if saves >= after_saves and time.perf_counter() - saved_at >= delay:
                process.send_signal(signal.SIGKILL)
                process.wait()
                killed = time.perf_counter()
                return killed - started, killed - saved_at
            time.sleep(0.2)
    sys.exit(f"the run ended (status {process.returncode}) before its checkpoint was written {after_saves} times; "
             f"see {log}")


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    parser.add_argument("--kill-after-saves", type=int, default=4)
    parser.add_argument("--kill-delay", type=float, default=30.0, help="seconds after that save")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "resume_after_kill.json")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="resume-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    whole, broken = work / "uninterrupted", work / "killed"

    wall_whole = _run(_command([*args.override, f"hydra.run.dir={whole}"]), work / "uninterrupted.log")
    wall_killed, lost = _run_and_kill(_command([*args.override, f"hydra.run.dir={broken}"]), broken,
                                      work / "killed.log", args.kill_after_saves, args.kill_delay)
    wall_resumed = _run(_command([*args.override, f"resume={broken}"]), work / "resumed.log")

    a, b = _results(whole), _results(broken)
    figures = {
        "command": "python -m train +experiment=sts " + " ".join(args.override),
        "uninterrupted": {"test/spearman": a["test/spearman"], "val/spearman": a["val/spearman"],
                          "train_time_s": a["train_time_s"], "wall_time_s": round(wall_whole, 1)},
        "killed_and_resumed": {"test/spearman": b["test/spearman"], "val/spearman": b["val/spearman"],
                               "train_time_s": b["train_time_s"], "resumed_at_steps": b["resumed_at_steps"],
                               "wall_time_killed_s": round(wall_killed, 1),
                               "wall_time_resumed_s": round(wall_resumed, 1),
                               "seconds_lost": round(lost, 1)},
    }
    ratio = (wall_killed + wall_resumed) / (wall_whole + lost)
    figures["checks"] = {
        "same_test_spearman": a["test/spearman"] == b["test/spearman"],
        "wall_ratio_killed_plus_resumed_over_uninterrupted_plus_lost": round(ratio, 3),
        "within_10_percent": ratio <= 1.10,
    }
    print(f"{'run':<22}{'test Sp.':>10}{'val Sp.':>10}{'train s':>10}{'wall s':>10}")
    print(f"{'uninterrupted':<22}{a['test/spearman']:>10.2f}{a['val/spearman']:>10.2f}{a['train_time_s']:>10.1f}"
          f"{wall_whole:>10.1f}")
    print(f"{'killed + resumed':<22}{b['test/spearman']:>10.2f}{b['val/spearman']:>10.2f}{b['train_time_s']:>10.1f}"
          f"{wall_killed + wall_resumed:>10.1f}")
    print(f"killed at {wall_killed:.1f} s, {lost:.1f} s after its last checkpoint; resumed at steps "
          f"{b['resumed_at_steps']}; (killed + resumed) / (uninterrupted + lost) wall time = {ratio:.3f}")
    print(json.dumps(figures, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"runs and logs in {work}")


if __name__ == "__main__":
    main()
