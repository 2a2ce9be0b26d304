"""The one error model on the wire: status, type and code, and the OpenAI-shaped body.

Every component's error hierarchy derives from :class:`WireError`, so an error reads the
same everywhere: ``status`` (HTTP status), ``type`` (the OpenAI error ``type``), ``code``
(the OpenAI error ``code``), ``message``, ``param`` and extra response ``headers``
(``Retry-After``). :func:`wire_error_bytes` is the one mapping to the body
``{"error": {"message", "type", "param", "code"}}``; the SDK client's
:func:`sage.unified.sdk.client.status_error` is the one place that turns such a body
back into an exception.

::

    WireError                 base; 500 server_error internal_error unless a subclass says
    ├── GatewayError          gateway (sage.unified.gateway._errors)
    ├── CoordinatorError      control plane (sage.unified.coordinator._errors)
    └── AgentError            agent (sage.unified.agent.errors)

The engine simulator's ``RequestError`` (``sage.unified.agent.simulator._errors``) uses the
same field names but is deliberately not a ``WireError``: it answers vLLM's body, whose
``code`` is the HTTP status and ``type`` the exception class name.

Pure: no I/O, no framework.
"""

from __future__ import annotations

from collections.abc import Mapping

from sage.unified.sdk.models import encode, error_body

__all__ = ["TYPE_BY_STATUS", "WireError", "error_type_for", "wire_error_bytes"]

TYPE_BY_STATUS: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    414: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    503: "service_unavailable",
}
"""The OpenAI error ``type`` of a status when nothing more specific is known."""


def error_type_for(status: int) -> str:
    """The default OpenAI error ``type`` for an HTTP status."""
    return TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


def wire_error_bytes(
    message: str, type_: str, code: str | int | None = None, param: str | None = None
) -> bytes:
    """The OpenAI-shaped error body as JSON bytes."""
    return encode(error_body(message, type_, code=code, param=param))


class WireError(Exception):
    """An error that is answered over HTTP. Subclasses set the class attributes.

    Args:
        message: what happened and what to do, for people.
        param: the request field at fault, when there is one.
        code: overrides the class's ``code``.
        status: overrides the class's ``status``.
        type_: overrides the class's ``type``.
        headers: extra response headers (e.g. ``Retry-After``).
    """

    status: int = 500
    type: str = "server_error"
    code: str | int | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | int | None = None,
        status: int | None = None,
        type_: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type_ is not None:
            self.type = type_
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> bytes:
        """The OpenAI-shaped body of this error, as JSON bytes."""
        return wire_error_bytes(self.message, self.type, self.code, self.param)
