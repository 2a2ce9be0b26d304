"""httpx helpers shared by the sync and async clients (the I/O parts differ, these do not)."""

from __future__ import annotations

from typing import Any

import httpx

from sage.unified.sdk.client._core import ClientCore
from sage.unified.sdk.client._errors import (
    AuthenticationError,
    InvalidResponseError,
    NotFoundError,
    PermissionDeniedError,
)

__all__ = ["ERROR_BODY_LIMIT", "PERMANENT_ERRORS", "decode_json", "request_timeout"]

ERROR_BODY_LIMIT = 64 * 1024
"""Bytes of an error body read for the exception message."""

PERMANENT_ERRORS = (AuthenticationError, PermissionDeniedError, NotFoundError)
"""Answers a retry will not change soon (no admin scope, no management API): poll slowly."""


def request_timeout(core: ClientCore, remaining: float) -> httpx.Timeout:
    """The httpx timeout of one attempt with ``remaining`` seconds of the call's deadline.

    Reads also stop at the stall deadline: an engine that hangs (SIGSTOPped, wedged) keeps
    its connection open and would otherwise hold the call for the whole deadline.
    """
    stall = core.config.stall_timeout_s
    read = remaining if stall is None else min(remaining, stall)
    return httpx.Timeout(
        connect=min(core.config.connect_timeout, remaining),
        read=read,
        write=remaining,
        pool=remaining,
    )


def decode_json(response: httpx.Response) -> Any:
    """The response's JSON, or :class:`InvalidResponseError` naming the URL."""
    try:
        return response.json()
    except ValueError as exc:
        raise InvalidResponseError(
            f"{response.request.url} answered with invalid JSON: {exc}"
        ) from exc
