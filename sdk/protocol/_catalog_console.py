"""The gateway's endpoints behind Studio: sessions, the routing ledger, the console's files.

Declared here to keep the catalog readable; :data:`~._catalog.ENDPOINTS` lists them like
every other endpoint.
"""

from __future__ import annotations

from typing import Any

from sage.unified.sdk.protocol._bodies import OpenAIBody, RoutingDecisions, RoutingStats
from sage.unified.sdk.protocol._endpoint import Component, Endpoint, Retry, Scope, declarer

__all__ = ["RoutingApi", "SessionsApi", "StudioApi"]

_MGMT = "/v1/management"
_ANY = dict[str, Any]
_gw = declarer(Component.GATEWAY, "gateway", Scope.INFERENCE)


class SessionsApi:
    """Conversation sessions (SAGE's API, served by the gateway; an API key when keys are on)."""

    LIST: Endpoint[None, OpenAIBody] = _gw(
        "sessions.list",
        "GET",
        "/sessions",
        None,
        _ANY,
        query=("limit",),
        summary="The caller's sessions, newest first, and totals.",
    )
    CREATE: Endpoint[OpenAIBody, OpenAIBody] = _gw(
        "sessions.create",
        "POST",
        "/sessions",
        _ANY,
        _ANY,
        retry=Retry.UNSENT_ONLY,
        summary="A new session (optional title).",
    )
    GET: Endpoint[None, OpenAIBody] = _gw(
        "sessions.get",
        "GET",
        "/sessions/{session_id}",
        None,
        _ANY,
        summary="One session with its messages.",
    )
    DELETE: Endpoint[None, OpenAIBody] = _gw(
        "sessions.delete",
        "DELETE",
        "/sessions/{session_id}",
        None,
        _ANY,
        summary="Delete a session.",
    )
    CLEAR: Endpoint[None, OpenAIBody] = _gw(
        "sessions.clear",
        "POST",
        "/sessions/{session_id}/clear",
        None,
        _ANY,
        summary="Forget a session's messages, keep the session.",
    )
    TITLE: Endpoint[OpenAIBody, OpenAIBody] = _gw(
        "sessions.title",
        "PATCH",
        "/sessions/{session_id}/title",
        _ANY,
        _ANY,
        summary="Rename a session (60 characters at most).",
    )
    CLEANUP: Endpoint[None, OpenAIBody] = _gw(
        "sessions.cleanup",
        "POST",
        "/sessions/cleanup",
        None,
        _ANY,
        query=("max_age_minutes",),
        summary="Delete the caller's sessions idle for longer than max_age_minutes.",
    )


class RoutingApi:
    """The gateway's cache-capture ledger (answered by each gateway from its own ledger)."""

    DECISIONS: Endpoint[None, RoutingDecisions] = _gw(
        "routing.decisions",
        "GET",
        f"{_MGMT}/routing/decisions",
        None,
        RoutingDecisions,
        scope=Scope.ADMIN,
        query=("model", "engine", "limit"),
        summary="Recent routing decisions of this gateway, newest first (filter by model, engine).",
    )
    STATS: Endpoint[None, RoutingStats] = _gw(
        "routing.stats",
        "GET",
        f"{_MGMT}/routing/stats",
        None,
        RoutingStats,
        scope=Scope.ADMIN,
        summary="Reuse available, captured and delivered per model and engine, and health signals.",
    )


class StudioApi:
    """The Studio web console's files (the page; its data comes from the APIs above)."""

    PAGE: Endpoint[None, None] = _gw(
        "studio.page",
        "GET",
        "/studio",
        None,
        None,
        scope=Scope.PUBLIC,
        summary="The console (needs the admin token for actions when one is set).",
        reply_media="text/html",
    )
    ASSET: Endpoint[None, None] = _gw(
        "studio.asset",
        "GET",
        "/studio/{file_path:path}",
        None,
        None,
        scope=Scope.PUBLIC,
        summary="The console's scripts, styles and images.",
        reply_media="*/*",
    )
