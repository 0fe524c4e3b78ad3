"""The two error families every command maps to an exit code (:func:`harness.cli.run_main`):
bad input (exit 2) and a failed check (exit 1). Below every other module of the harness, so a
library raises them without importing the command boundary."""
from __future__ import annotations


class InputError(Exception):
    """Bad input (missing file, bad checkpoint, unknown option): one line on stderr, exit 2."""


class CheckFailed(Exception):
    """The command ran and a check it exists to make failed: one line on stderr, exit 1."""
