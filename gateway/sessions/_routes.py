"""``/sessions``: the SAGE gateway's session API, per API key.

Same paths and shapes as SAGE (``GET/POST /sessions``, ``GET/DELETE /sessions/{id}``,
``POST /sessions/{id}/clear``, ``PATCH /sessions/{id}/title``,
``POST /sessions/cleanup?max_age_minutes=N``). When the gateway has API keys, each
request needs one (``Authorization: Bearer``) and sees only its own sessions. Requests
that change something are refused from another web origin and with a non-JSON body,
so a web page cannot drive the API through a browser on this machine.
"""

from __future__ import annotations

import json
from typing import Any

from litestar import Request, Router
from litestar.params import FromPath

from sage.unified.gateway._errors import UnauthorizedError
from sage.unified.gateway.sessions._errors import (
    InvalidSessionError,
    SessionNotFoundError,
    UnsupportedMediaTypeError,
)
from sage.unified.gateway.sessions._model import owner_of, valid_session_id
from sage.unified.gateway.sessions._store import SessionStore
from sage.unified.sdk.auth import TokenSet, bearer_token
from sage.unified.sdk.protocol import BrowserPolicy, SessionsApi
from sage.unified.sdk.protocol.server import browser_guard, route

__all__ = ["create_sessions_router"]

AnyRequest = Request[Any, Any, Any]


def _owner(request: AnyRequest, api_keys: TokenSet) -> str:
    if not api_keys:
        return owner_of(None)
    token = bearer_token(request.headers.get("authorization"))
    if not api_keys.verify(token):
        raise UnauthorizedError(
            "missing or invalid API key; send it as 'Authorization: Bearer <key>'"
        )
    return owner_of(token)


async def _json_body(request: AnyRequest) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaTypeError("send the body as JSON (Content-Type: application/json)")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidSessionError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidSessionError("the body must be a JSON object")
    return body


def _checked_id(session_id: str) -> str:
    if not valid_session_id(session_id):
        raise InvalidSessionError(
            "a session id is 1-128 characters of A-Z, a-z, 0-9, '_', '.', '-'", param="session_id"
        )
    return session_id


def _not_found(session_id: str) -> SessionNotFoundError:
    return SessionNotFoundError(f"session '{session_id}' not found", param="session_id")


def _int_query(request: AnyRequest, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidSessionError(
            f"{name} must be a whole number from {low} to {high} (got {raw[:40]!r})", param=name
        )
    return value


def create_sessions_router(
    store: SessionStore, *, api_keys: TokenSet, browser: BrowserPolicy | None = None
) -> Router:
    """The ``/sessions`` routes over ``store``; ``api_keys`` empty means no keys needed.

    ``browser``: which ``Host`` names and web origins may reach them from a browser
    (loopback names and the page's own origin when omitted).
    """

    @route(SessionsApi.LIST)
    async def list_sessions(request: AnyRequest) -> dict[str, Any]:
        owner = _owner(request, api_keys)
        limit = _int_query(request, "limit", 100, 1, 1000)
        sessions, stats = await store.list_sessions(owner, limit)
        return {"sessions": [s.to_json() for s in sessions], "stats": stats}

    @route(SessionsApi.CREATE)
    async def create_session(request: AnyRequest) -> dict[str, Any]:
        owner = _owner(request, api_keys)
        title = (await _json_body(request)).get("title")
        if title is not None and not isinstance(title, str):
            raise InvalidSessionError("title must be a string", param="title")
        session = await store.create(owner, title=title)
        return session.to_json()

    @route(SessionsApi.GET)
    async def get_session(request: AnyRequest, session_id: FromPath[str]) -> dict[str, Any]:
        owner = _owner(request, api_keys)
        session = await store.get(owner, _checked_id(session_id))
        if session is None:
            raise _not_found(session_id)
        return session.to_json()

    @route(SessionsApi.DELETE)
    async def delete_session(request: AnyRequest, session_id: FromPath[str]) -> dict[str, Any]:
        owner = _owner(request, api_keys)
        if not await store.delete(owner, _checked_id(session_id)):
            raise _not_found(session_id)
        return {"status": "deleted", "session_id": session_id}

    @route(SessionsApi.CLEAR)
    async def clear_session(request: AnyRequest, session_id: FromPath[str]) -> dict[str, Any]:
        owner = _owner(request, api_keys)
        if not await store.clear(owner, _checked_id(session_id)):
            raise _not_found(session_id)
        return {"status": "cleared", "session_id": session_id}

    @route(SessionsApi.TITLE)
    async def set_title(request: AnyRequest, session_id: FromPath[str]) -> dict[str, Any]:
        owner = _owner(request, api_keys)
        title = (await _json_body(request)).get("title")
        if not isinstance(title, str) or not title.strip():
            raise InvalidSessionError("title must be a non-empty string", param="title")
        if not await store.set_title(owner, _checked_id(session_id), title):
            raise _not_found(session_id)
        session = await store.get(owner, session_id)
        stored = session.to_json()["metadata"]["title"] if session else title
        return {"status": "updated", "session_id": session_id, "title": stored}

    @route(SessionsApi.CLEANUP)
    async def cleanup(request: AnyRequest) -> dict[str, Any]:
        owner = _owner(request, api_keys)
        minutes = _int_query(request, "max_age_minutes", 30, 0, 10_000_000)
        removed = await store.cleanup(owner, minutes * 60.0)
        return {"status": "cleaned", "removed_sessions": removed}

    return Router(
        path="/",
        route_handlers=[
            list_sessions,
            create_session,
            get_session,
            delete_session,
            clear_session,
            set_title,
            cleanup,
        ],
        tags=["sessions"],
        guards=[browser_guard(browser or BrowserPolicy.of("127.0.0.1"))],
    )
