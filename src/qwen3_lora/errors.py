"""The one rule for failures a user can fix: a `UserError` carries a message that says what was
wrong, where, and what to do; the CLI prints it alone and exits non-zero, with no traceback."""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input, files or setup; the message says how to fix it."""
