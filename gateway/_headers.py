"""Header rules of the proxy (pure).

Hop-by-hop headers (RFC 9110 §7.6.1) and every header a ``Connection`` header names are
dropped in both directions; the client's ``Authorization`` never reaches an engine (the
engine's own key replaces it); ``X-Forwarded-*`` are set by the gateway, never taken
from the client; ``Host`` and ``Content-Length`` are set by the upstream client.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence

__all__ = [
    "HOP_BY_HOP",
    "OWN_VIA",
    "RequestHeaderInfo",
    "downstream_headers",
    "loop_detected",
    "scan_request_headers",
    "upstream_headers",
]

Header = tuple[bytes, bytes]

HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by us (or by the upstream client) and never copied from the client.
_REPLACED_UPSTREAM: frozenset[bytes] = frozenset(
    {
        b"host",
        b"content-length",
        b"authorization",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
        b"x-real-ip",
        b"x-request-id",
        b"expect",
        b"via",
        b"x-sage-route",
        b"x-sage-continue",
    }
)
_REPLACED_DOWNSTREAM: frozenset[bytes] = frozenset(
    {b"content-length", b"server", b"date", b"x-request-id", b"x-sage-backend"}
)
# Unions computed once: these run on every request.
_UP_DROP = HOP_BY_HOP | _REPLACED_UPSTREAM
_DOWN_DROP = HOP_BY_HOP | _REPLACED_DOWNSTREAM


class RequestHeaderInfo:
    """What the proxy needs from the client's headers, read in one pass."""

    __slots__ = (
        "authorization",
        "connection_tokens",
        "content_length",
        "content_type",
        "continue_stream",
        "count",
        "host",
        "request_id",
        "session_id",
        "size",
        "via",
        "want_route",
    )

    def __init__(self) -> None:
        self.authorization: bytes | None = None
        self.content_length: int | None = None
        self.request_id: bytes | None = None
        self.session_id: bytes | None = None
        self.host: bytes | None = None
        self.connection_tokens: frozenset[bytes] = frozenset()
        self.content_type: bytes | None = None
        self.via: bytes | None = None
        """The ``Via`` chain so far (the gateways this request already passed)."""
        self.continue_stream = False
        """``X-Sage-Continue: 1``: continue this stream elsewhere if its engine fails."""
        self.count = 0
        self.size = 0
        self.want_route = False
        """``X-Sage-Route: 1``: the client asks for ``X-Sage-Route-Decision``."""


def scan_request_headers(headers: Iterable[Header]) -> RequestHeaderInfo:
    """Read the headers the proxy acts on (names are lower-case in ASGI)."""
    info = RequestHeaderInfo()
    for name, value in headers:
        info.count += 1
        info.size += len(name) + len(value)
        if name == b"authorization":
            info.authorization = value
        elif name == b"content-length":
            try:
                info.content_length = int(value)
            except ValueError:
                info.content_length = -1
        elif name == b"x-request-id":
            if 0 < len(value) <= 128:
                info.request_id = value
        elif name == b"x-session-id":
            info.session_id = value
        elif name == b"host":
            info.host = value
        elif name == b"x-sage-route":
            info.want_route = value.strip() in (b"1", b"true")
        elif name == b"connection":
            info.connection_tokens = frozenset(
                t.strip().lower() for t in value.split(b",") if t.strip()
            )
        elif name == b"content-type":
            info.content_type = value
        elif name == b"via":
            info.via = value if info.via is None else info.via + b", " + value
        elif name == b"x-sage-continue":
            info.continue_stream = value.strip().lower() in (b"1", b"true", b"yes")
    return info


_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)
OWN_VIA = f"1.1 sage-{_ID_PREFIX}".encode()
"""This gateway process's entry in ``Via`` (RFC 9110 §7.6.3): a request that already
carries it came back to us, a loop."""
MAX_VIA_HOPS = 8
"""More gateways than this on one request's way is a loop among several."""


def loop_detected(info: RequestHeaderInfo) -> bool:
    """Whether the request already passed this gateway, or too many."""
    via = info.via
    return via is not None and (OWN_VIA in via or via.count(b"sage-") >= MAX_VIA_HOPS)


def new_request_id() -> bytes:
    """A request id unique across processes and restarts (a random per-process prefix and
    a counter): a quarter of the cost of ``uuid4`` on the hot path."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}".encode()


def upstream_headers(
    headers: Sequence[Header],
    info: RequestHeaderInfo,
    *,
    request_id: bytes,
    client_host: str | None,
    scheme: str,
    engine_authorization: bytes | None,
) -> list[Header]:
    """Headers sent to the engine for one client request."""
    dropped = _UP_DROP | info.connection_tokens if info.connection_tokens else _UP_DROP
    out = [(n, v) for n, v in headers if n not in dropped]
    out.append((b"x-request-id", request_id))
    out.append((b"via", info.via + b", " + OWN_VIA if info.via else OWN_VIA))
    if client_host:
        out.append((b"x-forwarded-for", client_host.encode()))
    out.append((b"x-forwarded-proto", scheme.encode()))
    if info.host:
        out.append((b"x-forwarded-host", info.host))
    if engine_authorization:
        out.append((b"authorization", engine_authorization))
    return out


def downstream_headers(
    headers: Iterable[Header], *, request_id: bytes, backend_id: str | None
) -> list[Header]:
    """Headers returned to the client for an engine response (no length: set by the caller).

    Names arrive lower-cased from the upstream client.
    """
    out: list[Header] = []
    named: set[bytes] | None = None
    for name, value in headers:
        if name in _DOWN_DROP:
            if name == b"connection":
                named = {t.strip().lower() for t in value.split(b",")}
            continue
        out.append((name, value))
    if named:
        out = [(n, v) for n, v in out if n not in named]
    out.append((b"x-request-id", request_id))
    if backend_id is not None:
        out.append((b"x-sage-backend", backend_id.encode()))
    return out
