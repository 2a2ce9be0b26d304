"""Helpers shared by the command modules: where the gateway is, output, client errors."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from cyclopts import Parameter

from sage.unified.cli._daemon import DaemonFiles, running_record
from sage.unified.cli.errors import CliError, UsageError

__all__ = [
    "DEFAULT_GATEWAY_URL",
    "AdminTokenOpt",
    "GatewayTarget",
    "GatewayUrlOpt",
    "VerboseOpt",
    "admin_token",
    "choose_gateway",
    "client_errors",
    "gateway_url",
    "not_sage",
    "print_json",
    "resolve_gateway",
]

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class GatewayTarget:
    """The gateway a command talks to, and why that one.

    Attributes:
        url: its base URL.
        source: where the URL came from, for ``--verbose`` (``"--url"``,
            ``"SAGE_GATEWAY_URL"``, ``"the gateway `sage gateway start` runs"``,
            ``"the default"``).
        recorded: the URL of the gateway that ``sage gateway start`` runs from this
            ``SAGE_HOME``, if one runs.
    """

    url: str
    source: str
    recorded: str | None = None

    @property
    def mismatch(self) -> str | None:
        """A warning when the running gateway is not the one used, or ``None``."""
        if self.recorded is None or self.recorded == self.url or self.source == "--url":
            return None
        return (
            f"talking to {self.url} ({self.source}), but the gateway `sage gateway start` "
            f"runs from this SAGE_HOME is at {self.recorded}"
        )


GatewayUrlOpt = Annotated[
    str | None,
    Parameter(
        help="Gateway URL (default: SAGE_GATEWAY_URL, else the gateway `sage gateway start` "
        "runs, else http://127.0.0.1:8000)."
    ),
]
AdminTokenOpt = Annotated[str | None, Parameter(help="Admin token (default SAGE_ADMIN_TOKEN).")]
VerboseOpt = Annotated[
    bool, Parameter(negative="", help="Say which gateway is used and why (on stderr).")
]


def choose_gateway(url: str | None, env_value: str | None, recorded: str | None) -> GatewayTarget:
    """One rule for every command: ``--url``, else ``SAGE_GATEWAY_URL`` (first entry),
    else the gateway ``sage gateway start`` runs from this ``SAGE_HOME``, else the
    default (pure).

    Why this order: a flag is the most explicit; ``SAGE_GATEWAY_URL`` is an operator's
    standing choice (a remote head node) and means the same to the SDK; the recorded
    gateway is what this machine started, wherever its port is; the default comes last.
    """
    recorded = recorded.rstrip("/") if recorded else None
    first = (env_value or "").split(",")[0].strip()
    if url:
        return GatewayTarget(url.rstrip("/"), "--url", recorded)
    if first:
        return GatewayTarget(first.rstrip("/"), "SAGE_GATEWAY_URL", recorded)
    if recorded:
        return GatewayTarget(recorded, "the gateway `sage gateway start` runs", recorded)
    return GatewayTarget(DEFAULT_GATEWAY_URL, "the default", None)


def resolve_gateway(url: str | None = None, *, verbose: bool = False) -> GatewayTarget:
    """:func:`choose_gateway` with this environment and ``SAGE_HOME``; prints the choice
    with ``verbose`` and a warning (stderr) when the running gateway is another one."""
    record = running_record(DaemonFiles("gateway"))
    recorded = record.url if record is not None else None
    target = choose_gateway(url, os.environ.get("SAGE_GATEWAY_URL"), recorded)
    if verbose:
        print(f"gateway: {target.url} (from {target.source})", file=sys.stderr)
    if target.mismatch:
        print(f"warning: {target.mismatch}", file=sys.stderr)
    return target


def gateway_url(url: str | None = None, *, verbose: bool = False) -> str:
    """The URL of :func:`resolve_gateway`."""
    return resolve_gateway(url, verbose=verbose).url


def admin_token(token: str | None = None) -> str | None:
    return token or os.environ.get("SAGE_ADMIN_TOKEN") or None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(msgspec.to_builtins(data), indent=2, sort_keys=True) + "\n")


@contextmanager
def client_errors(
    url: str, *, what: str = "gateway", start: str = "sage gateway start"
) -> Iterator[None]:
    """Turn SDK errors into one-line CLI errors (no traceback ever reaches the user)."""
    from sage.unified.sdk.client import (
        APIStatusError,
        GatewayUnreachableError,
        InvalidResponseError,
        SageClientError,
    )

    try:
        yield
    except GatewayUnreachableError:
        raise UsageError(f"The {what} is not running at {url} — start it with `{start}`.") from None
    except InvalidResponseError:
        raise UsageError(not_sage(url, what, "an answer that is not a SAGE reply")) from None
    except APIStatusError as exc:
        if exc.body is None:  # every SAGE component answers errors in JSON
            answer = f"HTTP {exc.status_code}: {exc.message}"
            raise UsageError(not_sage(url, what, answer)) from None
        hint = ""
        if exc.status_code == 401:
            hint = " (set SAGE_ADMIN_TOKEN or pass --token)"
        raise CliError(f"{exc}{hint}") from None
    except SageClientError as exc:
        raise CliError(str(exc)) from None


def not_sage(url: str, what: str, answer: str) -> str:
    """The one line for a URL where something other than a SAGE component answers."""
    return (
        f"{url} does not look like a SAGE {what} (it answered {answer}); "
        "check --url and SAGE_GATEWAY_URL"
    )


def make_console() -> Any:
    """A rich console; when output is not a terminal, wide enough that ids are never cut."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=240)
