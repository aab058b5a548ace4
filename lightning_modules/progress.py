"""Progress that reads well both in a terminal and in a log file.

In a terminal, a tqdm bar. Written to a file or a pipe (``python -m train ... > run.log 2>&1``),
a bar's carriage-return redraws would pile up as thousands of updates, so instead: a plain log
line every ``PLAIN_EVERY_SECONDS`` seconds and one at the end.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

# Seconds between two plain progress lines: a ten-minute job writes about twenty.
PLAIN_EVERY_SECONDS = 30.0


def writes_to_terminal() -> bool:
    """Whether progress goes to a terminal (stderr is a TTY), where a redrawn bar is right."""
    return sys.stderr.isatty()


def progress(
    iterable: Iterable, desc: str, total: int | None = None, unit: str = "batch", disable: bool = False,
    leave: bool = True,
) -> Iterable:
    """``iterable``, reporting its progress as ``desc``: a tqdm bar in a terminal, plain lines elsewhere."""
    if disable:
        return iterable
    if writes_to_terminal():
        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave)
    return plain_progress(iterable, desc, total if total is not None else _length(iterable), unit)


def plain_progress(
    iterable: Iterable, desc: str, total: int | None, unit: str = "batch", every_seconds: float = PLAIN_EVERY_SECONDS,
) -> Iterator:
    """Yield from ``iterable``; log ``desc: done/total unit (percent), rate, time left`` every
    ``every_seconds``, and a last line with the count and the time taken."""
    started = last = time.perf_counter()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= every_seconds:
            last = now
            log.info("%s", progress_line(desc, done, total, now - started, unit))
    log.info("%s: %d %s in %s", desc, done, unit if done == 1 else _plural(unit),
             format_seconds(time.perf_counter() - started))


def progress_line(
    desc: str, done: int, total: int | None, elapsed: float, unit: str = "batch", done_before: int = 0,
) -> str:
    """``desc: 120/360 batches (33%), 3.6 batch/s, 1m07s left`` (without a total: count and rate).
    ``done_before`` of the ``done`` were done before ``elapsed`` started (a resumed epoch)."""
    rate = (done - done_before) / elapsed if elapsed > 0 else 0.0
    if not total:
        return f"{desc}: {done} {_plural(unit)}, {rate:.2f} {unit}/s"
    left = (total - done) / rate if rate > 0 else float("inf")
    return (f"{desc}: {done}/{total} {_plural(unit)} ({100 * done / total:.0f}%), {rate:.2f} {unit}/s, "
            f"{format_seconds(left)} left")


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m07s``, ``1h02m``."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")


def _length(iterable: Iterable) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None
