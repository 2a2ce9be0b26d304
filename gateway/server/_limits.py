"""Limits on slow clients and on connections: the rules, and the process's open-file limit.

Slow clients (checked by the server's one sweep every 0.5 s, never a timer per request):

- a request head must be complete within ``head_timeout_s`` of its first byte, however
  steadily it trickles in (408, then close);
- a request body must arrive at ``min_body_rate_bytes_s`` or faster on average: the
  average runs from the end of the head (or from when the server last resumed reading it,
  or from its ``100 Continue``) and is judged once ``body_rate_grace_s`` have passed, so a
  client that pauses briefly is not cut off, and time in which the server did not read
  (back-pressure, a pipelined request waiting its turn) never counts (408, then close).

Connections: at most ``max_connections`` are open at once; one more is answered 503 with
``Retry-After`` without its request being read, and closed. Each open client connection
may need an upstream connection too, so the cap defaults to what the open-file limit
allows for both (see :func:`connection_cap`).
"""

from __future__ import annotations

import logging

__all__ = ["FD_RESERVE", "body_too_slow", "connection_cap", "raise_open_file_limit"]

log = logging.getLogger("sage.unified.gateway")

FD_RESERVE = 256
"""File descriptors kept out of the connection cap: listening sockets, the embedded
coordinator's and agent's files and sockets, logs, engines' pipes."""


def body_too_slow(received: int, elapsed_s: float, min_rate: float, grace_s: float) -> bool:
    """Whether a request body arrives too slowly to keep its connection.

    Args:
        received: Body bytes received since the rate clock started.
        elapsed_s: Seconds since the rate clock started.
        min_rate: Least average rate in bytes per second; 0 turns the rule off.
        grace_s: Seconds before the rule applies.
    """
    return min_rate > 0 and elapsed_s >= grace_s and received < min_rate * elapsed_s


def connection_cap(requested: int, open_files: int | None) -> int:
    """The connection cap to use: ``requested``, lowered to what ``open_files`` allows.

    Every client connection may need an upstream connection, so the open-file limit,
    less :data:`FD_RESERVE`, is shared by two descriptors per client connection.

    Args:
        requested: The configured cap.
        open_files: The process's soft open-file limit; ``None`` when it has none.
    """
    if open_files is None:
        return requested
    return max(1, min(requested, (open_files - FD_RESERVE) // 2))


def raise_open_file_limit() -> int | None:
    """Raise this process's soft open-file limit (``RLIMIT_NOFILE``) to its hard limit
    where the platform allows it, and log the result.

    Many systems start processes with a soft limit of 1,024 descriptors although the hard
    limit is far higher; a gateway with many clients needs the higher one.

    Returns:
        The soft limit in force afterwards; ``None`` where there is no such limit (no
        ``resource`` module, or an unlimited soft limit).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux or macOS
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    if hard == resource.RLIM_INFINITY or hard > soft:
        # An unlimited hard limit cannot be the soft one (Linux caps it at nr_open,
        # macOS at OPEN_MAX): ask for a large finite value instead.
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as exc:
            log.info("open-file limit stays at %d (raising it to %d failed: %s)", soft, wanted, exc)
            return int(soft)
        soft = wanted
    log.info("open-file limit: %d descriptors", soft)
    return int(soft)
