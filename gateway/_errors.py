"""OpenAI-shaped error responses of the gateway, for raw ASGI and Litestar handlers.

::

    GatewayError (a WireError)         base; carries status, type and code
    ├── BadRequestError                400 invalid JSON / missing model / bad field
    ├── UnauthorizedError              401 missing or wrong API key / admin token
    ├── ModelNotFoundError             404 model_not_found (lists served models)
    ├── PayloadTooLargeError           413 body over the limit
    ├── HeadersTooLargeError           431 too many or too large headers
    ├── NoBackendAvailableError        503 + Retry-After: the model has no READY backend
    ├── LoopDetectedError              508: the request already passed this gateway
    └── UpstreamFailedError            502/504: every attempt failed before a response
"""

from __future__ import annotations

import logging

from sage.unified.sdk.errors import WireError, wire_error_bytes
from sage.unified.sdk.protocol.server import exception_handlers as handlers_for

__all__ = [
    "BadRequestError",
    "GatewayError",
    "HeadersTooLargeError",
    "LoopDetectedError",
    "ModelNotFoundError",
    "NoBackendAvailableError",
    "PayloadTooLargeError",
    "UnauthorizedError",
    "UpstreamFailedError",
    "error_bytes",
    "exception_handlers",
    "sse_error_event",
]


class GatewayError(WireError):
    """Base of the gateway's errors (``status``, ``type``, ``code`` as every component)."""

    status = 500
    type = "server_error"
    code: str | int | None = None


class BadRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class UnauthorizedError(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class HeadersTooLargeError(GatewayError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"


class NoBackendAvailableError(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "no_backend_available"


class LoopDetectedError(GatewayError):
    status = 508
    type = "invalid_request_error"
    code = "loop_detected"


class UpstreamFailedError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_failed"


error_bytes = wire_error_bytes
"""The OpenAI-shaped error body as JSON bytes (see :func:`sage.unified.sdk.errors.wire_error_bytes`)."""


def sse_error_event(
    message: str, type_: str = "upstream_error", code: str | int | None = "stream_interrupted"
) -> bytes:
    """The in-band error that ends a broken stream (no ``[DONE]`` follows it)."""
    return b"data: " + error_bytes(message, type_, code) + b"\n\n"


exception_handlers = handlers_for(logging.getLogger("sage.unified.gateway"))
"""Litestar exception handlers: every error answered in the OpenAI shape."""
