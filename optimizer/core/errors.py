"""Errors a user can act on.

Every failure that bad input can cause is raised as an `OptimizerError`: the message says
what was wrong, and `hint` says what to do. The CLI prints both and exits non-zero without a
traceback; library users catch the class.
"""

from __future__ import annotations


class OptimizerError(Exception):
    """A user-facing error: `message` names the problem, `hint` the remedy."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class InputError(OptimizerError):
    """A path, file or option given by the user is missing or malformed."""


class UnsupportedModelError(OptimizerError):
    """The model's architecture or a feature of it is not supported."""


class EngineError(OptimizerError):
    """An engine directory is incomplete, corrupt or of a format this version cannot read."""
