"""What a Litestar app says about itself: its OpenAPI document and its ``Allow`` headers.

- :class:`CatalogJsonRender` serves ``/schema/openapi.json`` with every declared route
  written from the catalog (:mod:`._openapi`), found by the route names that
  :func:`~.server.route` and the gateway's ASGI routes give them.
- :func:`allow_header_middleware` fixes the ``Allow`` header of Litestar's automatic
  ``OPTIONS`` answers: Litestar 2 builds it when the first handler of a path is
  registered, so a path served by several handlers listed only the first one's method
  (litestar-org/litestar#4169, fixed only in Litestar 3).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

from litestar import Litestar, Request
from litestar.enums import ScopeType
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from sage.unified.sdk.protocol._catalog import ENDPOINTS
from sage.unified.sdk.protocol._openapi import ServedEndpoint, describe_endpoints

__all__ = ["CatalogJsonRender", "allow_header_middleware", "served_endpoints"]

_BY_NAME = {endpoint.name: endpoint for endpoint in ENDPOINTS}

BROWSER_GUARD_MARK = "__sage_browser_guard__"
"""Set on the guards :func:`~.server.browser_guard` makes, so the document can say
which routes answer 403 and 415."""


def served_endpoints(app: Litestar) -> Iterator[ServedEndpoint]:
    """The declared endpoints ``app`` serves, each once."""
    seen: set[str] = set()
    for route in app.routes:
        # HTTP routes hold several handlers; ASGI routes (the OpenAI proxy) one.
        handlers = getattr(route, "route_handlers", None) or [route.route_handler]  # type: ignore[union-attr]
        for handler in handlers:
            endpoint = _BY_NAME.get(handler.name or "")
            if endpoint is None or endpoint.name in seen:
                continue
            seen.add(endpoint.name)
            guards = handler.resolve_guards() if hasattr(handler, "resolve_guards") else ()
            guarded = any(_is_browser_guard(guard) for guard in guards)
            yield ServedEndpoint(endpoint, guarded)


def _is_browser_guard(guard: Any) -> bool:
    # Litestar wraps guards (AsyncCallable keeps the function as ``func``).
    return bool(getattr(getattr(guard, "func", guard), BROWSER_GUARD_MARK, False))


class CatalogJsonRender(JsonRenderPlugin):
    """Litestar's JSON document, completed from the catalog once per app."""

    def __init__(self) -> None:
        super().__init__()
        self._documents: dict[int, bytes] = {}

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        key = id(request.app)
        rendered = self._documents.get(key)
        if rendered is None:
            document = describe_endpoints(
                copy.deepcopy(openapi_schema), served_endpoints(request.app)
            )
            rendered = self._documents[key] = self.render_json(request, document)
        return rendered


def allow_header_middleware(app: ASGIApp) -> ASGIApp:
    """Answer ``OPTIONS`` with every method the path's route serves."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope.get("method") != "OPTIONS":
            await app(scope, receive, send)
            return
        methods = _route_methods(scope)
        if methods is None:
            await app(scope, receive, send)
            return

        async def send_with_allow(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                headers.append((b"allow", ", ".join(sorted(methods)).encode()))
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_with_allow)

    return middleware


def _route_methods(scope: Scope) -> set[str] | None:
    fields: Any = scope  # routing fills these in; a scope that did not route lacks them
    template = fields.get("path_template")
    litestar_app = fields.get("litestar_app")
    if template is None or litestar_app is None:
        return None
    for route in litestar_app.routes:
        if isinstance(route, HTTPRoute) and route.path_format == template:
            return set(route.methods)
    return None


def mark_browser_guard(guard: Callable[..., Any]) -> Callable[..., Any]:
    setattr(guard, BROWSER_GUARD_MARK, True)
    return guard
