"""What every entry point shares: a user error becomes one paragraph and exit status 2, not a traceback."""

from __future__ import annotations

import functools
import sys

from lightning_modules.errors import UserError


def exit_on_user_error(task):
    """Wrap a Hydra task function (under ``@hydra.main``): a ``UserError`` (raised directly, or inside a
    constructor that Hydra's ``instantiate`` called, which wraps it) prints ``error: <message>`` to
    stderr and exits with status 2. Any other exception is a bug and keeps its traceback."""

    @functools.wraps(task)
    def run(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - re-raised unless a user error is inside
            cause = user_error_in(error)
            if cause is None:
                raise
            # Bad input is the user's to fix: one clear paragraph, not a library traceback.
            print(f"error: {cause}", file=sys.stderr)
            sys.exit(2)

    return run


def user_error_in(error: BaseException) -> UserError | None:
    """``error`` itself or the first ``UserError`` among its causes (Hydra's ``InstantiationException``
    wraps what a constructor raised), else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__
    return None
