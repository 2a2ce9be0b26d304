"""The client's error hierarchy (pure: no I/O).

Every error the SDK raises derives from :class:`SageClientError`::

    SageClientError                   root; catch this to catch everything below
    ├── ConfigurationError            bad or missing settings (no gateway URL, bad scheme)
    ├── ModelNotSpecifiedError        ``model`` omitted and several models are served
    ├── NoBackendAvailableError       nothing served the model, or every attempt failed
    │                                 before the first response byte (``.attempts``)
    ├── GatewayUnreachableError       a management/agent call could not connect (``.url``)
    ├── StreamInterruptedError        a response was cut after it had started, or an
    │                                 in-band SSE error arrived (``.partial_text``)
    ├── InvalidResponseError          a 2xx answer that is not the JSON we expect
    └── APIStatusError                a non-2xx answer (``.status_code``, ``.body``,
        │                             ``.error_type``, ``.error_code``); never retried
        │                             except 502/503/504 (then raised after the last attempt)
        ├── BadRequestError           400
        ├── AuthenticationError       401
        ├── PermissionDeniedError     403
        ├── NotFoundError             404 (also an unknown model: ``model_not_found``)
        ├── ConflictError             409
        ├── UnprocessableEntityError  422
        ├── RateLimitError            429
        └── ServerError               5xx
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PERMANENT_ERRORS",
    "APIStatusError",
    "AttemptRecord",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "ConflictError",
    "GatewayUnreachableError",
    "InvalidResponseError",
    "ModelNotSpecifiedError",
    "NoBackendAvailableError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "SageClientError",
    "ServerError",
    "StreamInterruptedError",
    "UnprocessableEntityError",
    "status_error",
]


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One failed attempt: where it went and why it failed (for error messages)."""

    url: str
    error: str


def _describe_attempts(attempts: Sequence[AttemptRecord]) -> str:
    return "; ".join(f"{a.url}: {a.error}" for a in attempts)


class SageClientError(Exception):
    """Base of every error raised by the SDK client."""


class ConfigurationError(SageClientError, ValueError):
    """Raised at construction when settings are missing or invalid."""


class ModelNotSpecifiedError(SageClientError):
    """Raised when ``model`` is omitted and more than one model of the kind is served.

    Attributes:
        models: the served models to choose from.
    """

    def __init__(self, kind: str, models: Sequence[str]) -> None:
        self.models = list(models)
        super().__init__(
            f"several {kind} models are served ({', '.join(self.models)}); pass model=... "
            f"or set default_{'embedding' if kind == 'embedding' else 'llm'}_model"
        )


class NoBackendAvailableError(SageClientError):
    """Raised when nothing can serve the request.

    Either no backend serves the model, or every attempt failed before the first
    response byte (connection refused, timeout, 502/503/504).

    Attributes:
        attempts: the failed attempts, in order (empty when nothing was tried).
    """

    def __init__(self, message: str, attempts: Sequence[AttemptRecord] = ()) -> None:
        self.attempts = list(attempts)
        if self.attempts:
            message = f"{message} (tried {_describe_attempts(self.attempts)})"
        super().__init__(message)


class GatewayUnreachableError(SageClientError):
    """Raised by the management and agent clients when ``url`` cannot be reached.

    ``str(error)`` is a single line fit for a CLI.

    Attributes:
        url: the URL that could not be reached.
        reason: the transport error, in one line.
        timed_out: nothing answered in time (a server that may be there, but hangs).
        connect_failed: no connection could be opened (refused, unresolvable): the
            request never reached a server.
    """

    def __init__(
        self, url: str, reason: str, *, timed_out: bool = False, connect_failed: bool = False
    ) -> None:
        self.url = url
        self.reason = reason
        self.timed_out = timed_out
        self.connect_failed = connect_failed
        super().__init__(f"cannot reach {url}: {reason}")


class StreamInterruptedError(SageClientError):
    """Raised when a response is cut after it started, or the server sent an SSE error.

    The request is not re-issued (it may have been processed); retry it yourself
    if a duplicate answer is acceptable.

    Attributes:
        partial_text: the text received before the interruption.
        error_type / error_code: from an in-band error event, when there was one.
    """

    def __init__(
        self,
        message: str,
        partial_text: str = "",
        *,
        error_type: str | None = None,
        error_code: str | int | None = None,
    ) -> None:
        self.partial_text = partial_text
        self.error_type = error_type
        self.error_code = error_code
        super().__init__(message)


class InvalidResponseError(SageClientError):
    """Raised when a successful answer cannot be decoded (not JSON, wrong shape)."""


class APIStatusError(SageClientError):
    """A non-2xx answer. Subclasses name the common statuses.

    Attributes:
        status_code: the HTTP status.
        body: the decoded JSON body (``None`` if it was not JSON).
        message: the OpenAI error ``message`` (or the raw text).
        error_type / error_code: the OpenAI error ``type`` / ``code``, if any.
        url: the URL that answered.
        attempts: earlier failed attempts (only for a 5xx raised after failover).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: Any = None,
        error_type: str | None = None,
        error_code: str | int | None = None,
        url: str = "",
        attempts: Sequence[AttemptRecord] = (),
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.body = body
        self.error_type = error_type
        self.error_code = error_code
        self.url = url
        self.attempts = list(attempts)
        text = f"HTTP {status_code}: {message}"
        if self.attempts:
            text = f"{text} (after {_describe_attempts(self.attempts)})"
        super().__init__(text)


class BadRequestError(APIStatusError):
    """400."""


class AuthenticationError(APIStatusError):
    """401: missing or wrong API key."""


class PermissionDeniedError(APIStatusError):
    """403: the key lacks the scope."""


class NotFoundError(APIStatusError):
    """404: unknown path, engine, or model (``error_code == "model_not_found"``)."""


class ConflictError(APIStatusError):
    """409."""


class UnprocessableEntityError(APIStatusError):
    """422: the request was well-formed JSON but invalid."""


class RateLimitError(APIStatusError):
    """429."""


class ServerError(APIStatusError):
    """5xx."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


_TEXT_CHARS = 200
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


def _one_line(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _text_message(content: bytes) -> str:
    """A body that is not JSON as one line of at most about 200 characters; of markup
    (the HTML page of a server that is not a SAGE component) only its title or text."""
    text = content.decode("utf-8", "replace").strip()
    if not text.startswith("<"):
        return _one_line(text, _TEXT_CHARS)
    title = _TITLE.search(text)
    gist = _one_line(title.group(1) if title else _TAG.sub(" ", text), 80)
    return f"an HTML answer, not JSON ({gist or 'no text'})"


PERMANENT_ERRORS = (AuthenticationError, PermissionDeniedError, NotFoundError)
"""Answers a retry will not change soon (no admin scope, no management API): poll slowly."""


def status_error(
    status_code: int, content: bytes, *, url: str = "", attempts: Sequence[AttemptRecord] = ()
) -> APIStatusError:
    """Build the :class:`APIStatusError` subclass for a non-2xx answer.

    Reads the OpenAI error shape ``{"error": {"message", "type", "code"}}`` when
    the body has it; otherwise the message is the body text on one line of at most 200
    characters, or, for markup (HTML), a description of it (``body`` is then ``None``).
    """
    body: Any = None
    message = ""
    error_type: str | None = None
    error_code: str | int | None = None
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = body.get("error")
        if isinstance(detail, dict):
            message = str(detail.get("message") or "")
            raw_type = detail.get("type")
            error_type = str(raw_type) if raw_type is not None else None
            raw_code = detail.get("code")
            error_code = raw_code if isinstance(raw_code, str | int) else None
        elif isinstance(detail, str):
            message = detail
        elif isinstance(body.get("detail"), str):
            message = body["detail"]
    if not message:
        message = _text_message(content) or f"HTTP {status_code}"
    if status_code >= 500:
        cls: type[APIStatusError] = ServerError
    else:
        cls = _BY_STATUS.get(status_code, APIStatusError)
    return cls(
        message,
        status_code=status_code,
        body=body,
        error_type=error_type,
        error_code=error_code,
        url=url,
        attempts=attempts,
    )
