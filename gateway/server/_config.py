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
        head_timeout_s: a request head must be complete this long after its first byte,
            however steadily it trickles in (408, then close).
        min_body_rate_bytes_s: least average rate of a request body, judged from
            ``body_rate_grace_s`` on (408, then close); 0 turns the rule off. The rule is
            in ``gateway/server/_limits.py``.
        body_rate_grace_s: how long a request body may arrive at any rate.
        max_connections: most client connections open at once; one more is answered 503
            with ``Retry-After`` without its request being read, and closed. Keep it within
            the open-file limit (``connection_cap``).
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
    head_timeout_s: float = 10.0
    min_body_rate_bytes_s: float = 1024.0
    body_rate_grace_s: float = 5.0
    max_connections: int = 4096
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_url_bytes: int = 8 * 1024
    graceful_shutdown_s: float = 30.0
    access_log: bool = False
    lifespan: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, not {self.port}")
        for name in ("keep_alive_s", "request_timeout_s", "head_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("graceful_shutdown_s", "min_body_rate_bytes_s", "body_rate_grace_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        counts = (
            self.max_header_bytes,
            self.max_headers,
            self.max_url_bytes,
            self.backlog,
            self.max_connections,
        )
        if min(counts) < 1:
            raise ValueError(
                "max_header_bytes, max_headers, max_url_bytes, backlog and max_connections "
                "must be >= 1"
            )
