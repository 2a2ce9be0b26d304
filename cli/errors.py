"""Errors the CLI turns into one line on stderr and an exit code (never a traceback).

::

    CliError                 exit 1: a command failed; the message says what to do
    └── UsageError           exit 2: the command cannot run as asked (bad flag value,
                             nothing to talk to: "the gateway is not running …")
"""

from __future__ import annotations

__all__ = ["CliError", "UsageError"]


class CliError(Exception):
    """A command failed; ``str(error)`` is the one line shown to the user."""

    exit_code = 1


class UsageError(CliError):
    """The command cannot run as asked."""

    exit_code = 2
