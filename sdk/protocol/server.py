"""The server side of the protocol, for Litestar apps (coordinator, agent, gateway).

Imported only by servers: the SDK's clients and models never load Litestar.

- :func:`route` registers a handler at an endpoint's method, path and success status.
- :func:`decode_body` decodes a request body into the endpoint's type: malformed JSON
  is 400 ``invalid_json``, a well-formed body that fails validation 422
  ``invalid_request`` with the field in ``param``.
- :func:`exception_handlers` answers every error with the one OpenAI-shaped body:
  :class:`~sage.unified.sdk.errors.WireError` as declared, Litestar's own HTTP errors
  with the status's type and code, anything else 500 (logged, never shown).
- :func:`openapi_config`: every app serves its API description at
  ``/schema/openapi.json`` (written from the catalog: bodies, answers and every error
  status) and no browser UI for it; :func:`allow_header_middleware` makes ``OPTIONS``
  list every method of a path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response
from litestar import route as litestar_route
from litestar.connection import ASGIConnection
from litestar.enums import HttpMethod
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.config import OpenAPIConfig
from litestar.types import ExceptionHandlersMap
from prometheus_client import CONTENT_TYPE_LATEST

from sage.unified.sdk.errors import WireError, error_type_for, wire_error_bytes
from sage.unified.sdk.protocol._browser import BrowserPolicy, browser_refusal
from sage.unified.sdk.protocol._endpoint import Endpoint
from sage.unified.sdk.protocol._served_openapi import (
    CatalogJsonRender,
    allow_header_middleware,
    mark_browser_guard,
)

__all__ = [
    "BadBodyError",
    "BrowserRefusedError",
    "InvalidBodyError",
    "allow_header_middleware",
    "browser_guard",
    "decode_body",
    "error_response",
    "exception_handlers",
    "metrics_response",
    "openapi_config",
    "route",
]

BodyT = TypeVar("BodyT")

_CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
}


class BadBodyError(WireError):
    """The request body is not JSON (400)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_json"


class InvalidBodyError(WireError):
    """The request body is JSON but not a valid value of the endpoint's type (422)."""

    status = 422
    type = "invalid_request_error"
    code = "invalid_request"


class BrowserRefusedError(WireError):
    """A request a web browser may not make (see :mod:`sage.unified.sdk.protocol._browser`)."""

    status = 403
    type = "permission_error"
    code = "cross_origin"


def browser_guard(
    policy: BrowserPolicy,
) -> Callable[[ASGIConnection[Any, Any, Any, Any], Any], None]:
    """A Litestar guard refusing foreign ``Host``s, cross-origin writes and non-JSON bodies."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _handler: Any) -> None:
        headers = connection.headers
        length = headers.get("content-length")
        has_body = bool(length and length.strip() not in ("", "0")) or (
            "chunked" in headers.get("transfer-encoding", "").lower()
        )
        refusal = browser_refusal(
            policy,
            method=str(connection.scope.get("method", "GET")),
            scheme=str(connection.scope.get("scheme", "http")),
            host=headers.get("host"),
            origin=headers.get("origin"),
            fetch_site=headers.get("sec-fetch-site"),
            content_type=headers.get("content-type"),
            has_body=has_body,
        )
        if refusal is not None:
            raise BrowserRefusedError(
                refusal.message,
                status=refusal.status,
                code=refusal.code,
                type_="invalid_request_error" if refusal.status == 415 else "permission_error",
            )

    return mark_browser_guard(guard)


def route(endpoint: Endpoint[Any, Any], **options: Any) -> Callable[[Any], HTTPRouteHandler]:
    """A Litestar route decorator for ``endpoint`` (method, path, status and name)."""
    return litestar_route(
        endpoint.litestar_path,
        http_method=[HttpMethod(endpoint.method)],
        status_code=endpoint.status,
        name=endpoint.name,
        **options,
    )


def decode_body(endpoint: Endpoint[BodyT, Any], raw: bytes) -> BodyT:
    """Decode ``raw`` as the endpoint's request type.

    Raises:
        BadBodyError: not JSON.
        InvalidBodyError: JSON that is not a valid request (``param`` names the field).
    """
    if endpoint.request is None:
        raise TypeError(f"{endpoint.name} takes no body")
    try:
        return msgspec.json.decode(raw, type=endpoint.request)
    except msgspec.ValidationError as exc:
        # msgspec names the field as "at `$.spec.model`": surface it as ``param``.
        message = str(exc)
        param = message.rsplit("`$.", 1)[1].rstrip("`") if "`$." in message else None
        raise InvalidBodyError(f"invalid request body: {message}", param=param) from None
    except msgspec.DecodeError as exc:
        raise BadBodyError(f"malformed JSON body: {exc}") from None


def error_response(
    status: int,
    message: str,
    type_: str | None = None,
    code: str | int | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    """An OpenAI-shaped error response."""
    return Response(
        wire_error_bytes(message, type_ or error_type_for(status), code, param),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


METRICS_MEDIA_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")
"""The Prometheus text format prometheus_client writes, without the charset: Litestar adds
``charset`` to every ``text/*`` type, and a second one makes strict parsers (Prometheus 3)
refuse the scrape."""


def metrics_response(payload: bytes) -> Response[bytes]:
    """A ``/metrics`` answer with one well-formed Content-Type."""
    return Response(payload, media_type=METRICS_MEDIA_TYPE)


def _wire_error(_: Request[Any, Any, Any], exc: WireError) -> Response[bytes]:
    return Response(
        exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers
    )


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    message = str(exc.detail)
    if isinstance(exc, ValidationException):
        extra = exc.extra if isinstance(exc.extra, list) else []
        detail = "; ".join(
            str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in extra
        )
        message = f"{exc.detail}: {detail}" if detail else message
        malformed = "malformed" in message.lower() or (
            "json" in str(exc.detail).lower() and not extra
        )
        status = 400 if malformed else 422
    code = _CODE_BY_STATUS.get(status, "internal_error" if status >= 500 else "http_error")
    return error_response(status, message, code=code, headers=dict(exc.headers or {}) or None)


def exception_handlers(logger: logging.Logger) -> ExceptionHandlersMap:
    """Litestar exception handlers answering every error in the OpenAI shape.

    Args:
        logger: where an unexpected error's traceback goes (the client sees only
            ``internal error``).
    """

    def unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
        logger.error("unhandled error", exc_info=exc)
        return error_response(500, "internal error", "server_error", "internal_error")

    return {WireError: _wire_error, HTTPException: _http_error, Exception: unexpected}


def openapi_config(title: str) -> OpenAPIConfig:
    """The API description at ``/schema/openapi.json`` (exported to ``docs/openapi/``).

    Litestar's browser UIs (Swagger, ReDoc, Scalar, ...) are left out: they load their
    scripts from a CDN, so a head node without internet showed a blank page, and a
    page that runs third-party scripts next to the admin API is not one to offer.
    """
    return OpenAPIConfig(
        title=title, version="1", create_examples=False, render_plugins=[CatalogJsonRender()]
    )
