"""What every entry point shares: a user error becomes one paragraph and exit status 2, not a traceback."""

from __future__ import annotations

import functools
import logging
import re
import sys
import warnings

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf.errors import MissingMandatoryValue

from lightning_modules.errors import SettingsError, UserError

# What the console gets by print (the summary, a user error, a bug's traceback), for the run's
# log file too: conf/hydra/default.yaml sends this logger to the file handler only.
run_log = logging.getLogger("train.run_log")


def exit_on_user_error(task):
    """Wrap a Hydra task function (under ``@hydra.main``): a ``UserError`` (raised directly, or inside a
    constructor that Hydra's ``instantiate`` called, which wraps it) prints ``error: <message>`` to
    stderr and exits with status 2. Any other exception is a bug and keeps its traceback."""

    @functools.wraps(task)
    def run(*args, **kwargs):
        silence_known_noise()
        try:
            return task(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - re-raised unless a user error is inside
            cause = user_error_in(error)
            if cause is None:
                run_log.exception("failed with a bug, not bad input:")
                raise
            # Bad input is the user's to fix: one clear paragraph, not a library traceback.
            run_log.error("error: %s", cause)
            print(f"error: {cause}", file=sys.stderr)
            sys.exit(2)

    return run


def silence_known_noise() -> None:
    """Keep out of a run's console and log what no user can act on: Lightning's advertisements
    for its cloud products, and a deprecation inside Lightning itself (``isinstance(treespec,
    LeafSpec)``, raised by torch >= 2.10 on every loop). Everything else stays."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    lightning_info = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _WithoutAdvertisements) for f in lightning_info.filters):
        lightning_info.addFilter(_WithoutAdvertisements())


class _WithoutAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def user_error_in(error: BaseException) -> UserError | None:
    """``error`` itself or the first ``UserError`` among its causes (Hydra's ``InstantiationException``
    wraps what a constructor raised), else None. A required setting left out of the command line
    (``???`` in the tool's config) is one too."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        if isinstance(error, MissingMandatoryValue):
            tool = sys.argv[0].rsplit("/", 1)[-1].removesuffix(".py") if sys.argv else "the command"
            return SettingsError(f"missing setting: {error.full_key}= is required (the settings of "
                                 f"train.{tool}: conf/tools/{tool}.yaml)")
        seen.add(id(error))
        error = error.__cause__
    return None


def literal_text_arguments(argv: list[str], keys: tuple[str, ...]) -> list[str]:
    """``argv`` with each ``key=TEXT`` of ``keys`` turned into a Hydra quoted string, so that any
    text is taken as it is: an apostrophe (``a=The man's guitar``), brackets, commas, ``=`` or
    ``${...}`` would otherwise be read as Hydra's override grammar. A value already written as
    a Hydra quoted string (``a="'...'"``) is left as it is."""
    pattern = re.compile(rf"^({'|'.join(map(re.escape, keys))})=(.*)$", re.DOTALL)
    return [_quoted(match) if (match := pattern.match(arg)) else arg for arg in argv]


def _quoted(match: re.Match) -> str:
    key, text = match.groups()
    if _is_hydra_quoted(text):
        return f"{key}={text}"
    # Hydra unescapes backslashes only before a quote (and before the closing one); OmegaConf
    # would resolve ${...}: escape exactly those.
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    escaped = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", escaped)
    return f"{key}='{escaped}'"


def _is_hydra_quoted(text: str) -> bool:
    if len(text) < 2 or text[0] not in "'\"" or text[-1] != text[0]:
        return False
    try:
        OverridesParser.create().parse_override(f"x={text}")
    except Exception:  # noqa: BLE001 - not a valid quoted string: take it literally
        return False
    return True
