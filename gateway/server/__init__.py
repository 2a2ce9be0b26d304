"""The gateway's HTTP/1.1 server: one ASGI app (the Litestar app with the data plane in
front) on one port, built on asyncio protocols and httptools.

uvicorn served the gateway until its per-request machinery (a task, a cycle object, an
event and two socket writes per response, header regexes, timers per request) became the
largest cost of the proxy hot path; see docs/performance.md for the numbers. The
coordinator and the agent still run on uvicorn and hypercorn: they are not hot paths.
"""

from __future__ import annotations

from ._config import ServerConfig
from ._lifespan import LifespanFailed
from ._limits import connection_cap, raise_open_file_limit
from ._server import HttpServer

__all__ = [
    "HttpServer",
    "LifespanFailed",
    "ServerConfig",
    "connection_cap",
    "raise_open_file_limit",
]
