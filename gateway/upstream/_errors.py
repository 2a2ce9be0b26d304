"""Errors raised by the upstream HTTP/1.1 client.

Every error carries ``response_started``: ``True`` once any byte of the
upstream response arrived. The gateway retries a request on another backend
only when it is ``False`` (the engine cannot have produced output the client
saw or that would be generated twice).

```
UpstreamError                     base; never raised itself
├── UpstreamConnectError          TCP connect failed (refused, unreachable, DNS)
│   └── UpstreamConnectTimeout    connect did not finish within connect_timeout_s
├── PoolTimeout                   every connection of the origin stayed busy for connect_timeout_s
├── PoolClosed                    request on a pool after aclose()
├── UpstreamTimeout               base of the two response timeouts
│   ├── FirstByteTimeout          no status line + headers within first_byte_timeout_s of sending
│   └── ReadTimeout               gap between body bytes exceeded read_idle_timeout_s
├── UpstreamProtocolError         the response is not valid HTTP/1.1 (or an unexpected upgrade)
└── UpstreamDisconnected          the server closed the connection before the response was complete
```

Programming errors (an unsupported scheme, a header with CR/LF) raise
``ValueError`` instead: retrying them elsewhere cannot help.
"""

from __future__ import annotations

__all__ = [
    "FirstByteTimeout",
    "PoolClosed",
    "PoolTimeout",
    "ReadTimeout",
    "UpstreamConnectError",
    "UpstreamConnectTimeout",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamTimeout",
]


class UpstreamError(Exception):
    """Base of every error of the upstream client.

    Attributes:
        response_started: ``True`` when at least one byte of the upstream
            response had arrived before the failure. Safe-to-retry means
            ``False``.
    """

    response_started: bool

    def __init__(self, message: str, *, response_started: bool = False) -> None:
        super().__init__(message)
        self.response_started = response_started


class UpstreamConnectError(UpstreamError):
    """The TCP connection to the upstream could not be opened (refused, unreachable, DNS)."""


class UpstreamConnectTimeout(UpstreamConnectError):
    """Opening the TCP connection took longer than ``connect_timeout_s``."""


class PoolTimeout(UpstreamError):
    """All ``max_connections_per_origin`` connections stayed busy for ``connect_timeout_s``."""


class PoolClosed(UpstreamError):
    """The pool was closed (``aclose()``) before or while the request waited."""


class UpstreamTimeout(UpstreamError):
    """Base of the response timeouts (the upstream is connected but too slow)."""


class FirstByteTimeout(UpstreamTimeout):
    """The status line and headers did not arrive within ``first_byte_timeout_s`` of sending."""


class ReadTimeout(UpstreamTimeout):
    """No body bytes arrived for ``read_idle_timeout_s`` while the consumer waited for them."""


class UpstreamProtocolError(UpstreamError):
    """The upstream sent something that is not a valid HTTP/1.1 response."""


class UpstreamDisconnected(UpstreamError):
    """The upstream closed the connection before the response was complete."""


class _StaleConnection(UpstreamDisconnected):
    """A reused keep-alive connection died before any response byte: retried once, never surfaced."""
