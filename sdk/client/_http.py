"""httpx helpers shared by the sync and async clients (the I/O parts differ, these do not)."""

from __future__ import annotations

from typing import Any, NamedTuple

import httpx

from sage.unified.sdk.client._core import ClientCore
from sage.unified.sdk.client._errors import (
    APIStatusError,
    ConfigurationError,
    InvalidResponseError,
    status_error,
)
from sage.unified.sdk.client._failover import RETRYABLE_STATUSES, parse_retry_after

__all__ = [
    "ERROR_BODY_LIMIT",
    "RefusedAttempt",
    "attempt_request",
    "decode_json",
    "refused_attempt",
    "request_timeout",
    "unsupported_url",
]

ERROR_BODY_LIMIT = 64 * 1024
"""Bytes of an error body read for the exception message."""


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


def attempt_request(
    http: httpx.Client | httpx.AsyncClient,
    core: ClientCore,
    method: str,
    url: str,
    body: Any | None,
    remaining: float,
) -> httpx.Request:
    """One inference attempt's request, with ``remaining`` seconds of the call's deadline."""
    return http.build_request(
        method,
        url,
        json=body,
        headers=core.inference_headers(),
        timeout=request_timeout(core, remaining),
    )


def unsupported_url(url: str, exc: httpx.UnsupportedProtocol) -> ConfigurationError:
    """The error for a target URL httpx cannot send to (a bad scheme)."""
    return ConfigurationError(f"unsupported URL {url!r}: {exc}")


class RefusedAttempt(NamedTuple):
    """A non-2xx answer that another attempt may fix."""

    error: APIStatusError
    reason: str
    """Why the attempt failed, for the attempt records."""
    retry_after: float | None
    """The server's ``Retry-After``, in seconds."""


def refused_attempt(response: httpx.Response, content: bytes, url: str) -> RefusedAttempt:
    """Classify a non-2xx answer whose body (up to the limit) is ``content``.

    Raises:
        APIStatusError: the status is not one a retry can fix.
    """
    error = status_error(response.status_code, content, url=url)
    if response.status_code not in RETRYABLE_STATUSES:
        raise error
    return RefusedAttempt(
        error,
        f"HTTP {response.status_code}: {error.message}",
        parse_retry_after(response.headers.get("retry-after")),
    )
