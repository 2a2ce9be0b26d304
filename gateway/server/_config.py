"""Settings of the gateway's HTTP server."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServerConfig"]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """How the gateway's HTTP/1.1 server listens, limits and times out.

    Args:
        host: address to bind (IPv4 or IPv6 literal, or a name).
        port: TCP port; 0 picks a free one (read it back from ``HttpServer.port``).
        backlog: listen backlog.
        keep_alive_s: an idle keep-alive connection is closed after this long (vLLM and
            uvicorn use 5 s; clients that pool connections expect about that).
        request_timeout_s: longest silence from the client while its request head or
            body is incomplete (slow-header and stalled-body clients are cut off).
        max_header_bytes: limit on the request head's header bytes (431 past it).
        max_headers: limit on the number of request headers (431 past it).
        max_url_bytes: limit on the request target (414 past it).
        graceful_shutdown_s: on shutdown, how long in-flight requests may finish
            before their connections are closed.
        access_log: log one line per request (method, path, status, duration; never a
            body or header value) to the ``sage.unified.gateway.access`` logger.
        lifespan: run the app's ASGI lifespan (startup before listening, shutdown after).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    backlog: int = 2048
    keep_alive_s: float = 5.0
    request_timeout_s: float = 30.0
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_url_bytes: int = 8 * 1024
    graceful_shutdown_s: float = 30.0
    access_log: bool = False
    lifespan: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, not {self.port}")
        for name in ("keep_alive_s", "request_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.graceful_shutdown_s < 0:
            raise ValueError("graceful_shutdown_s must be >= 0")
        if min(self.max_header_bytes, self.max_headers, self.max_url_bytes, self.backlog) < 1:
            raise ValueError(
                "max_header_bytes, max_headers, max_url_bytes and backlog must be >= 1"
            )
