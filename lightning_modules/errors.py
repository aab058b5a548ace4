"""Errors that are the user's to fix: bad data, a model that cannot be loaded, an export that
cannot be written, a bad command-line text.

Every one derives from ``UserError``. The entry points in ``train/`` turn any ``UserError``
into a one-paragraph message and exit status 2 (``train.cli.exit_on_user_error``); anything
else is a bug and keeps its traceback. Messages name the file, row and column, what was
expected, and what to do.
"""


class UserError(Exception):
    """Input the user can fix; the message says what was wrong and how to fix it."""


class DataError(UserError, ValueError):
    """Input data that cannot be used; the message names the file, row and column."""


class ModelLoadError(UserError, RuntimeError):
    """The encoder, its tokenizer, an export or a checkpoint could not be loaded."""


class ExportError(UserError, RuntimeError):
    """The export cannot be written (the output exists, the source is not ours, ...)."""


class InputError(UserError, ValueError):
    """A text given to score or explain is empty, or not one text."""


class SettingsError(UserError, ValueError):
    """Settings that cannot work (a batch size of 0, a negative learning rate, a run folder that cannot be resumed)."""


class NonFiniteTrainingError(UserError, RuntimeError):
    """Training produced a non-finite loss or gradients for too many steps in a row."""
