"""What one endpoint between components is: method, path template, types, scope, retry class.

Pure: no I/O, no framework. Servers register their handlers from these declarations
(:mod:`sage.unified.sdk.protocol.server`) and the SDK clients execute them, so a path or
a type is written in one place only.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

__all__ = ["Component", "Endpoint", "Retry", "Scope", "declarer"]

BodyT = TypeVar("BodyT")
ReplyT = TypeVar("ReplyT")

_PARAM = re.compile(r"\{([a-z_]+)(:path)?\}")
"""``{name}`` is one path segment; ``{name:path}`` the rest of the path, slashes included."""


class Component(enum.StrEnum):
    """Which process serves an endpoint."""

    GATEWAY = "gateway"
    """The OpenAI proxy and its own routes (also serves the control plane when embedded)."""
    CONTROL_PLANE = "control-plane"
    """The coordinator: embedded in a gateway, or standalone (``sage coordinator run``)."""
    AGENT = "agent"
    """One host's agent API."""
    ENGINE = "engine"
    """An inference engine (vLLM, SGLang, the simulator): their API, not ours."""


class Scope(enum.StrEnum):
    """Which credential an endpoint requires (when the component has tokens configured)."""

    PUBLIC = "public"
    """No token: liveness, readiness, metrics."""
    INFERENCE = "inference"
    """An API key (``SAGE_API_KEYS``)."""
    ADMIN = "admin"
    """The admin token (``SAGE_ADMIN_TOKEN``): management and agent commands by operators."""
    AGENT = "agent"
    """The agent token (``SAGE_AGENT_TOKEN``): reports, and commands between control plane and agents."""


class Retry(enum.StrEnum):
    """Whether a client may send the request again after a failure."""

    SAFE = "safe"
    """Idempotent: on a connection error, a timeout or a 502/503/504 a client may send it
    again (to the same server or, given several URLs, to the next)."""
    UNSENT_ONLY = "unsent-only"
    """Not idempotent (it starts something): retried only when the request provably never
    reached a server (the connection was refused)."""


@dataclass(frozen=True, slots=True)
class Endpoint(Generic[BodyT, ReplyT]):
    """One declared endpoint.

    Attributes:
        name: a stable identifier (``control_plane.start_engine``), also the route name.
        server: which component serves it.
        method: the HTTP method.
        path: the path template; ``{name}`` parameters are single path segments.
        request: the JSON body type (``None``: no body).
        reply: the JSON answer type (``None``: not JSON, e.g. Prometheus text).
        scope: the credential it requires.
        retry: the client's retry rule.
        status: the success status.
        query: the query parameters it accepts.
        summary: one line for the API reference.
        errors: error statuses it answers beyond those its shape implies (a body: 400,
            413, 422; a token: 401; a path parameter: 404; see ``_openapi.error_statuses``).
        request_media: the body's media type (a form for audio transcriptions).
        streams: the answer is Server-Sent Events when the body asks for ``stream``.
        reply_media: the answer's media type when ``reply`` is not a JSON type.
    """

    name: str
    server: Component
    method: str
    path: str
    request: type[BodyT] | None
    reply: type[ReplyT] | None
    scope: Scope
    retry: Retry
    status: int = 200
    query: tuple[str, ...] = ()
    summary: str = ""
    errors: tuple[int, ...] = ()
    request_media: str = "application/json"
    streams: bool = False
    reply_media: str = "application/json"

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(m.group(1) for m in _PARAM.finditer(self.path))

    def format_path(self, params: Mapping[str, Any] | None = None) -> str:
        """The path with its parameters filled in, each quoted as one segment.

        Raises:
            ValueError: a parameter is missing or one was given that the path lacks.
        """
        given = dict(params or {})
        if set(given) != set(self.path_params):
            raise ValueError(
                f"{self.name}: path parameters {sorted(given)} do not match {self.path!r}"
            )
        return _PARAM.sub(
            lambda m: quote(str(given[m.group(1)]), safe="/" if m.group(2) else ""), self.path
        )

    def check_query(self, query: Mapping[str, Any]) -> None:
        """Raises ValueError for a query parameter the endpoint does not declare."""
        unknown = set(query) - set(self.query)
        if unknown:
            raise ValueError(f"{self.name}: undeclared query parameters {sorted(unknown)}")

    @property
    def litestar_path(self) -> str:
        """The path in Litestar's syntax (``{engine_id:str}``, ``{file_path:path}``)."""
        return _PARAM.sub(lambda m: "{" + m.group(1) + (m.group(2) or ":str") + "}", self.path)


def declarer(server: Component, prefix: str, scope: Scope) -> Callable[..., Endpoint[Any, Any]]:
    """A function declaring endpoints of ``server``, with ``scope`` and ``Retry.SAFE`` by default."""

    def declare(
        name: str, method: str, path: str, request: Any, reply: Any, **kw: Any
    ) -> Endpoint[Any, Any]:
        kw.setdefault("scope", scope)
        kw.setdefault("retry", Retry.SAFE)
        return Endpoint(f"{prefix}.{name}", server, method, path, request, reply, **kw)

    return declare
