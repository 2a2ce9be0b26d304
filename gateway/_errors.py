"""OpenAI-shaped error responses of the gateway, for raw ASGI and Litestar handlers.

::

    GatewayError                       base; carries status, type and code
    ├── BadRequestError                400 invalid JSON / missing model / bad field
    ├── UnauthorizedError              401 missing or wrong API key / admin token
    ├── ModelNotFoundError             404 model_not_found (lists served models)
    ├── PayloadTooLargeError           413 body over the limit
    ├── HeadersTooLargeError           431 too many or too large headers
    ├── NoBackendAvailableError        503 + Retry-After: the model has no READY backend
    └── UpstreamFailedError            502/504: every attempt failed before a response
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException

from sage.unified.sdk.models import encode, error_body

__all__ = [
    "BadRequestError",
    "GatewayError",
    "HeadersTooLargeError",
    "ModelNotFoundError",
    "NoBackendAvailableError",
    "PayloadTooLargeError",
    "UnauthorizedError",
    "UpstreamFailedError",
    "error_bytes",
    "exception_handlers",
    "sse_error_event",
]


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | int | None = None

    def __init__(
        self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_bytes(self.message, self.type, self.code, self.param)


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


class UpstreamFailedError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_failed"

    def __init__(
        self, message: str, *, status: int = 502, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, headers=headers)
        self.status = status


def error_bytes(
    message: str, type_: str, code: str | int | None = None, param: str | None = None
) -> bytes:
    return encode(error_body(message, type_, code=code, param=param))


def sse_error_event(
    message: str, type_: str = "upstream_error", code: str | int | None = "stream_interrupted"
) -> bytes:
    """The in-band error that ends a broken stream (no ``[DONE]`` follows it)."""
    return b"data: " + error_bytes(message, type_, code) + b"\n\n"


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(
        content=body, status_code=status, media_type="application/json", headers=headers
    )


def _gateway_error(_: Request[Any, Any, Any], exc: GatewayError) -> Response[bytes]:
    return _json(exc.status, exc.body(), exc.headers)


def _validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    detail = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in extra)
    message = f"{exc.detail}: {detail}" if detail else str(exc.detail)
    malformed = "malformed" in message.lower() or ("json" in str(exc.detail).lower() and not extra)
    status = 400 if malformed else 422
    return _json(status, error_bytes(message, "invalid_request_error", "invalid_request"))


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    kinds = {
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        405: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
    }
    type_ = kinds.get(
        exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error"
    )
    return _json(exc.status_code, error_bytes(str(exc.detail), type_, exc.status_code), exc.headers)


def _not_found(_: Request[Any, Any, Any], exc: NotFoundException) -> Response[bytes]:
    return _json(404, error_bytes(str(exc.detail) or "not found", "not_found_error", "not_found"))


def _unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    # No traceback or internal detail reaches a client; the log has it.
    import logging

    logging.getLogger("sage.unified.gateway").exception("unhandled error", exc_info=exc)
    return _json(500, error_bytes("internal error", "server_error", "internal_error"))


exception_handlers: dict[type[Exception], Any] = {
    GatewayError: _gateway_error,
    ValidationException: _validation_error,
    NotFoundException: _not_found,
    HTTPException: _http_error,
    Exception: _unexpected,
}
