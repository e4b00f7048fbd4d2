"""User-facing errors.

Anything the user can fix (bad path, bad plan, unknown preset) raises ``VskipError``;
the CLI prints its message on one line and exits with status 2. Everything else is a
bug and keeps its traceback.
"""


class VskipError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""

    exit_code = 2
