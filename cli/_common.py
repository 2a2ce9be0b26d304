"""Helpers shared by the command modules: where the gateway is, output, client errors."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from sage.unified.cli.errors import CliError, UsageError

__all__ = [
    "DEFAULT_GATEWAY_URL",
    "admin_token",
    "client_errors",
    "gateway_url",
    "print_json",
]

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8000"


def gateway_url(url: str | None = None) -> str:
    """The gateway to talk to: ``--url``, else ``SAGE_GATEWAY_URL`` (first entry), else the default."""
    if url:
        return url.rstrip("/")
    env = os.environ.get("SAGE_GATEWAY_URL", "")
    first = env.split(",")[0].strip()
    return (first or DEFAULT_GATEWAY_URL).rstrip("/")


def admin_token(token: str | None = None) -> str | None:
    return token or os.environ.get("SAGE_ADMIN_TOKEN") or None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(msgspec.to_builtins(data), indent=2, sort_keys=True) + "\n")


@contextmanager
def client_errors(
    url: str, *, what: str = "gateway", start: str = "sage gateway start"
) -> Iterator[None]:
    """Turn SDK errors into one-line CLI errors (no traceback ever reaches the user)."""
    from sage.unified.sdk.client import APIStatusError, GatewayUnreachableError, SageClientError

    try:
        yield
    except GatewayUnreachableError:
        raise UsageError(f"The {what} is not running at {url} — start it with `{start}`.") from None
    except APIStatusError as exc:
        hint = ""
        if exc.status_code == 401:
            hint = " (set SAGE_ADMIN_TOKEN or pass --token)"
        raise CliError(f"{exc}{hint}") from None
    except SageClientError as exc:
        raise CliError(str(exc)) from None


def make_console() -> Any:
    """A rich console; when output is not a terminal, wide enough that ids are never cut."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=240)
