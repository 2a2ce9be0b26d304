"""The gateway's hot-path upstream HTTP/1.1 client (asyncio only, on purpose).

A small pooled client: an ``asyncio.Protocol`` per connection driving the
httptools (llhttp) response parser, a LIFO keep-alive pool per origin with
lazy idle expiry, timer-handle timeouts, read back-pressure and one
transparent retry of a stale keep-alive connection.

Why not httpx, and why not anyio: on this machine class (see
``research/python-proxy-stack.md``) Litestar + httpx cost 1.9-3.0 ms of
gateway CPU per proxied request, 6-15x the Rust vllm-router; anyio was the
largest share of that profile (31 %), httpcore's per-request scan over every
pooled connection (``_assign_requests_to_connections``) the next. A
purpose-built client on httptools + ``asyncio.Protocol`` + a LIFO pool cut the
cost of the best general client (aiohttp) in half (423 -> 200 us/request
behind a Litestar ``asgi`` handler). The gateway runs on its own server + uvloop, so
this module talks to asyncio directly: anyio's task groups and cancel scopes
would add measurable microseconds to every request here. httpx remains the
client for everything off the hot path.

Usage::

    pool = UpstreamPool()
    async with await pool.request(b"POST", ("http", "10.0.0.5", 8900),
                                  b"/v1/chat/completions", headers, body) as resp:
        async for chunk in resp:
            ...
    await pool.aclose()
"""

from __future__ import annotations

from ._errors import (
    FirstByteTimeout,
    PoolClosed,
    PoolTimeout,
    ReadTimeout,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from ._pool import DEFAULT, OriginStats, UpstreamPool
from ._request import Origin
from ._response import UpstreamResponse

__all__ = [
    "DEFAULT",
    "FirstByteTimeout",
    "Origin",
    "OriginStats",
    "PoolClosed",
    "PoolTimeout",
    "ReadTimeout",
    "UpstreamConnectError",
    "UpstreamConnectTimeout",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
]
